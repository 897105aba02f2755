"""Every statement of a unit of work, run straight on the DB-API connection.

``Database.transaction`` yields a ``Direct``: the one way a unit of work reaches
its database, on SQLite and on PostgreSQL. It runs two kinds of statement, on the
same path:

- the engine's prebuilt statements (the store's module constants: ``one``,
  ``all``, ``all_together``, ``write``, ``defer``), compiled once per statement
  object (``prepared``);
- ad-hoc ones, built per call (listings, worker polls, reconciliation's reads,
  ``IN`` lists of any length: ``execute``), compiled once per shape: keyed by
  SQLAlchemy's cache key of the statement, which leaves its values out
  (``adhoc``). On PostgreSQL they are sent unprepared, so they never take the
  session's prepared-statement names.

SQLAlchemy Core costs about five times what SQLite itself does for the short
statements the engine runs (building the execution context, the result
object, the events). Each statement is therefore compiled with SQLAlchemy and
its SQL run on the driver's connection. What SQLAlchemy would do around the call
is kept: its own bind and result processors convert the values (aware
datetimes, JSON), and a driver error is wrapped in the same ``sqlalchemy.exc``
class, so callers and ``Database.transaction`` translate it exactly as they
would SQLAlchemy's.

The transaction is run here too, one way per dialect. On SQLite the unit is begun
on the driver (BEGIN IMMEDIATE, by ``Database.transaction``) and ``commit``
commits it there. On PostgreSQL the driver is in autocommit for the unit; this
class sends BEGIN in the same trip as the unit's first statement and COMMIT in
the same trip as its last writes (the driver's own BEGIN would cost a round trip
of its own). ``commit`` is the one commit path: it asks the database's fault port
first (``CommitFaults``).

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

from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

Row = dict[str, Any]
Processor = Callable[[Any], Any]
Params = Mapping[str, Any] | Sequence[Mapping[str, Any]]  # one execution's values, or a list
T = TypeVar("T")
PREPARED_MAX = 1_000  # prebuilt statements compiled (the engine has about a hundred)
ADHOC_MAX = 500  # shapes of ad-hoc statement compiled
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


class AdHoc:
    """One shape of ad-hoc statement compiled for one dialect: its values are bound per
    call (those written in the statement come from its cache key), ``IN`` lists
    expanded per call, as SQLAlchemy's own execution does."""

    __slots__ = ("_bind_processors", "_compiled", "_expands", "_names", "_processors",
                 "_result_processors", "keys", "sql")  # fmt: skip

    def __init__(
        self,
        statement: sa.Executable,
        dialect: Dialect,
        keys: Sequence[str],
        many: bool,
        cache_key: Any,
    ) -> None:
        compiled: Any = statement.compile(  # type: ignore[attr-defined]
            dialect=dialect, cache_key=cache_key, column_keys=list(keys), for_executemany=many
        )
        assert compiled.positional, "the direct path needs a positional paramstyle"
        assert not compiled.insert_prefetch and not compiled.update_prefetch, (
            "Python-side column defaults would be skipped"
        )
        self._compiled = compiled
        self.sql: str = compiled.string
        self._expands = bool(compiled.post_compile_params or compiled.literal_execute_params)
        assert not (many and self._expands), "an IN list is expanded per execution"
        self._names: tuple[str, ...] = tuple(compiled.positiontup)
        fast = FAST_PROCESSORS if dialect.name == "sqlite" else {}
        self._processors: dict[str, Processor] = {
            name: fast[bind_type][0] if bind_type in fast else processor
            for name, processor in compiled._bind_processors.items()
            for bind_type in (type(compiled.binds[name].type),)
        }
        self._bind_processors: tuple[tuple[int, Processor], ...] = tuple(
            (index, self._processors[name])
            for index, name in enumerate(self._names)
            if name in self._processors
        )
        columns = getattr(compiled, "_result_columns", None) or []
        self.keys: tuple[str, ...] = tuple(column.keyname for column in columns)
        self._result_processors: tuple[tuple[int, Processor], ...] = tuple(
            (index, processor)
            for index, column in enumerate(columns)
            if (processor := _result_processor(column.type, dialect, fast)) is not None
        )

    def args(self, params: Mapping[str, Any], extracted: Any) -> tuple[str, list[Any]]:
        """The SQL to run (an ``IN`` list expanded) and its positional values."""
        compiled = self._compiled
        values = compiled.construct_params(params, extracted_parameters=extracted,
                                           escape_names=False)  # fmt: skip
        if self._expands:
            state = compiled._process_parameters_for_postcompile(values)
            expanded, processors = state.parameters, {**self._processors, **state.processors}
            return state.statement, [
                processors[name](expanded[name]) if name in processors else expanded[name]
                for name in state.positiontup
            ]
        args = [values[name] for name in self._names]
        for index, processor in self._bind_processors:
            args[index] = processor(args[index])
        return self.sql, args

    def rows(self, raw: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        if not self._result_processors:
            return raw
        rows = []
        for row in raw:
            values = list(row)
            for index, processor in self._result_processors:
                values[index] = processor(values[index])
            rows.append(tuple(values))
        return rows


_adhoc: dict[tuple[Any, ...], AdHoc] = {}


def adhoc(
    statement: sa.Executable, dialect: Dialect, keys: tuple[str, ...], many: bool
) -> tuple[AdHoc, Any]:
    """The compiled shape of an ad-hoc statement and this statement's own values (its
    cache key's), cached per shape: a statement built per call, or an ``IN`` list of
    any length, is compiled once (at most ``ADHOC_MAX`` shapes are kept)."""
    cache_key = statement._generate_cache_key()  # type: ignore[attr-defined]
    if cache_key is None:  # a statement SQLAlchemy cannot cache: compiled for this call
        return AdHoc(statement, dialect, keys, many, None), None
    shape = (cache_key.key, dialect.name, keys, many)
    made = _adhoc.get(shape)
    if made is None:
        if len(_adhoc) >= ADHOC_MAX:
            _adhoc.clear()
        made = _adhoc[shape] = AdHoc(statement, dialect, keys, many, cache_key)
    return made, cache_key.bindparams


class Rows(Generic[T]):
    """Rows read whole: iterate them, or take them all, the first or the only one."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[T]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[T]:
        return iter(self._rows)

    def all(self) -> list[T]:
        return self._rows

    def first(self) -> T | None:
        return self._rows[0] if self._rows else None

    def one(self) -> T:
        assert len(self._rows) == 1, f"{len(self._rows)} rows, expected one"
        return self._rows[0]


class Result(Rows[tuple[Any, ...]]):
    """An ad-hoc statement's answer: its rows as tuples, as dictionaries by column key
    (``mappings``) or their first values (``scalars``), and its row count."""

    __slots__ = ("_keys", "rowcount")

    def __init__(self, keys: tuple[str, ...], rows: list[tuple[Any, ...]], rowcount: int) -> None:
        super().__init__(rows)
        self._keys = keys
        self.rowcount = rowcount

    def mappings(self) -> Rows[Row]:
        keys = self._keys
        return Rows([dict(zip(keys, row, strict=True)) for row in self._rows])

    def scalars(self) -> Rows[Any]:
        return Rows([row[0] for row in self._rows])

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None


class CommitFaults(Protocol):
    """The fault port ``Direct.commit`` asks (``engine.adapters.database.UnitFaults``)."""

    def commit_fails(self) -> bool: ...


class CommitFailed(sa.exc.OperationalError):
    """A commit the database failed (a simulated fault): ``StoreUnavailable`` to callers."""


class RaceLost(Exception):
    """A write lost a unique-index race to a concurrent transaction: run the step again.

    Raised without a savepoint: the step's whole transaction is rolled back anyway.
    """


class _Deferred:
    """A write held back until the step next needs an answer from the database."""

    __slots__ = ("args", "many", "prepare", "races", "rowcount_expected", "sql")

    def __init__(
        self,
        sql: str,
        args: Any,
        many: bool,
        rowcount_expected: int | None,
        races: frozenset[str] = frozenset(),
        prepare: bool = True,
    ) -> None:
        self.sql, self.args, self.many = sql, args, many
        self.rowcount_expected = rowcount_expected
        # Unique constraints whose violation by this write is a lost race, not a defect.
        self.races = races
        self.prepare = prepare  # False: an ad-hoc statement, sent unprepared


_UNIQUE_VIOLATION = "23505"


class Direct:
    """Every statement of one unit of work, on its connection's DB-API connection, and
    the unit's commit (see the module's doc): ``Database.transaction`` yields one.

    ``dialect`` is the connection's SQLAlchemy dialect; ``defers`` says whether writes
    wait for the next round trip (PostgreSQL's pipeline).
    """

    __slots__ = (
        "_begun", "_connection", "_dbapi_error", "_dialect", "_faults", "_pending",
        "_pipeline", "_raw", "defers", "dialect",
    )  # fmt: skip

    def __init__(self, connection: Connection, faults: CommitFaults | None = None) -> None:
        self._connection = connection
        self.dialect: Dialect = connection.dialect
        self._dialect = _positional(connection.dialect)
        raw: Any = connection.connection.driver_connection
        self._raw = raw
        self._dbapi_error: type[Exception] = connection.dialect.loaded_dbapi.Error
        self._faults = faults
        self._pending: list[_Deferred] = []
        self.defers: bool = connection.dialect.name == "postgresql"
        # PostgreSQL: the driver is in autocommit for the unit and BEGIN is this class's;
        # SQLite: the unit was begun on the driver.
        assert not self.defers or raw.autocommit, "BEGIN and COMMIT are sent by Direct"
        self._begun = not self.defers
        self._pipeline: Any = None
        if self.defers:
            # psycopg comes with the postgres extra: imported only when it is used.
            from engine.adapters import pg_pipeline

            self._pipeline = pg_pipeline

    def _wrap(self, sql: str, args: Any, exc: Exception) -> sa.exc.StatementError:
        return sa.exc.DBAPIError.instance(sql, args, exc, self._dbapi_error, dialect=self.dialect)

    def _run(self, sql: str, args: Any, many: bool = False, prepare: bool = True) -> Any:
        if self.defers:
            return self._send([_Deferred(sql, args, many, None, prepare=prepare)])[0]
        try:
            if many:
                return self._raw.executemany(sql, args)
            return self._raw.execute(sql, args)
        except self._dbapi_error as exc:
            raise self._wrap(sql, args, exc) from exc

    # -- ad-hoc statements -------------------------------------------------------------
    def execute(self, statement: sa.Executable, params: Params | None = None) -> Result:
        """An ad-hoc statement (one built for this call), run after the deferred writes:
        its answer read whole. ``params``: its values, or a list of them to run it once
        per row (an INSERT's columns are the keys of the first)."""
        rows: Sequence[Mapping[str, Any]] = (
            [] if params is None else [params] if isinstance(params, Mapping) else params
        )
        many = len(rows) > 1
        shape, extracted = adhoc(statement, self._dialect, tuple(sorted(rows[0] if rows else ())),
                                 many)  # fmt: skip
        if many:
            args = [shape.args(row, extracted)[1] for row in rows]
            cursor = self._run(shape.sql, args, many=True, prepare=False)
        else:
            sql, one_args = shape.args(rows[0] if rows else {}, extracted)
            cursor = self._run(sql, one_args, prepare=False)
        return Result(shape.keys, shape.rows(cursor.fetchall()), cursor.rowcount)

    def read_only(self) -> None:
        """Declare the unit READ ONLY, with its BEGIN (PostgreSQL); SQLite has no such
        transaction: a unit that never commits writes nothing there either."""
        if self.defers:
            assert not self._begun, "READ ONLY is declared before the unit's first statement"
            self._pending.append(_Deferred("SET TRANSACTION READ ONLY", None, False, None))

    # -- prebuilt statements -----------------------------------------------------------
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

    # -- the transaction ---------------------------------------------------------------
    def commit(self) -> None:
        """Commit the unit: the one commit path. The fault port is asked first (a failed
        commit raises what a failed COMMIT raises, and the unit's exit rolls it back, so
        nothing of it is kept). SQLite: COMMIT on the driver. PostgreSQL: what is
        deferred and COMMIT in one trip (BEGIN too, if the unit wrote without reading)."""
        if self._faults is not None and self._faults.commit_fails():
            raise CommitFailed("COMMIT", None, Exception("commit failed (simulated)"))
        if not self.defers:
            if self._raw.in_transaction:
                self._run("COMMIT", ())
        elif self._begun or self._pending:
            self._send([], commit=True)
        # else the unit sent nothing: there is no transaction to commit

    def _send(self, last: list[_Deferred], *, commit: bool = False) -> list[Any]:
        """BEGIN if not yet sent, the deferred writes, ``last`` (whose results are
        returned) and COMMIT if asked, in one pipeline: one round trip."""
        batch, self._pending = self._pending, []
        if not self._begun:
            batch.insert(0, _Deferred("BEGIN", None, False, None))
            self._begun = True
        batch.extend(last)
        if commit:
            batch.append(_Deferred("COMMIT", None, False, None))
        pipeline = self._pipeline
        try:
            session = pipeline.session(self._connection.connection.info, self._raw)
            results: list[Any] = session.run(
                [pipeline.Statement(write.sql, write.args, write.many, write.prepare)
                 for write in batch]
            )  # fmt: skip
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
