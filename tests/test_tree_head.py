"""Signed tree heads: the hub's hybrid signature, and its contradictions caught as evidence."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from exchange.core.evidence import HUB_UNIT
from exchange.core.identities import Identities, make_identities
from exchange.core.keys import Directory, KeyAlgorithm, Revocation
from exchange.core.merkle import (
    EMPTY_ROOT,
    InMemoryLeaves,
    MerkleTree,
    consistency_proof,
    leaf_hash,
    root_at,
)
from exchange.core.suites import CLASSIC, sign
from exchange.core.tree_head import (
    SIGNED_PREFIX,
    Misbehaviour,
    MisbehaviourDetected,
    MisbehaviourKind,
    TreeHead,
    TreeHeadPolicy,
    find_misbehaviour,
    sign_tree_head,
    verify_tree_head,
)
from exchange.errors import (
    BadSignature,
    CertificateExpired,
    CertificateRevoked,
    MalformedEnvelope,
    UnknownSigner,
)
from exchange.wire.v1 import exchange_pb2 as pb

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)


@pytest.fixture(scope="module")
def ids() -> Identities:
    return make_identities(
        [HUB_UNIT, "AL.CTD"],
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=30),
        seed=b"tree-head-tests",
    )


def log(n: int, fork_at: int | None = None) -> MerkleTree:
    entries = [f'{{"event":"accepted","i":{i},"v":1}}'.encode() for i in range(n)]
    if fork_at is not None:
        entries[fork_at] = b'{"event":"erased","v":1}'
    return MerkleTree(InMemoryLeaves.from_entries(entries))


def head_of(tree: MerkleTree, size: int, at_us: int = NOW_US) -> TreeHead:
    return TreeHead(size, root_at(tree, size), at_us)


def signed(head: TreeHead, ids: Identities) -> pb.SignedTreeHead:
    return sign_tree_head(head, ids.keyrings[HUB_UNIT], ids.directory, NOW)


def without(algorithm: KeyAlgorithm, sth: pb.SignedTreeHead) -> pb.SignedTreeHead:
    kept = [s for s in sth.signatures if s.algorithm != algorithm.value]
    return pb.SignedTreeHead(tree_head=sth.tree_head, signatures=kept)


# --------------------------------------------------------------------------- signing


def test_signed_tree_head_carries_both_signatures_and_verifies(ids: Identities) -> None:
    head = head_of(log(10), 10)
    sth = signed(head, ids)
    assert [s.algorithm for s in sth.signatures] == ["ed25519", "ml-dsa-65"]
    assert verify_tree_head(sth, ids.directory, NOW) == head


def test_tree_head_bytes_are_canonical(ids: Identities) -> None:
    head = head_of(log(3), 3)
    assert TreeHead.decode(head.encode()) == head
    assert head.encode() == pb.TreeHead(
        size=3, root_hash=head.root_hash, hub_time_us=NOW_US
    ).SerializeToString(deterministic=True)
    with pytest.raises(MalformedEnvelope, match="canonical"):
        TreeHead.decode(head.encode() + b"\x20\x05")  # an unknown field 4 appended
    with pytest.raises(MalformedEnvelope):
        TreeHead.decode(b"\xff\xff")


def test_impossible_tree_heads_cannot_be_made() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TreeHead(1, b"short", NOW_US)
    with pytest.raises(ValueError, match="empty log"):
        TreeHead(0, leaf_hash(b""), NOW_US)
    with pytest.raises(ValueError, match="size"):
        TreeHead(-1, EMPTY_ROOT, NOW_US)
    assert TreeHead(0, EMPTY_ROOT, NOW_US).size == 0


def test_stripped_ml_dsa_signature_is_refused(ids: Identities) -> None:
    """A quantum-capable forger could fake Ed25519 alone: dropping ML-DSA must not pass."""
    sth = without(KeyAlgorithm.ML_DSA_65, signed(head_of(log(5), 5), ids))
    with pytest.raises(BadSignature, match="lacks the hub's ml-dsa-65 signature"):
        verify_tree_head(sth, ids.directory, NOW)


def test_stripped_ed25519_signature_is_refused(ids: Identities) -> None:
    sth = without(KeyAlgorithm.ED25519, signed(head_of(log(5), 5), ids))
    with pytest.raises(BadSignature, match="lacks the hub's ed25519 signature"):
        verify_tree_head(sth, ids.directory, NOW)


def test_unsigned_tree_head_is_refused(ids: Identities) -> None:
    sth = pb.SignedTreeHead(tree_head=head_of(log(5), 5).encode())
    with pytest.raises(BadSignature, match="no hub signature"):
        verify_tree_head(sth, ids.directory, NOW)


def test_tampered_tree_head_is_refused(ids: Identities) -> None:
    sth = signed(head_of(log(5), 5), ids)
    bigger = TreeHead(6, root_at(log(6), 6), NOW_US).encode()
    forged = pb.SignedTreeHead(tree_head=bigger, signatures=sth.signatures)
    with pytest.raises(BadSignature, match="does not verify"):
        verify_tree_head(forged, ids.directory, NOW)


def test_head_signed_by_a_unit_is_refused(ids: Identities) -> None:
    """A unit's own keys are certified too, but not as the hub's."""
    forged = sign_tree_head(head_of(log(5), 5), ids.keyrings["AL.CTD"], ids.directory, NOW)
    with pytest.raises(UnknownSigner):
        verify_tree_head(forged, ids.directory, NOW)


def test_mislabelled_algorithm_is_refused(ids: Identities) -> None:
    sth = signed(head_of(log(5), 5), ids)
    sth.signatures[0].algorithm = "ml-dsa-65"
    with pytest.raises(BadSignature, match="names 'ml-dsa-65'"):
        verify_tree_head(sth, ids.directory, NOW)


def test_evidence_signature_is_not_a_tree_head_signature(ids: Identities) -> None:
    """Domain separation: the same bytes signed under another prefix do not verify."""
    head = head_of(log(5), 5)
    sth = signed(head, ids)
    keyring = ids.keyrings[HUB_UNIT]
    for signature in sth.signatures:
        key = keyring.get(signature.key_id)
        signature.value = sign(key, b"exchange/v1/evidence\x00" + head.encode())  # type: ignore[arg-type]
    with pytest.raises(BadSignature):
        verify_tree_head(sth, ids.directory, NOW)
    assert SIGNED_PREFIX == b"exchange/v1/tree-head\x00"


def test_hub_without_ml_dsa_key_signs_with_ed25519_only() -> None:
    classic = make_identities(
        [HUB_UNIT],
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=1),
        suites=[CLASSIC],
    )
    head = head_of(log(4), 4)
    sth = sign_tree_head(head, classic.keyrings[HUB_UNIT], classic.directory, NOW)
    assert [s.algorithm for s in sth.signatures] == ["ed25519"]
    assert verify_tree_head(sth, classic.directory, NOW) == head


def test_expired_hub_key_is_refused(ids: Identities) -> None:
    sth = signed(head_of(log(5), 5), ids)
    with pytest.raises(CertificateExpired):
        verify_tree_head(sth, ids.directory, NOW + timedelta(days=60))


def test_revoked_hub_key_is_refused(ids: Identities) -> None:
    sth = signed(head_of(log(5), 5), ids)
    ed = ids.directory.current(HUB_UNIT, KeyAlgorithm.ED25519, NOW)
    assert ed is not None
    revoked = Directory(
        keys=ids.directory.keys,
        revocations={ed.serial: Revocation(ed.serial, NOW, "key compromise")},
    )
    with pytest.raises(CertificateRevoked):
        verify_tree_head(sth, revoked, NOW)


# --------------------------------------------------------------------------- policy


def test_tree_head_is_due_after_enough_entries_or_time() -> None:
    policy = TreeHeadPolicy(every_entries=500, every_seconds=30)
    assert not policy.due(0, 0)
    assert not policy.due(499, 29.9)
    assert policy.due(500, 0)
    assert policy.due(1, 30)
    # a quiet log still gets a fresh head, so nodes can tell it is not frozen
    assert policy.due(0, 30)


def test_nonsense_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        TreeHeadPolicy(every_entries=0)
    with pytest.raises(ValueError, match="positive"):
        TreeHeadPolicy(every_seconds=0)


# --------------------------------------------------------------------------- misbehaviour


def test_forked_heads_are_misbehaviour(ids: Identities) -> None:
    """Two signed roots for one size: a split view, proven by the heads alone."""
    a = signed(head_of(log(40), 30), ids)
    b = signed(head_of(log(40, fork_at=12), 30, NOW_US + 5), ids)
    found = find_misbehaviour(a, b, ids.directory, NOW, consistency_proof=None)
    assert found is not None
    assert found.kind is MisbehaviourKind.FORKED
    assert found.holds(ids.directory, NOW)
    record = json.loads(json.dumps(found.to_json()))
    assert record["first"]["size"] == record["second"]["size"] == 30
    again = Misbehaviour.from_json(record)
    assert again == found
    assert again.holds(ids.directory, NOW)
    error = MisbehaviourDetected(found)
    assert error.evidence is found
    assert error.code == "LOG-MISBEHAVIOUR"


def test_inconsistent_heads_are_misbehaviour(ids: Identities) -> None:
    honest, forked = log(60), log(60, fork_at=7)
    old = signed(head_of(honest, 20), ids)
    new = signed(head_of(forked, 60, NOW_US + 10), ids)
    served = consistency_proof(forked, 20, 60)
    found = find_misbehaviour(new, old, ids.directory, NOW, consistency_proof=served)
    assert found is not None
    assert found.kind is MisbehaviourKind.INCONSISTENT
    assert found.heads[0].size == 20  # ordered old, new
    assert found.consistency_proof == tuple(served)
    assert Misbehaviour.from_json(json.loads(json.dumps(found.to_json()))).holds(ids.directory, NOW)


def test_rolled_back_head_is_misbehaviour(ids: Identities) -> None:
    tree = log(50)
    earlier = signed(head_of(tree, 50, NOW_US), ids)
    later = signed(head_of(tree, 45, NOW_US + 1_000_000), ids)
    found = find_misbehaviour(earlier, later, ids.directory, NOW, consistency_proof=None)
    assert found is not None
    assert found.kind is MisbehaviourKind.ROLLED_BACK
    assert found.holds(ids.directory, NOW)


def test_consistent_heads_are_not_misbehaviour(ids: Identities) -> None:
    tree = log(60)
    old = signed(head_of(tree, 20), ids)
    new = signed(head_of(tree, 60, NOW_US + 10), ids)
    proof = consistency_proof(tree, 20, 60)
    assert find_misbehaviour(old, new, ids.directory, NOW, consistency_proof=proof) is None
    assert find_misbehaviour(old, new, ids.directory, NOW, consistency_proof=None) is None
    same = signed(head_of(tree, 20, NOW_US + 99), ids)  # a fresh head on an unchanged log
    assert find_misbehaviour(old, same, ids.directory, NOW, consistency_proof=None) is None


def test_heads_the_hub_did_not_sign_accuse_nobody(ids: Identities) -> None:
    """A forged head is refused as such; it never becomes evidence against the hub."""
    honest = signed(head_of(log(40), 30), ids)
    forged = sign_tree_head(
        head_of(log(40, fork_at=3), 30), ids.keyrings["AL.CTD"], ids.directory, NOW
    )
    with pytest.raises(UnknownSigner):
        find_misbehaviour(honest, forged, ids.directory, NOW, consistency_proof=None)
    stripped = without(KeyAlgorithm.ML_DSA_65, signed(head_of(log(40, fork_at=3), 30), ids))
    with pytest.raises(BadSignature):
        find_misbehaviour(honest, stripped, ids.directory, NOW, consistency_proof=None)


def test_doctored_misbehaviour_record_does_not_hold(ids: Identities) -> None:
    tree = log(40)
    a = signed(head_of(tree, 30), ids)
    b = signed(head_of(log(40, fork_at=12), 30, NOW_US + 5), ids)
    found = find_misbehaviour(a, b, ids.directory, NOW, consistency_proof=None)
    assert found is not None
    # the second head swapped for an honest one: no contradiction left
    honest_again = signed(head_of(tree, 30, NOW_US + 5), ids).SerializeToString()
    assert not replace(found, second=honest_again).holds(ids.directory, NOW)
    # a consistent pair relabelled as inconsistent, with a good proof: does not hold
    old, new = signed(head_of(tree, 10), ids), signed(head_of(tree, 40), ids)
    claimed = Misbehaviour(
        MisbehaviourKind.INCONSISTENT,
        old.SerializeToString(),
        new.SerializeToString(),
        tuple(consistency_proof(tree, 10, 40)),
    )
    assert not claimed.holds(ids.directory, NOW)
    # plain fields that disagree with the signed bytes are refused on load
    record = found.to_json()
    record["first"]["size"] = 31
    with pytest.raises(MalformedEnvelope, match="differ"):
        Misbehaviour.from_json(record)
    with pytest.raises(MalformedEnvelope):
        Misbehaviour.from_json({"kind": "forked"})
