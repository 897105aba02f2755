"""paychaos engine: a payment engine whose core never performs provider I/O.

Layers (ports and adapters):

- ``engine.domain``: pure money, state machine, posting rules, validation, errors.
- ``engine.service``: one unit of work per step (``begin_*`` / ``complete_*``).
- ``engine.adapters``: the SQLAlchemy store and its Alembic migrations.
- ``engine.entrypoints``: the command line (and later the HTTP API and workers).
"""
