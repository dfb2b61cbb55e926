"""The node's watch on the hub's log: newest signed head, consistency, inclusion.

A node keeps the newest tree head the hub signed that it has seen. For every newer
head it asks for a consistency proof and checks it; a head that cannot follow the
kept one (history rewritten or forked) is kept beside it as proof of misbehaviour, and
the node raises an alarm. A message's evidence names its log entry, and an inclusion
proof against a checked head shows the entry is in the log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from exchange.core.evidence import EvidenceView
from exchange.core.keys import Directory
from exchange.core.merkle import verify_inclusion
from exchange.core.tree_head import Misbehaviour, TreeHead, find_misbehaviour, verify_tree_head
from exchange.logs import get_logger
from exchange.wire.v1 import exchange_pb2 as pb

log = get_logger("exchange.node.log")

FetchHead = Callable[[], Awaitable[pb.SignedTreeHead]]
FetchConsistency = Callable[[int, int], Awaitable[Sequence[bytes]]]
FetchInclusion = Callable[[int, int], Awaitable[Sequence[bytes]]]


@dataclass(frozen=True)
class HeadCheck:
    """The outcome of looking at the hub's newest head."""

    kept: bytes  # the signed head the node keeps now (serialized)
    head: TreeHead
    misbehaviour: Misbehaviour | None = None


async def check_newest_head(
    *,
    kept: bytes | None,
    fetch_head: FetchHead,
    fetch_consistency: FetchConsistency,
    directory: Directory,
    now: datetime,
) -> HeadCheck:
    """Fetch the hub's newest head and check it against the one kept."""
    signed = await fetch_head()
    head = verify_tree_head(signed, directory, now)
    raw = signed.SerializeToString(deterministic=True)
    if kept is None:
        return HeadCheck(kept=raw, head=head)
    old_signed = pb.SignedTreeHead.FromString(kept)
    old = verify_tree_head(old_signed, directory, now)
    proof: Sequence[bytes] | None = None
    if old.size < head.size:
        proof = await fetch_consistency(old.size, head.size)
    found = find_misbehaviour(old_signed, signed, directory, now, consistency_proof=proof)
    if found is not None:
        log.error(
            "the hub's log contradicts a tree head it signed before",
            kind=found.kind.value,
            kept_size=old.size,
            new_size=head.size,
        )
        return HeadCheck(kept=kept, head=old, misbehaviour=found)
    if head.size >= old.size:
        return HeadCheck(kept=raw, head=head)
    return HeadCheck(kept=kept, head=old)


async def prove_inclusion(
    evidence: EvidenceView, head: TreeHead, fetch_inclusion: FetchInclusion
) -> bool:
    """Whether the evidence's log entry is in the tree of ``head`` (False if not yet in it)."""
    if evidence.log_index >= head.size or not evidence.log_leaf_hash:
        return False
    proof = await fetch_inclusion(evidence.log_index, head.size)
    return verify_inclusion(
        evidence.log_leaf_hash, evidence.log_index, head.size, list(proof), head.root_hash
    )
