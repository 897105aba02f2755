"""Entrypoints: where the wall clock and real randomness are allowed in."""
