"""The pure domain: no SQLAlchemy, httpx, FastAPI or simpy in here."""
