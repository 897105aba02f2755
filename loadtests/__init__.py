"""Load tests and benchmarks: each prints a table next to a same-run baseline."""
