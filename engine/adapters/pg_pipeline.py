"""A step's statements sent to PostgreSQL in one pipeline, through libpq itself.

psycopg's cursor, in pipeline mode, polls the socket and flushes once per
statement it is given, and wraps each answer in a cursor: about 20 µs of this
machine's CPU a statement (a batch of ten inserts with BEGIN and COMMIT: 228 µs
through cursors, 31 µs here), half of what the statement costs the server. A
step sends each of its round trips as one batch, so this module queues the batch
on psycopg's libpq wrapper (``psycopg.pq``, its public low-level layer), sends
it with one flush and reads the answers back. What the cursor gave is kept:

- values go to and from the database through the connection's own adapters
  (``psycopg.adapt.Transformer``, what the cursor uses), so every type, and
  SQLAlchemy's JSON loader registered on the connection, behaves as before;
- each of the engine's own statements is a named prepared statement of the
  connection's session, prepared in the batch that first needs it (psycopg
  prepares a statement after its fifth run; these run thousands of times); an
  ad-hoc one (a listing, a poll, an ``IN`` list of any length) is sent unprepared,
  so the session's names stay the engine's hundred or so;
- a failed statement raises psycopg's own exception for its error, with its
  SQLSTATE and diagnostics; the statements after it in the batch are not run
  (the server aborts the rest of the pipeline), and the transaction is left
  failed for the caller to roll back, as with the cursor.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import select
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq
from psycopg.adapt import PyFormat, Transformer

_PLACEHOLDER = re.compile(r"%%|%s")
_AUTO = PyFormat.AUTO
_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
_NO_SUCH_STATEMENT = "26000"  # invalid_sql_statement_name
IDLE = pq.TransactionStatus.IDLE  # no transaction open on the connection


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a batch: SQL in the ``format`` paramstyle (``%s``) and its
    values; ``many`` runs it once per row of values. No values (``None``) sends the
    SQL as it is (``BEGIN``, ``COMMIT``); ``prepare`` False sends it unprepared."""

    sql: str
    args: Any
    many: bool = False
    prepare: bool = True


class Result:
    """What a step reads of a statement's answer: its rows and its row count."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


@functools.lru_cache(maxsize=4_096)
def _numbered(sql: str) -> bytes:
    """``%s`` placeholders as ``$1, $2, ...`` (and ``%%`` as ``%``)."""
    numbers = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(
        lambda m: "%" if m.group() == "%%" else f"${next(numbers)}", sql
    ).encode()


class Failed(Exception):
    """The statement of a batch the server refused (its index) and psycopg's error."""

    def __init__(self, index: int, error: psycopg.Error) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


_Key = tuple[str, tuple[int, ...]]  # the SQL and its parameters' types


class Session:
    """One psycopg connection's prepared statements and adapters."""

    # Distinct statements (with their parameters' types) a session prepares; any more
    # are sent unprepared. The engine has about a hundred.
    PREPARED_MAX = 2_000

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._pg = connection.pgconn
        self._transformer = Transformer(connection)
        self._encoding = connection.info.encoding
        self._names: dict[_Key, bytes] = {}
        self._named = itertools.count()
        # poll, not select: a server's sockets can be numbered past select's 1024.
        self._readable, self._writable = select.poll(), select.poll()
        self._readable.register(self._pg.socket, select.POLLIN)
        self._writable.register(self._pg.socket, select.POLLIN | select.POLLOUT)

    def run(self, batch: Sequence[Statement]) -> list[Result]:
        """Send ``batch`` in one pipeline and return an answer per statement (a
        ``many`` statement's is its last row's); ``Failed`` names the first statement
        the server refused."""
        queries = self._queries(batch)  # values adapted before anything is sent
        pg = self._pg
        pg.enter_pipeline_mode()
        try:
            for _, prepare, name, sql, values, types, formats in queries:
                if prepare:
                    pg.send_prepare(name, sql, types)
                if name:
                    pg.send_query_prepared(name, values, formats)
                else:
                    pg.send_query_params(sql, values, types, formats)
            pg.pipeline_sync()
            self._flush()
            answers = self._answers(len(batch), queries)
        except Failed:
            pg.exit_pipeline_mode()  # every answer was read: the pipeline is idle
            raise
        except BaseException:
            # The connection broke (or the wait was interrupted): it is not reused.
            with contextlib.suppress(psycopg.Error):
                pg.exit_pipeline_mode()
            raise
        pg.exit_pipeline_mode()
        return answers

    def _queries(self, batch: Sequence[Statement]) -> list[tuple[Any, ...]]:
        """Per query: its statement's index, whether to prepare it first, its name
        (empty: unprepared), SQL, values, their types and formats."""
        tx = self._transformer
        queries: list[tuple[Any, ...]] = []
        fresh: dict[_Key, bytes] = {}  # named only once every value is adapted
        for index, statement in enumerate(batch):
            if statement.args is None:
                queries.append((index, False, b"", statement.sql.encode(), None, None, None))
                continue
            for args in statement.args if statement.many else (statement.args,):
                values = tx.dump_sequence(args, [_AUTO] * len(args))
                key: _Key = (statement.sql, tx.types or ())
                known = self._names.get(key) or fresh.get(key)
                name = known if statement.prepare else b""  # b"": sent unprepared
                prepare = name is None and len(self._names) + len(fresh) < self.PREPARED_MAX
                if prepare:
                    name = fresh[key] = f"paychaos_{next(self._named)}".encode()
                queries.append(
                    (index, prepare, name or b"", _numbered(statement.sql), values, tx.types,
                     tx.formats)
                )  # fmt: skip
        self._names.update(fresh)
        return queries

    def _flush(self) -> None:
        pg = self._pg
        while pg.flush():
            for _, events in self._writable.poll():
                if events & select.POLLIN:
                    pg.consume_input()  # the server may wait for its answers to be read

    def _next(self) -> Any:
        pg = self._pg
        while pg.is_busy():
            self._readable.poll()
            pg.consume_input()
        return pg.get_result()

    def _answers(self, statements: int, queries: list[tuple[Any, ...]]) -> list[Result]:
        answers = [_NO_ROWS] * statements
        failed: Failed | None = None
        for index, prepare, name, *_ in queries:
            results = [self._one(), self._one()] if prepare else [self._one()]
            if prepare and results[0].status not in _OK:
                self._forget(name)  # refused, or not run after a refusal: prepare it anew
            for result in results:
                if failed is None and result.status == pq.ExecStatus.FATAL_ERROR:
                    failed = Failed(index, errors.error_from_result(result, self._encoding))
                    if failed.error.sqlstate == _NO_SUCH_STATEMENT:
                        self._names.clear()  # deallocated behind this session's back
            if results[-1].status in _OK:
                answers[index] = self._result(results[-1])
        sync = self._next()
        assert sync is not None and sync.status == pq.ExecStatus.PIPELINE_SYNC, sync
        if failed is not None:
            raise failed
        return answers

    def _forget(self, name: bytes) -> None:
        for key, known in list(self._names.items()):
            if known == name:
                del self._names[key]

    def _one(self) -> Any:
        """One query's result (and the end of its results)."""
        result = self._next()
        assert result is not None
        end = self._next()
        assert end is None, end.status
        return result

    def _result(self, result: Any) -> Result:
        if not result.ntuples:
            return Result([], result.command_tuples or 0)
        tx = self._transformer
        tx.set_pgresult(result)
        rows: list[tuple[Any, ...]] = tx.load_rows(0, result.ntuples, tuple)
        tx.set_pgresult(None)
        return Result(rows, result.command_tuples or 0)


_NO_ROWS = Result([], 0)


def session(info: MutableMapping[str, Any], connection: psycopg.Connection[Any]) -> Session:
    """The connection's session, kept in ``info``: the pool's dictionary for the
    connection, which SQLAlchemy empties when it replaces the connection (its
    prepared statements live exactly as long as it does)."""
    found = info.get(_INFO_KEY)
    if found is None:
        found = info[_INFO_KEY] = Session(connection)
    return found


_INFO_KEY = "paychaos_pipeline"
