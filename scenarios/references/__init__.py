"""The oracles' own references: what the system under test must show, held apart from
the engine (DESIGN.md, "The system under test": the oracles import nothing from the
engine's service or state machine)."""
