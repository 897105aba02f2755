"""The database: engines for SQLite and PostgreSQL, migrations, units of work.

SQLite is the embedded default: ``sqlite://`` (in memory, one shared
connection) for simulations and tests, a file for a server. PostgreSQL
(psycopg 3) is the production database: ``postgresql+psycopg://...``.

A unit of work is one transaction, and there is one kind of unit per dialect:
``Database.transaction`` yields the unit's ``engine.adapters.direct.Direct``, the
one path of every statement of the unit (the store's, the read API's,
reconciliation's, the API keys') and of its commit (``Direct.commit``). On SQLite
the unit is begun on the driver (BEGIN IMMEDIATE) and committed there; on
PostgreSQL the driver is in autocommit for the unit, and ``Direct`` sends BEGIN
with the unit's first trip and COMMIT with its last writes. The unit rolls back
on exit unless it was committed. Lower-layer errors are translated to the
engine's error tree here and nowhere else.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.pool import StaticPool

from engine.adapters.direct import CommitFailed as CommitFailed
from engine.adapters.direct import Direct

# Defined in the error tree, re-exported here where they are raised.
from engine.domain.errors import LedgerGuardRefused as LedgerGuardRefused
from engine.domain.errors import PaychaosError, StoreUnavailable
from engine.domain.errors import SchemaOutOfDate as SchemaOutOfDate

DEFAULT_URL = "sqlite:///paychaos.db"
IN_MEMORY_URL = "sqlite://"
IN_MEMORY_URLS = frozenset({"sqlite://", "sqlite:///:memory:"})
SQLITE_BUSY_TIMEOUT_S = 30.0


def is_in_memory(url: str) -> bool:
    """SQLite in this process's memory: ``sqlite://`` (``:memory:``), or a database on
    SQLite's ``memdb`` VFS (``sqlite:///file:/NAME?vfs=memdb&uri=true``), which a long
    simulation uses (its commits do not slow down as it grows)."""
    return url in IN_MEMORY_URLS or (url.startswith("sqlite:///file:") and "vfs=memdb" in url)


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` as psycopg 3 URLs."""
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE itself: a writer
    # takes the write lock up front instead of failing to upgrade later.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    # On the raw connection, before any BEGIN: SQLite refuses to change the
    # journal mode inside a transaction, and the "begin" hook opens one as soon
    # as a SQLAlchemy connection runs a statement (reopening a file failed so).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # On the driver's connection: through SQLAlchemy this one statement cost as
    # much as the rest of a short unit of work. Errors are wrapped as SQLAlchemy
    # would wrap them ("database is locked" is an OperationalError). A unit of work
    # begins here too (``Database._sqlite_unit``); SQLAlchemy's own transactions
    # (migrations, the audit) come here through the "begin" event. A transaction
    # begun on the driver already is joined, not begun again.
    dbapi_error = connection.dialect.loaded_dbapi.Error
    driver: Any = connection.connection.driver_connection
    if driver.in_transaction:
        return
    try:
        driver.execute("BEGIN IMMEDIATE")
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(
            "BEGIN IMMEDIATE", (), exc, dbapi_error, dialect=connection.dialect
        ) from exc


def create_sa_engine(url: str) -> sa.Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        in_memory = is_in_memory(url)
        # A unit of work always ends its own transaction, so the pool's rollback on
        # return is a second one for nothing; the most recently used file connection
        # (its page cache warm) is handed out first.
        pooling: dict[str, Any] = (
            {"poolclass": StaticPool} if in_memory
            else {"pool_reset_on_return": None, "pool_use_lifo": True}
        )  # fmt: skip
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False},
            json_serializer=json_text,
            json_deserializer=orjson.loads,
            **pooling,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        if not in_memory:
            event.listen(engine, "connect", _sqlite_wal)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # No ping on checkout (a round trip before every unit of work): a connection the
    # server dropped fails its unit with ``StoreUnavailable``, which callers retry, and
    # SQLAlchemy then discards the pool's other connections of that age.
    # The engine's own statements are prepared by ``pg_pipeline``, under names of its
    # own. psycopg's automatic preparing stays off: whenever its cache holds a statement
    # and it sees a ROLLBACK, ALTER or DROP go by, it sends DEALLOCATE ALL, which would
    # take the engine's prepared statements with its own.
    return sa.create_engine(
        url, pool_size=20, max_overflow=40, json_serializer=json_text,
        json_deserializer=orjson.loads, connect_args={"prepare_threshold": None},
    )  # fmt: skip


def json_text(value: Any) -> str:
    """A JSON column's text. orjson, not json: a step writes two or three bodies (a
    key's saved response, an outbox payload), and json's encoder was a tenth of it."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("engine") / "migrations"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), revision)


def downgrade(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as connection:
        command.downgrade(_alembic_config(connection), revision)


def schema_revision(engine: sa.Engine) -> tuple[str | None, str | None]:
    """(the database's revision, the code's head revision)."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        head = ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
    return current, head


def check_schema(engine: sa.Engine) -> None:
    current, head = schema_revision(engine)
    if current != head:
        raise SchemaOutOfDate(
            message=f"database schema is at {current or 'nothing'}, this code needs {head}: "
            "run `paychaos db upgrade`"
        )


class UnitFaults:
    """The fault port of units of work, on the path production takes: no faults here.

    ``Database.transaction`` asks ``unit_begins`` before a unit's first statement (raise
    ``StoreUnavailable`` and the database is away for it), and the one commit path
    (``Direct.commit``, which ``Store.commit`` calls) asks ``commit_fails`` just before
    it commits. A simulation installs its own on ``Database.faults``; production
    installs none.
    """

    def unit_begins(self) -> None:
        """Before a unit of work: raise to refuse it."""

    def commit_fails(self) -> bool:
        """Before a unit commits: True to fail the commit (the step is lost whole)."""
        return False


class Database:
    """The engine's handle on one database: where units of work come from."""

    def __init__(self, url: str = IN_MEMORY_URL, *, migrate: bool = False):
        self.url = normalize_url(url)
        self.engine = create_sa_engine(self.url)
        self.dialect = self.engine.dialect.name
        # In-memory SQLite has one DB-API connection for everyone (StaticPool):
        # each thread keeps its SQLAlchemy handle on it between units of work
        # instead of making one per unit, which cost as much as a short unit.
        self._kept = threading.local() if is_in_memory(self.url) else None
        # Faults injected into units of work (a simulation's); production installs none.
        self.faults: UnitFaults | None = None
        if migrate:
            upgrade(self.engine)

    def _kept_connection(self) -> Connection | None:
        """This thread's kept connection, or None (not in memory, or a nested unit)."""
        if self._kept is None:
            return None
        connection: Connection | None = getattr(self._kept, "connection", None)
        if connection is None or connection.closed or connection.invalidated:
            connection = self._kept.connection = self.engine.connect()
        busy = connection.get_transaction() is not None or _driver(connection).in_transaction
        return None if busy else connection

    @staticmethod
    def _sqlite_unit(connection: Connection, faults: UnitFaults | None) -> Iterator[Direct]:
        """A SQLite unit, begun on the driver (SQLAlchemy's transaction bookkeeping and
        events cost as much as two of a step's statements) and committed there by
        ``Direct.commit``; anything left open is rolled back here."""
        _sqlite_begin(connection)
        try:
            yield Direct(connection, faults)
        finally:
            if (driver := _driver(connection)).in_transaction:
                driver.rollback()

    @staticmethod
    def _postgres_unit(connection: Connection, faults: UnitFaults | None) -> Iterator[Direct]:
        """A PostgreSQL unit: the driver in autocommit, so that ``Direct`` sends BEGIN
        and COMMIT with the unit's statements. SQLAlchemy's transaction is only there
        to roll back on exit (its error handling invalidates a connection the server
        dropped); the driver's ROLLBACK costs nothing after a COMMIT."""
        connection.begin()
        driver = _driver(connection)
        driver.autocommit = True
        try:
            yield Direct(connection, faults)
        finally:
            try:
                # get_transaction, not in_transaction: a commit that failed leaves an
                # inactive transaction that still has to be rolled back.
                if connection.get_transaction() is not None:
                    connection.rollback()
            finally:
                _leave_autocommit(connection, driver)

    @contextmanager
    def transaction(self) -> Iterator[Direct]:
        """A unit of work: every statement through the ``Direct`` it yields, committed
        only by its ``commit()``, rolled back on exit otherwise. One kind per dialect
        (see the module's doc)."""
        faults = self.faults
        if faults is not None:
            faults.unit_begins()
        unit = self._sqlite_unit if self.dialect == "sqlite" else self._postgres_unit
        try:
            kept = self._kept_connection()
            if kept is not None:
                yield from unit(kept, faults)
            else:
                with self.engine.connect() as connection:
                    yield from unit(connection, faults)
        except sa.exc.OperationalError as exc:
            raise StoreUnavailable(message=f"database unavailable: {exc.orig}") from exc
        except sa.exc.DBAPIError as exc:
            translated = translate_guard_error(exc)
            if translated is None:
                raise
            raise translated from exc

    def dispose(self) -> None:
        connection = getattr(self._kept, "connection", None)
        if connection is not None:
            connection.close()
            self._kept.connection = None  # type: ignore[union-attr]
        self.engine.dispose()


def postgres_url_problem(db_url: str) -> str | None:
    """Why ``db_url`` is no PostgreSQL server one can connect to, or None: for an
    option to refuse before anything runs."""
    url = normalize_url(db_url)
    if not url.startswith("postgresql"):
        return f"{db_url!r} is not a PostgreSQL URL (postgresql://user@host:port/db)"
    try:
        server = sa.create_engine(url, poolclass=sa.NullPool)
        with server.connect():
            pass
        server.dispose()
    except (sa.exc.SQLAlchemyError, ValueError) as exc:
        first_line = str(exc).splitlines()[0]
        return f"cannot reach the server at {db_url!r}: {type(exc).__name__}: {first_line}"
    return None


@contextmanager
def scratch_database(url: str, name: str) -> Iterator[Database]:
    """A migrated database ``name`` of its own on the PostgreSQL server at ``url``,
    created for the caller and dropped after it (an older one of that name first)."""
    server = sa.make_url(normalize_url(url))
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        database = Database(
            server.set(database=name).render_as_string(hide_password=False), migrate=True
        )
        try:
            yield database
        finally:
            database.dispose()
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def _driver(connection: Connection) -> Any:
    return connection.connection.driver_connection


def _leave_autocommit(connection: Connection, driver: Any) -> None:
    """Hand the connection back to the pool as it came: in a transaction-per-unit mode.
    One still in a transaction (its ROLLBACK failed: the server is gone) is discarded."""
    try:
        driver.autocommit = False
    except Exception:
        connection.invalidate()


def translate_guard_error(exc: sa.exc.DBAPIError) -> PaychaosError | None:
    """A refusal by one of the ledger's triggers, or None for any other error."""
    text = str(exc.orig)
    for marker in ("ledger_unbalanced", "ledger_journal_closed", "append_only"):
        if marker in text:
            return LedgerGuardRefused(marker, text)
    return None
