"""Auditing the exchange log: recompute the tree and check it against what the hub signed.

Pure functions over plain data (entry bytes by index, evidences, signed tree heads),
used by ``exchange log verify`` on a live store and on an exported file. The hub signs
each evidence with the leaf hash of the entry recording the same event, and signs tree
heads over prefixes of the log, so an edited, deleted, inserted or reordered entry is
named by its index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from exchange.core.evidence import verify_evidence
from exchange.core.keys import Directory
from exchange.core.log_entry import LogEntry
from exchange.core.merkle import (
    InMemoryLeaves,
    MerkleTree,
    leaf_hash,
    root_at,
    verify_inclusion,
)
from exchange.core.tree_head import TreeHead, verify_tree_head
from exchange.errors import ExchangeError
from exchange.wire.v1 import exchange_pb2 as pb


@dataclass(frozen=True)
class LogProblem:
    """One thing wrong with the log, at the first entry index it concerns."""

    index: int
    what: str

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "what": self.what}


@dataclass
class AuditReport:
    """What an audit found: the recomputed size and root, and every problem."""

    size: int = 0
    root: bytes = b""
    heads_checked: int = 0
    evidences_checked: int = 0
    problems: list[LogProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> LogProblem | None:
        return min(self.problems, key=lambda p: p.index) if self.problems else None

    def to_json(self) -> dict[str, object]:
        first = self.first_problem
        return {
            "ok": self.ok,
            "size": self.size,
            "root_hash": self.root.hex(),
            "heads_checked": self.heads_checked,
            "evidences_checked": self.evidences_checked,
            "first_bad_index": first.index if first else None,
            "problems": [p.to_json() for p in sorted(self.problems, key=lambda p: p.index)],
        }


def audit_log(
    entries: Iterable[tuple[int, bytes]],
    *,
    evidences: Iterable[bytes],
    heads: Iterable[bytes],
    directory: Directory,
    now: datetime,
) -> AuditReport:
    """Check stored entries (index, bytes) against the hub's evidences and tree heads."""
    report = AuditReport()
    leaves = InMemoryLeaves()
    expected = 0
    for index, entry in entries:
        if index != expected:
            report.problems.append(
                LogProblem(
                    expected,
                    f"entries {expected} to {index - 1} are missing (the next stored is {index})",
                )
            )
            # keep indexes aligned so later checks still name the right entries
            while expected < index:
                leaves.append(b"\x00" * 32)
                expected += 1
        try:
            LogEntry.decode(entry)
        except ExchangeError as error:
            report.problems.append(LogProblem(index, f"entry {index} is not a log entry: {error}"))
        leaves.append(leaf_hash(entry))
        expected += 1
    tree = MerkleTree(leaves)
    report.size = leaves.size
    report.root = root_at(tree, leaves.size)
    attested: set[int] = set()
    for raw in evidences:
        evidence = pb.Evidence.FromString(raw)
        try:
            view = verify_evidence(evidence, directory, now)
        except ExchangeError as error:
            report.problems.append(
                LogProblem(report.size, f"an evidence is not signed by the hub: {error}")
            )
            continue
        report.evidences_checked += 1
        if not view.log_leaf_hash:
            continue
        index = view.log_index
        attested.add(index)
        if index >= leaves.size:
            report.problems.append(
                LogProblem(index, f"entry {index}, which a {view.kind} evidence names, is missing")
            )
        elif leaves.leaf(index) != view.log_leaf_hash:
            report.problems.append(
                LogProblem(
                    index,
                    f"entry {index} differs from the one the hub signed in its {view.kind} "
                    f"evidence for message {view.message_id}",
                )
            )
    covered = 0
    for raw in heads:
        signed = pb.SignedTreeHead.FromString(raw)
        try:
            head = verify_tree_head(signed, directory, now)
        except ExchangeError as error:
            report.problems.append(
                LogProblem(report.size, f"a tree head is not signed by the hub: {error}")
            )
            continue
        report.heads_checked += 1
        covered = max(covered, head.size)
        if head.size > leaves.size:
            report.problems.append(
                LogProblem(
                    leaves.size,
                    f"the hub signed a tree of {head.size} entries; only {leaves.size} are stored",
                )
            )
        elif root_at(tree, head.size) != head.root_hash:
            # name the entry already found wrong under this head, else the first entry
            # no evidence vouches for (the only ones that could have changed unseen)
            named = [p.index for p in report.problems if p.index < head.size]
            report.problems.append(
                LogProblem(
                    min(named) if named else _first_unattested(attested, head.size),
                    f"the first {head.size} entries do not have the root the hub signed "
                    f"at {head.hub_time_us} µs",
                )
            )
    for index in range(covered, leaves.size):
        if index not in attested:
            report.problems.append(
                LogProblem(index, f"entry {index} is attested by nothing the hub signed")
            )
            break
    return report


def _first_unattested(attested: set[int], size: int) -> int:
    for index in range(size):
        if index not in attested:
            return index
    return 0


def verify_exported(
    entries: Iterable[tuple[int, bytes, list[bytes]]],
    head: pb.SignedTreeHead,
    directory: Directory,
    now: datetime,
) -> tuple[TreeHead, list[LogProblem], int]:
    """Offline audit of an export: each entry's inclusion proof against the signed head."""
    tree_head = verify_tree_head(head, directory, now)
    problems = []
    count = 0
    for index, entry, proof in entries:
        count += 1
        try:
            LogEntry.decode(entry)
        except ExchangeError as error:
            problems.append(LogProblem(index, f"entry {index} is not a log entry: {error}"))
            continue
        if not verify_inclusion(
            leaf_hash(entry), index, tree_head.size, proof, tree_head.root_hash
        ):
            problems.append(LogProblem(index, f"entry {index} is not in the tree the hub signed"))
    return tree_head, problems, count
