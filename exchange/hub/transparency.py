"""The hub's exchange log as a transparency log: leaves, frontier, signed tree heads, proofs.

The group-commit writer calls :meth:`HubLog.before_commit` with each batch (the new
entries' leaf hashes are appended to a copy of the frontier, and a tree head is signed
into the same transaction when one is due), and :meth:`HubLog.after_commit` once the
batch is on disk (only then do the leaves become visible to proofs). Appending is
O(log n) per entry whatever the size of the log.

At start the hub re-reads its log to rebuild the leaves. If the entries no longer
match a tree head it signed before (someone edited the database), it says so loudly;
it does not hide it, and nodes holding the older head catch the fork on their own.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Connection, Engine, select

from exchange.core.clock import Clock
from exchange.core.keys import Directory, Keyring
from exchange.core.merkle import (
    InMemoryLeaves,
    MerkleFrontier,
    MerkleTree,
    ProofRequestError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_at,
)
from exchange.core.tree_head import TreeHead, TreeHeadPolicy, sign_tree_head
from exchange.hub.writer import Batch
from exchange.logs import get_logger
from exchange.store.tables import LOG_ENTRIES, TREE_HEADS
from exchange.wire.v1 import exchange_pb2 as pb

log = get_logger("exchange.hub.log")


class HubLog:
    """Leaves in memory, the frontier, the newest signed head; proofs on request."""

    def __init__(
        self,
        *,
        engine: Engine,
        keyring: Keyring,
        directory: Directory,
        clock: Clock,
        policy: TreeHeadPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.keyring = keyring
        self.directory = directory
        self.clock = clock
        self.policy = policy or TreeHeadPolicy(every_entries=1000, every_seconds=10.0)
        self._lock = threading.Lock()
        self.leaves = InMemoryLeaves()
        self.tree = MerkleTree(self.leaves)
        self.frontier = MerkleFrontier()
        self.latest: pb.SignedTreeHead | None = None
        self._latest_size = -1
        self._last_signed = time.monotonic()
        self._pending_frontier: MerkleFrontier | None = None
        self._pending_leaves: list[bytes] = []
        self._pending_head: tuple[pb.SignedTreeHead, int] | None = None
        self.force_head = False
        self.consistent_at_start = True

    # ---------------------------------------------------------------- start

    def load(self) -> None:
        """Rebuild the leaves from the stored entries and check them against the heads."""
        with self.engine.connect() as db:
            expected = 0
            for index, entry in db.execute(
                select(LOG_ENTRIES.c.idx, LOG_ENTRIES.c.entry).order_by(LOG_ENTRIES.c.idx)
            ):
                if index != expected:
                    log.error("log entry missing", index=expected)
                    self.consistent_at_start = False
                    expected = index
                self.leaves.append(leaf_hash(entry))
                expected += 1
            heads = db.execute(
                select(TREE_HEADS.c.size, TREE_HEADS.c.root_hash, TREE_HEADS.c.signed).order_by(
                    TREE_HEADS.c.id
                )
            ).all()
        self.frontier.extend(self.leaves.leaves(0, self.leaves.size))
        self.tree.sync()
        for size, root, _signed in heads:
            if size > self.leaves.size or root_at(self.tree, size) != root:
                log.error(
                    "the stored log no longer matches a tree head the hub signed",
                    head_size=size,
                    log_size=self.leaves.size,
                )
                self.consistent_at_start = False
        if heads:
            self.latest = pb.SignedTreeHead.FromString(heads[-1][2])
            self._latest_size = int(heads[-1][0])

    @property
    def size(self) -> int:
        return self.leaves.size

    # ---------------------------------------------------------------- writer hooks

    def catch_up(self, connection: Connection, start: int, end: int) -> None:
        """Take in the entries another replica appended, and its newest head if newer."""
        rows = connection.execute(
            select(LOG_ENTRIES.c.idx, LOG_ENTRIES.c.entry)
            .where(LOG_ENTRIES.c.idx >= start, LOG_ENTRIES.c.idx < end)
            .order_by(LOG_ENTRIES.c.idx)
        ).all()
        if [index for index, _ in rows] != list(range(start, end)):
            log.error("log entries missing while catching up", start=start, end=end)
        leaves = [leaf_hash(entry) for _, entry in rows]
        newest = connection.execute(
            select(TREE_HEADS.c.size, TREE_HEADS.c.signed).order_by(TREE_HEADS.c.id.desc()).limit(1)
        ).first()
        with self._lock:
            self.frontier.extend(leaves)
            self.leaves.extend(leaves)
            if newest is not None and int(newest[0]) > self._latest_size:
                self.latest = pb.SignedTreeHead.FromString(newest[1])
                self._latest_size = int(newest[0])

    def before_commit(self, batch: Batch) -> None:
        """Stage this batch's leaves; sign a head into the transaction when one is due."""
        frontier = self.frontier.copy()
        new_leaves = list(batch.leaf_hashes)
        frontier.extend(new_leaves)
        self._pending_frontier, self._pending_leaves, self._pending_head = (
            frontier,
            new_leaves,
            None,
        )
        since = frontier.size - max(self._latest_size, 0)
        due = self.force_head or (self._latest_size < 0 and frontier.size > 0)
        due = due or (
            (since > 0 or self._latest_size < 0)
            and self.policy.due(since, time.monotonic() - self._last_signed)
        )
        if not due or frontier.size == self._latest_size:
            return
        now = self.clock.now()
        head = TreeHead(frontier.size, frontier.root(), int(now.timestamp() * 1_000_000))
        signed = sign_tree_head(head, self.keyring, self.directory, now)
        batch.add(
            TREE_HEADS,
            {
                "size": head.size,
                "root_hash": head.root_hash,
                "hub_time_us": head.hub_time_us,
                "signed": signed.SerializeToString(deterministic=True),
            },
        )
        self._pending_head = (signed, head.size)

    def after_commit(self) -> None:
        """The batch is on disk: its leaves and head become what proofs are made from."""
        with self._lock:
            if self._pending_frontier is not None:
                self.frontier = self._pending_frontier
                self.leaves.extend(self._pending_leaves)
            if self._pending_head is not None:
                self.latest, self._latest_size = self._pending_head
                self._last_signed = time.monotonic()
                self.force_head = False
        self._pending_frontier, self._pending_leaves, self._pending_head = None, [], None

    def after_failure(self) -> None:
        self._pending_frontier, self._pending_leaves, self._pending_head = None, [], None

    # ---------------------------------------------------------------- proofs

    def inclusion(self, index: int, tree_size: int) -> list[bytes]:
        with self._lock:
            self._check_size(tree_size)
            self.tree.sync()
            return inclusion_proof(self.tree, index, tree_size)

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        with self._lock:
            self._check_size(new_size)
            self.tree.sync()
            return consistency_proof(self.tree, old_size, new_size)

    def _check_size(self, size: int) -> None:
        if size > self.leaves.size:
            raise ProofRequestError(
                f"the log has {self.leaves.size} entries; there is no tree of size {size}"
            )

    def head_is_current(self) -> bool:
        return self._latest_size == self.leaves.size
