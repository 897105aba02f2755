"""Alembic environment: migrations run on a connection the caller provides."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from engine.adapters.schema import metadata

config = context.config


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_on(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "give a connection or sqlalchemy.url"
    engine = create_engine(url)
    with engine.connect() as conn:
        run_on(conn)
    engine.dispose()
