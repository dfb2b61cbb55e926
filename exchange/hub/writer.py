"""Group commit: one writer thread turns many submissions into one transaction.

Each piece of work is prepared inside the writer's transaction (reads for dedupe,
rows to insert, the log entry, the evidence), and its result is handed back only
after the transaction committed. If the commit fails, every waiting caller gets the
error and no evidence leaves the hub: nothing is acknowledged that is not on disk.

Log indexes are assigned here, in commit order, without gaps: this thread is the
only writer of the exchange log in a hub process.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection, Engine, Table, func, insert, select

from exchange.core.log_entry import LogEntry
from exchange.logs import get_logger
from exchange.store.tables import LOG_ENTRIES

T = TypeVar("T")
log = get_logger("exchange.hub.writer")


@dataclass(frozen=True)
class LogPosition:
    """Where an entry went: its leaf index and leaf hash (RFC 9162: SHA-256(0x00 || entry))."""

    index: int
    leaf_hash: bytes


@dataclass
class Batch:
    """What one transaction will write: rows per table, log entries in index order."""

    connection: Connection
    next_log_index: int
    rows: dict[Table, list[dict[str, Any]]] = field(default_factory=dict)
    #: statements run after the inserts (state changes), in order
    statements: list[Any] = field(default_factory=list)
    #: keys claimed by earlier work in this batch (dedupe within a batch): message ids
    #: with their envelope digest, acknowledged delivery sequence numbers, ...
    claimed: dict[Any, Any] = field(default_factory=dict)
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    #: leaf hashes of the entries this batch appends, in index order
    leaf_hashes: list[bytes] = field(default_factory=list)

    def add(self, table: Table, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append(row)

    def execute(self, statement: Any) -> None:
        """Run ``statement`` in this transaction after the batch's inserts."""
        self.statements.append(statement)

    def _mark(self) -> tuple[dict[Table, int], int, int, set[Any], int, int]:
        return (
            {t: len(r) for t, r in self.rows.items()},
            self.next_log_index,
            len(self.statements),
            set(self.claimed),
            len(self.after_commit),
            len(self.leaf_hashes),
        )

    def _rewind(self, mark: tuple[dict[Table, int], int, int, set[Any], int, int]) -> None:
        """Drop what a failed piece of work staged, so it leaves nothing half-written."""
        sizes, index, statements, claimed, callbacks, leaves = mark
        del self.leaf_hashes[leaves:]
        for table in list(self.rows):
            del self.rows[table][sizes.get(table, 0) :]
        self.next_log_index = index
        del self.statements[statements:]
        for key in set(self.claimed) - claimed:
            del self.claimed[key]
        del self.after_commit[callbacks:]

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
    """A unit of work for the writer: ``prepare`` reads and stages, returns the result."""

    def __init__(self, prepare: Callable[[Batch], T]) -> None:
        self.prepare = prepare
        self.future: Future[T] = Future()


class CommitHooks(Protocol):
    """Work done with every batch: staged into its transaction, applied once it committed."""

    def before_commit(self, batch: Batch) -> None: ...

    def after_commit(self) -> None: ...

    def after_failure(self) -> None: ...


class GroupCommitWriter:
    """The hub's single writer thread."""

    def __init__(
        self, engine: Engine, *, max_batch: int = 512, hooks: CommitHooks | None = None
    ) -> None:
        self.engine = engine
        self.hooks = hooks
        self.max_batch = max_batch
        self._queue: queue.Queue[Work[Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._next_log_index = self._load_next_log_index()
        self.batches = 0
        self.committed = 0

    def _load_next_log_index(self) -> int:
        with self.engine.connect() as connection:
            newest = connection.execute(select(func.max(LOG_ENTRIES.c.idx))).scalar()
        return 0 if newest is None else int(newest) + 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    async def submit(self, prepare: Callable[[Batch], T]) -> T:
        """Run ``prepare`` in the next transaction; returns after the commit."""
        work: Work[T] = Work(prepare)
        self._queue.put(work)
        return await asyncio.wrap_future(work.future)

    def submit_sync(self, prepare: Callable[[Batch], T]) -> T:
        """The same, for callers outside the event loop."""
        work: Work[T] = Work(prepare)
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
                batch = Batch(connection=connection, next_log_index=self._next_log_index)
                for work in items:
                    # a caller that gave up before its work began gets nothing written;
                    # once running, the work cannot be cancelled and its commit stands
                    if not work.future.set_running_or_notify_cancel():
                        continue
                    mark = batch._mark()
                    try:
                        results.append((work, work.prepare(batch), None))
                    except Exception as error:  # this work alone fails; the batch goes on
                        batch._rewind(mark)
                        results.append((work, None, error))
                if self.hooks is not None:
                    self.hooks.before_commit(batch)
                for table, rows in batch.rows.items():
                    if rows:
                        connection.execute(insert(table), rows)
                for statement in batch.statements:
                    connection.execute(statement)
            # committed: only now may anyone learn the outcome
            self._next_log_index = batch.next_log_index
            self.batches += 1
            self.committed += len(items)
        except Exception as error:
            log.exception("group commit failed", error=str(error), items=len(items))
            if self.hooks is not None:
                self.hooks.after_failure()
            for work in items:
                if work.future.running():
                    work.future.set_exception(error)
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
