"""Adapters: the SQLAlchemy store and its migrations."""
