"""The deterministic simulation harness: scenario scripts, simpy world, oracles, reports."""
