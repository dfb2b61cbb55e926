"""Group commit: one writer thread turns many submissions into one transaction.

Each piece of work is prepared inside the writer's transaction (reads for dedupe,
rows to insert, the log entry, the evidence), and its result is handed back only
after the transaction committed. If the commit fails, every waiting caller gets the
error and no evidence leaves the hub: nothing is acknowledged that is not on disk.

Log indexes are assigned here, in commit order, without gaps: this thread is the
only writer of the exchange log in a hub process. So are the integer keys that work
asks for with :meth:`Batch.next_key` (delivery sequence numbers: a subscriber's
cursor then follows commit order).

On PostgreSQL several hub replicas may share one database: their writers take turns.
Each transaction first takes a PostgreSQL advisory lock (held until it commits), then
looks whether the log grew since this writer's last batch; if another replica appended,
the hooks catch up (the Merkle log reads the new leaves) and the indexes and keys go on
from the database's. Started by accident twice on one database, a hub is still right.

The writer's own costs are kept per batch, not per piece of work: what the pieces
will read is fetched in one query per kind before they run (:meth:`Batch.lookup`),
rows go in with one ``executemany`` per table (an INSERT compiled once, rows handed
to the driver as they are), and the callers waiting on an event loop are answered
with one wake-up of that loop per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import operator
import queue
import threading
import zlib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, select, text

from exchange.core.log_entry import LogEntry
from exchange.hub.errors import StoreUnavailable
from exchange.logs import get_logger
from exchange.store.tables import LOG_ENTRIES

T = TypeVar("T")
log = get_logger("exchange.hub.writer")

#: reads the stored values of many keys of one kind at once: {key: value}, absent if none
Loader = Callable[[Connection, Sequence[Any]], Mapping[Any, Any]]

#: how many keys a loader is given at a time (well under every driver's parameter limit)
LOOKUP_CHUNK = 500
#: rows in one multi-row INSERT on SQLite: one statement step for them all, so the
#: writer gives up and takes back the interpreter lock once, not once per row
ROWS_PER_INSERT = 128


@dataclass(frozen=True)
class LogPosition:
    """Where an entry went: its leaf index and leaf hash (RFC 9162: SHA-256(0x00 || entry))."""

    index: int
    leaf_hash: bytes


class _RawInsert(NamedTuple):
    """An INSERT of some columns of a table, compiled for the engine's driver."""

    sql: str
    #: parameter order for a positional driver (``None``: the driver takes the row dicts)
    order: tuple[str, ...] | None


class _Mark(NamedTuple):
    rows: dict[Table, int]
    next_log_index: int
    statements: int
    claimed: int
    after_commit: int
    leaf_hashes: int
    next_keys: dict[Table, int]


@dataclass
class Batch:
    """What one transaction will write: rows per table, log entries in index order."""

    connection: Connection
    next_log_index: int
    rows: dict[Table, list[dict[str, Any]]] = field(default_factory=dict)
    #: statements run after the inserts (state changes), in order, with their parameters
    statements: list[tuple[Any, dict[str, Any] | None]] = field(default_factory=list)
    #: keys claimed by earlier work in this batch (dedupe within a batch): message ids
    #: with their envelope digest, acknowledged delivery sequence numbers, ...
    claimed: dict[Any, Any] = field(default_factory=dict)
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    #: leaf hashes of the entries this batch appends, in index order
    leaf_hashes: list[bytes] = field(default_factory=list)
    #: the next integer primary key per table, for tables whose keys this thread assigns
    next_keys: dict[Table, int] = field(default_factory=dict)
    #: the loaders behind :meth:`lookup`, by kind
    loaders: Mapping[str, Loader] = field(default_factory=dict)
    #: what :meth:`lookup` found (``None``: nothing stored), by (kind, key)
    found: dict[tuple[str, Any], Any] = field(default_factory=dict)

    def add(self, table: Table, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append(row)

    def execute(self, statement: Any, parameters: dict[str, Any] | None = None) -> None:
        """Run ``statement`` in this transaction after the batch's inserts.

        Consecutive runs of one statement object with parameters go to the database as
        one ``executemany``: build such statements once, with bind parameters.
        """
        self.statements.append((statement, parameters))

    def lookup(self, kind: str, key: Hashable) -> Any:
        """What the store held for ``key`` when this batch began (``None``: nothing).

        Keys that work declared when it was submitted were read for the whole batch in
        one query before any work ran; any other key is read now. What earlier work of
        this batch staged is not in the store yet: look in :attr:`claimed` first.
        """
        try:
            return self.found[(kind, key)]
        except KeyError:
            value = self.loaders[kind](self.connection, [key]).get(key)
            self.found[(kind, key)] = value
            return value

    def next_key(self, table: Table) -> int:
        """A new value of ``table``'s integer primary key, in commit order."""
        key = self.next_keys.get(table)
        if key is None:
            (column,) = table.primary_key.columns
            newest = self.connection.execute(select(func.max(column))).scalar()
            key = 1 if newest is None else int(newest) + 1
        self.next_keys[table] = key + 1
        return key

    def _mark(self) -> _Mark:
        return _Mark(
            {t: len(r) for t, r in self.rows.items()},
            self.next_log_index,
            len(self.statements),
            len(self.claimed),
            len(self.after_commit),
            len(self.leaf_hashes),
            dict(self.next_keys),
        )

    def _rewind(self, mark: _Mark) -> None:
        """Drop what a failed piece of work staged, so it leaves nothing half-written."""
        sizes, index, statements, claimed, callbacks, leaves, keys = mark
        del self.leaf_hashes[leaves:]
        for table in list(self.rows):
            del self.rows[table][sizes.get(table, 0) :]
        self.next_log_index = index
        del self.statements[statements:]
        # work only adds to ``claimed`` (a dict keeps insertion order): drop what it added
        for key in list(itertools.islice(self.claimed, claimed, None)):
            del self.claimed[key]
        del self.after_commit[callbacks:]
        self.next_keys.clear()
        self.next_keys.update(keys)

    def append_log(self, entry: LogEntry) -> LogPosition:
        """Add ``entry`` to the log; returns its index and leaf hash."""
        index = self.next_log_index
        self.next_log_index += 1
        encoded = entry.encode()
        self.add(
            LOG_ENTRIES,
            {
                "idx": index,
                "kind": entry.event.value,
                "message_id": entry.message_id or None,
                "hub_time_us": entry.hub_time_us,
                "entry": encoded,
            },
        )
        leaf = hashlib.sha256(b"\x00" + encoded).digest()
        self.leaf_hashes.append(leaf)
        return LogPosition(index, leaf)


class Work(Generic[T]):
    """A unit of work for the writer: ``prepare`` reads and stages, returns the result.

    ``keys`` are the (kind, key) pairs ``prepare`` will :meth:`~Batch.lookup`, read for
    the whole batch at once. ``waiter``, for a caller on an event loop, is resolved
    from :attr:`future` by the writer, once per batch and loop.
    """

    def __init__(
        self,
        prepare: Callable[[Batch], T],
        keys: Iterable[tuple[str, Hashable]] = (),
        waiter: asyncio.Future[T] | None = None,
    ) -> None:
        self.prepare = prepare
        self.keys = keys
        self.future: Future[T] = Future()
        self.waiter = waiter


def _settle(works: list[Work[Any]]) -> None:
    """In the event loop: hand each caller the outcome its work's future holds."""
    for work in works:
        waiter = work.waiter
        if waiter is None or waiter.done():
            continue  # the caller gave up
        future = work.future
        if future.cancelled():
            waiter.cancel()
            continue
        error = future.exception()
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(future.result())


class CommitHooks(Protocol):
    """Work done with every batch: staged into its transaction, applied once it committed."""

    def catch_up(self, connection: Connection, start: int, end: int) -> None:
        """Another replica appended log entries ``start`` to ``end - 1`` (committed)."""

    def before_commit(self, batch: Batch) -> None: ...

    def after_commit(self) -> None: ...

    def after_failure(self) -> None: ...


class GroupCommitWriter:
    """The hub's single writer thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 512,
        hooks: CommitHooks | None = None,
        next_log_index: int | None = None,
    ) -> None:
        self.engine = engine
        self.hooks = hooks
        self.max_batch = max_batch
        self.loaders: dict[str, Loader] = {}
        self._queue: queue.Queue[Work[Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        #: where the next entry goes; given by whoever read the log (the hub's Merkle log,
        #: so that on a shared database the first turn catches up from what it read)
        self._next_log_index = (
            self._load_next_log_index() if next_log_index is None else next_log_index
        )
        self._next_keys: dict[Table, int] = {}
        self._inserts: dict[tuple[Table, tuple[str, ...]], _RawInsert] = {}
        self._postgresql = engine.dialect.name == "postgresql"
        #: replicas may share the database: take turns, and catch up with the others
        self.shared = self._postgresql
        self._lock_key = self._advisory_key() if self.shared else 0
        self._multirow = engine.dialect.name == "sqlite"
        self._multirow_sql: dict[tuple[str, int], str] = {}
        self.batches = 0
        self.committed = 0

    def _advisory_key(self) -> int:
        """The advisory lock of this database schema's log (one per schema, not per server)."""
        with self.engine.connect() as connection:
            schema = connection.execute(text("SELECT current_schema()")).scalar() or ""
        return zlib.crc32(f"exchange-log-writer:{schema}".encode())

    def _take_turn(self, connection: Connection) -> None:
        """Wait for the other replicas' writers; learn what they appended meanwhile."""
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._lock_key})
        newest = connection.execute(select(func.max(LOG_ENTRIES.c.idx))).scalar()
        following = 0 if newest is None else int(newest) + 1
        if following != self._next_log_index:
            if self.hooks is not None:
                self.hooks.catch_up(connection, self._next_log_index, following)
            self._next_log_index = following
            self._next_keys = {}  # read again from the database by Batch.next_key

    def _load_next_log_index(self) -> int:
        with self.engine.connect() as connection:
            newest = connection.execute(select(func.max(LOG_ENTRIES.c.idx))).scalar()
        return 0 if newest is None else int(newest) + 1

    def register(self, kind: str, loader: Loader) -> None:
        """Let work look up keys of ``kind`` (:meth:`Batch.lookup`), read by ``loader``."""
        self.loaders[kind] = loader

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    async def submit(
        self, prepare: Callable[[Batch], T], keys: Iterable[tuple[str, Hashable]] = ()
    ) -> T:
        """Run ``prepare`` in the next transaction; returns after the commit."""
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(Work(prepare, keys, waiter))
        return await waiter

    def submit_sync(
        self, prepare: Callable[[Batch], T], keys: Iterable[tuple[str, Hashable]] = ()
    ) -> T:
        """The same, for callers outside the event loop."""
        work: Work[T] = Work(prepare, keys)
        self._queue.put(work)
        return work.future.result()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            while len(items) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                items.append(more)
            self._commit(items)

    def _commit(self, items: list[Work[Any]]) -> None:
        results: list[tuple[Work[Any], Any, BaseException | None]] = []
        try:
            with self.engine.begin() as connection:
                if self.shared:
                    self._take_turn(connection)
                batch = Batch(
                    connection=connection,
                    next_log_index=self._next_log_index,
                    next_keys=dict(self._next_keys),
                    loaders=self.loaders,
                )
                running = []
                for work in items:
                    # a caller that gave up before its work began gets nothing written;
                    # once running, the work cannot be cancelled and its commit stands
                    if work.waiter is not None and work.waiter.cancelled():
                        work.future.cancel()
                    if work.future.set_running_or_notify_cancel():
                        running.append(work)
                self._prefetch(batch, running)
                for work in running:
                    mark = batch._mark()
                    try:
                        results.append((work, work.prepare(batch), None))
                    except Exception as error:  # this work alone fails; the batch goes on
                        batch._rewind(mark)
                        results.append((work, None, error))
                if self.hooks is not None:
                    self.hooks.before_commit(batch)
                self._write(batch)
            # committed: only now may anyone learn the outcome
            self._next_log_index = batch.next_log_index
            self._next_keys = batch.next_keys
            self.batches += 1
            self.committed += len(items)
        except Exception as error:
            log.exception("group commit failed", error=str(error), items=len(items))
            if self.hooks is not None:
                self.hooks.after_failure()
            # the whole transaction is gone: each caller may try again (its retry dedupes)
            unavailable = StoreUnavailable(
                f"the hub could not store this ({type(error).__name__}); nothing of it was "
                "kept, try again"
            )
            for work in items:
                # whether or not it began: the transaction may have failed before any did
                if not work.future.done():
                    work.future.set_exception(unavailable)
            self._answer(items)
            return
        if self.hooks is not None:
            self.hooks.after_commit()
        for callback in batch.after_commit:
            try:
                callback()
            except Exception as error:  # a wake-up failing must not lose results
                log.warning("after-commit callback failed", error=str(error))
        for work, result, failure in results:
            if failure is not None:
                work.future.set_exception(failure)
            else:
                work.future.set_result(result)
        self._answer(items)

    @staticmethod
    def _prefetch(batch: Batch, running: list[Work[Any]]) -> None:
        """Read every key the batch's work declared: one query per kind (and chunk)."""
        wanted: dict[str, dict[Hashable, None]] = {}
        for work in running:
            for kind, key in work.keys:
                wanted.setdefault(kind, {})[key] = None
        for kind, keys in wanted.items():
            loader = batch.loaders[kind]
            ordered = list(keys)
            for start in range(0, len(ordered), LOOKUP_CHUNK):
                chunk = ordered[start : start + LOOKUP_CHUNK]
                values = loader(batch.connection, chunk)
                for key in chunk:
                    batch.found[(kind, key)] = values.get(key)

    def _write(self, batch: Batch) -> None:
        connection = batch.connection
        for table, rows in batch.rows.items():
            start = 0
            while start < len(rows):  # runs of rows naming the same columns, in order
                keys = tuple(rows[start])
                end = start + 1
                while end < len(rows) and len(rows[end]) == len(keys) and tuple(rows[end]) == keys:
                    end += 1
                self._insert(connection, table, keys, rows[start:end])
                start = end
        if self._postgresql:
            # keys assigned here bypass the column's sequence: keep it ahead of them
            for table, key in batch.next_keys.items():
                if self._next_keys.get(table) != key:
                    (column,) = table.primary_key.columns
                    connection.execute(
                        text("SELECT setval(pg_get_serial_sequence(:t, :c), :v, false)"),
                        {"t": table.name, "c": column.name, "v": key},
                    )
        statements = batch.statements
        i = 0
        while i < len(statements):
            statement, parameters = statements[i]
            if parameters is None:
                connection.execute(statement)
                i += 1
                continue
            j = i + 1
            while (
                j < len(statements)
                and statements[j][0] is statement
                and statements[j][1] is not None
            ):
                j += 1
            many = [p for _s, p in statements[i:j] if p is not None]
            connection.execute(statement, many if len(many) > 1 else many[0])
            i = j

    def _insert(
        self,
        connection: Connection,
        table: Table,
        keys: tuple[str, ...],
        rows: list[dict[str, Any]],
    ) -> None:
        """One ``executemany`` with the driver's own parameter style, no per-row processing.

        The hub's columns are strings, integers and bytes, which the drivers take as they
        are; what SQLAlchemy would do per row (bind processors) is nothing for them.
        """
        raw = self._inserts.get((table, keys))
        if raw is None:
            compiled = (
                insert(table)
                .values({k: bindparam(k) for k in keys})
                .compile(dialect=self.engine.dialect)
            )
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            raw = self._inserts[(table, keys)] = _RawInsert(compiled.string, order)
        if raw.order is None:
            connection.exec_driver_sql(raw.sql, rows)
            return
        if len(raw.order) == 1:
            (only,) = raw.order
            tuples = [(row[only],) for row in rows]
        else:
            values = operator.itemgetter(*raw.order)  # a row's values as a tuple, in order
            tuples = [values(row) for row in rows]
        if not self._multirow or len(tuples) == 1:
            connection.exec_driver_sql(raw.sql, tuples if len(tuples) > 1 else tuples[0])
            return
        start = 0
        while start < len(tuples):
            # runs of 128, 64, ... 1 rows: a handful of statement texts per table, cached
            count = 1 << (min(ROWS_PER_INSERT, len(tuples) - start).bit_length() - 1)
            flat = tuple(value for row in tuples[start : start + count] for value in row)
            connection.exec_driver_sql(self._rows_sql(raw.sql, count), flat)
            start += count

    def _rows_sql(self, sql: str, count: int) -> str:
        """``INSERT ... VALUES (?, ?)`` made into one of ``count`` rows."""
        key = (sql, count)
        found = self._multirow_sql.get(key)
        if found is None:
            head, _, row = sql.rpartition(" VALUES ")
            found = self._multirow_sql[key] = f"{head} VALUES {', '.join([row] * count)}"
        return found

    @staticmethod
    def _answer(items: list[Work[Any]]) -> None:
        """Wake each event loop that waits on this batch once, to settle its callers."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Work[Any]]] = {}
        for work in items:
            if work.waiter is not None:
                by_loop.setdefault(work.waiter.get_loop(), []).append(work)
        for loop, works in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, works)
