"""Prebuilt statements run straight on the DB-API connection.

SQLAlchemy Core costs about five times what SQLite itself does for the short
statements the engine runs (building the execution context, the result
object, the events). The store therefore compiles each prebuilt statement
once, with SQLAlchemy, and runs the compiled SQL on the driver's connection,
inside the transaction SQLAlchemy began. What SQLAlchemy would do around the
call is kept: its own bind and result processors convert the values (aware
datetimes, JSON), and a driver error is wrapped in the same ``sqlalchemy.exc``
class, so callers and ``Database.transaction`` translate it exactly as before.

On PostgreSQL the cost that matters is the network round trip, and most of a
step's statements are writes whose results nobody reads. Those are held back
(``defer``) and sent together in one pipeline when the step next needs an
answer: a read, a write whose failure it handles, or its commit. A step is then
BEGIN, its reads, and one trip for all its writes, instead of a trip per
statement; a deferred write that fails raises where the batch is sent, inside
the same transaction, so nothing of the step is kept. Every trip goes through
``pg_pipeline`` (libpq's pipeline with the engine's prepared statements), not
psycopg's cursor, which cost the client half as much CPU per statement as the
statement cost the server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

Row = dict[str, Any]
Processor = Callable[[Any], Any]
PREPARED_MAX = 1_000
# Type -> (bind, result) conversions on SQLite that give exactly what the type's
# SQLAlchemy processors give, without their layers (the schema registers its own).
FAST_PROCESSORS: dict[type[Any], tuple[Processor, Processor]] = {}


class Prepared:
    """One statement compiled for one dialect and one set of parameter names."""

    __slots__ = ("_bind_processors", "_get", "_keys", "_literals", "_result_processors", "sql")

    def __init__(self, statement: sa.Executable, dialect: Dialect, keys: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
        assert compiled.positional, "the direct path needs a positional paramstyle"
        assert not compiled.insert_prefetch and not compiled.update_prefetch, (
            "Python-side column defaults would be skipped"
        )
        self.sql: str = compiled.string
        names: list[str] = list(compiled.positiontup)
        processors = compiled._bind_processors
        defaults = compiled.construct_params(_check=False)
        # Binds with a value in the statement itself (``status == "in_flight"``).
        literal_names = {name for name in names if name in defaults and defaults[name] is not None}
        self._literals: dict[str, Any] = {name: defaults[name] for name in literal_names}
        # itemgetter of one name returns the value, of several a tuple: always a tuple.
        self._get: Callable[[Mapping[str, Any]], Any] = (
            itemgetter(*names) if len(names) > 1 else _as_tuple(itemgetter(*names)) if names
            else _none
        )  # fmt: skip
        fast = FAST_PROCESSORS if dialect.name == "sqlite" else {}
        for name in names:
            bind_type = type(compiled.binds[name].type)
            if name in processors and bind_type in fast:
                processors = {**processors, name: fast[bind_type][0]}
        self._bind_processors: tuple[tuple[int, Processor], ...] = tuple(
            (index, processors[name]) for index, name in enumerate(names) if name in processors
        )
        columns = getattr(compiled, "_result_columns", None) or []
        self._keys: tuple[str, ...] = tuple(column.keyname for column in columns)
        self._result_processors: tuple[tuple[str, Processor], ...] = tuple(
            (column.keyname, processor)
            for column in columns
            if (processor := _result_processor(column.type, dialect, fast)) is not None
        )

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        if self._literals:
            params = {**self._literals, **params}
        values = list(self._get(params))
        for index, processor in self._bind_processors:
            values[index] = processor(values[index])
        return values

    def row(self, raw: Sequence[Any]) -> Row:
        row = dict(zip(self._keys, raw, strict=True))
        for key, processor in self._result_processors:
            row[key] = processor(row[key])
        return row


def _result_processor(
    type_: Any, dialect: Dialect, fast: Mapping[type[Any], tuple[Processor, Processor]]
) -> Processor | None:
    if type(type_) in fast:
        return fast[type(type_)][1]
    processor: Processor | None = type_._cached_result_processor(dialect, None)
    return processor


def _none(_params: Mapping[str, Any]) -> tuple[Any, ...]:
    return ()


def _as_tuple(get: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], Any]:
    return lambda params: (get(params),)


_prepared: dict[tuple[int, str, tuple[str, ...]], tuple[sa.Executable, Prepared]] = {}


def prepared(statement: sa.Executable, dialect: Dialect, keys: Sequence[str] = ()) -> Prepared:
    """The compiled form, cached per statement object and parameter names."""
    cache_key = (id(statement), dialect.name, tuple(keys))
    hit = _prepared.get(cache_key)
    if hit is not None and hit[0] is statement:
        return hit[1]
    if len(_prepared) >= PREPARED_MAX:
        _prepared.clear()
    made = Prepared(statement, dialect, keys)
    # The statement is kept alive with its entry, so its id cannot be reused.
    _prepared[cache_key] = (statement, made)
    return made


_positional_dialects: dict[type[Dialect], Dialect] = {}


def _positional(dialect: Dialect) -> Dialect:
    """The dialect itself if its paramstyle is positional, else a ``format`` twin."""
    if dialect.positional:
        return dialect
    twin = _positional_dialects.get(type(dialect))
    if twin is None:
        twin = _positional_dialects[type(dialect)] = type(dialect)(paramstyle="format")  # type: ignore[call-arg]
    return twin


class RaceLost(Exception):
    """A write lost a unique-index race to a concurrent transaction: run the step again.

    Raised without a savepoint: the step's whole transaction is rolled back anyway.
    """


class _Deferred:
    """A write held back until the step next needs an answer from the database."""

    __slots__ = ("args", "many", "races", "rowcount_expected", "sql")

    def __init__(
        self,
        sql: str,
        args: Any,
        many: bool,
        rowcount_expected: int | None,
        races: frozenset[str] = frozenset(),
    ) -> None:
        self.sql, self.args, self.many = sql, args, many
        self.rowcount_expected = rowcount_expected
        # Unique constraints whose violation by this write is a lost race, not a defect.
        self.races = races


_UNIQUE_VIOLATION = "23505"


class Direct:
    """Runs prepared statements on a SQLAlchemy connection's DB-API connection.

    With ``explicit_begin`` (PostgreSQL only, the connection switched to the driver's
    autocommit by ``Database.transaction``) the BEGIN is sent by this class, in the
    same trip as the step's first statement, and the COMMIT in the same trip as the
    last writes: the driver's own BEGIN would cost a round trip of its own.
    """

    __slots__ = (
        "_begun", "_connection", "_dbapi_error", "_dialect", "_explicit", "_pending", "_pipeline",
        "_raw", "_sa_dialect", "defers",
    )  # fmt: skip

    def __init__(self, connection: Connection, *, explicit_begin: bool = False) -> None:
        self._connection = connection
        self._sa_dialect = connection.dialect
        self._dialect = _positional(connection.dialect)
        raw: Any = connection.connection.driver_connection
        self._raw = raw
        self._dbapi_error: type[Exception] = connection.dialect.loaded_dbapi.Error
        self._pending: list[_Deferred] = []
        # Whether writes wait for the next round trip (PostgreSQL's pipeline).
        self.defers: bool = connection.dialect.name == "postgresql"
        assert not explicit_begin or (self.defers and raw.autocommit)
        self._explicit = explicit_begin
        self._begun = not explicit_begin
        self._pipeline: Any = None
        if self.defers:
            # psycopg comes with the postgres extra: imported only when it is used.
            from engine.adapters import pg_pipeline

            self._pipeline = pg_pipeline

    def _wrap(self, sql: str, args: Any, exc: Exception) -> sa.exc.StatementError:
        return sa.exc.DBAPIError.instance(
            sql, args, exc, self._dbapi_error, dialect=self._sa_dialect
        )

    def _run(self, sql: str, args: Any, many: bool = False) -> Any:
        if self.defers:
            return self._send([_Deferred(sql, args, many, None)])[0]
        try:
            if many:
                return self._raw.executemany(sql, args)
            return self._raw.execute(sql, args)
        except self._dbapi_error as exc:
            raise self._wrap(sql, args, exc) from exc

    def one(self, statement: sa.Executable, params: Mapping[str, Any]) -> Row | None:
        p = prepared(statement, self._dialect)
        raw = self._run(p.sql, p.args(params)).fetchone()
        return None if raw is None else p.row(raw)

    def all(self, statement: sa.Executable, params: Mapping[str, Any]) -> list[Row]:
        p = prepared(statement, self._dialect)
        return [p.row(raw) for raw in self._run(p.sql, p.args(params)).fetchall()]

    def all_together(
        self, reads: Sequence[tuple[sa.Executable, Mapping[str, Any]]]
    ) -> list[list[Row]]:
        """Several reads, in one round trip where writes are deferred (each sees the ones
        before it, the server running them in order)."""
        if not self.defers:
            return [self.all(statement, params) for statement, params in reads]
        made = [(prepared(statement, self._dialect), params) for statement, params in reads]
        cursors = self._send([_Deferred(p.sql, p.args(params), False, None) for p, params in made])
        return [
            [p.row(raw) for raw in cursor.fetchall()]
            for (p, _), cursor in zip(made, cursors, strict=True)
        ]

    def write(self, statement: sa.Executable, params: Mapping[str, Any]) -> int:
        """An INSERT or UPDATE whose columns are the keys of ``params``; returns rowcount."""
        p = prepared(statement, self._dialect, tuple(params))
        return int(self._run(p.sql, p.args(params)).rowcount)

    def write_many(self, statement: sa.Executable, rows: Sequence[Mapping[str, Any]]) -> None:
        p = prepared(statement, self._dialect, tuple(rows[0]))
        self._run(p.sql, [p.args(row) for row in rows], many=True)

    def defer(
        self,
        statement: sa.Executable,
        params: Mapping[str, Any],
        rowcount_expected: int | None = None,
        races: frozenset[str] = frozenset(),
    ) -> None:
        """A write sent with the next round trip; its rowcount is checked then, and a
        violation of one of ``races`` raises ``RaceLost`` then."""
        p = prepared(statement, self._dialect, tuple(params))
        self._pending.append(_Deferred(p.sql, p.args(params), False, rowcount_expected, races))

    def defer_many(self, statement: sa.Executable, rows: Sequence[Mapping[str, Any]]) -> None:
        p = prepared(statement, self._dialect, tuple(rows[0]))
        self._pending.append(_Deferred(p.sql, [p.args(row) for row in rows], True, None))

    def flush(self) -> None:
        """Bring the database up to date (BEGIN sent, deferred writes run) in one trip:
        before a statement that does not go through this class."""
        if self._pending or not self._begun:
            self._send([])

    def commit(self) -> None:
        """Send what is deferred and, when this class began the transaction, COMMIT, in
        one trip; SQLAlchemy's own commit after it then finds nothing left to do.

        On SQLite a unit begun on the driver (``Database.transaction``) is committed
        on the driver here, unless a statement run through SQLAlchemy made it
        SQLAlchemy's to commit.
        """
        if not self.defers:
            if self._raw.in_transaction and self._connection.get_transaction() is None:
                self._run("COMMIT", ())
            return
        if not self._explicit:
            self.flush()  # the driver's COMMIT follows
        elif self._begun or self._pending:
            self._send([], commit=True)  # BEGIN too, if the step wrote without reading
        # else the step sent nothing: there is no transaction to commit

    def _send(self, last: list[_Deferred], *, commit: bool = False) -> list[Any]:
        """BEGIN if not yet sent, the deferred writes, ``last`` (whose results are
        returned) and COMMIT if asked, in one pipeline: one round trip."""
        batch, self._pending = self._pending, []
        if not self._begun:
            batch.insert(0, _Deferred("BEGIN", None, False, None))
            self._begun = True
        elif not self._explicit and self._raw.pgconn.transaction_status == self._pipeline.IDLE:
            # The driver's own transaction, which it would begin with its first statement.
            batch.insert(0, _Deferred("BEGIN", None, False, None))
        batch.extend(last)
        if commit:
            batch.append(_Deferred("COMMIT", None, False, None))
        pipeline = self._pipeline
        try:
            session = pipeline.session(self._connection.connection.info, self._raw)
            results: list[Any] = session.run(
                [pipeline.Statement(write.sql, write.args, write.many) for write in batch]
            )
        except pipeline.Failed as failed:
            if _lost_race(failed.error, batch):
                raise RaceLost from failed.error
            current = batch[failed.index]
            raise self._wrap(current.sql, current.args, failed.error) from failed.error
        for result, write in zip(results, batch, strict=True):
            expected = write.rowcount_expected
            assert expected is None or result.rowcount == expected, (
                f"{write.sql.split(' WHERE')[0]}: {result.rowcount} rows, expected {expected}"
            )
        first = len(batch) - len(last) - commit
        return results[first : first + len(last)]


def _lost_race(exc: Exception, batch: Sequence[_Deferred]) -> bool:
    """Whether ``exc`` is a unique violation that one of the batch's writes expects."""
    if getattr(exc, "sqlstate", None) != _UNIQUE_VIOLATION:
        return False
    constraint = getattr(getattr(exc, "diag", None), "constraint_name", None)
    return any(constraint in write.races for write in batch)
