"""Signed tree heads of the exchange log, and the evidence when the hub contradicts itself.

A tree head says "the log had ``size`` entries with Merkle root ``root_hash`` at
``hub_time_us``" (roots as :mod:`exchange.core.merkle` computes them). The hub signs
the deterministic protobuf encoding of ``pb.TreeHead``, prefixed with
``b"exchange/v1/tree-head\\x00"`` so the signature can never be taken for one over an
evidence or a header, with every signing key it holds: Ed25519, and ML-DSA-65 when
its directory entry certifies one. Evidences carry only an Ed25519 signature for
speed; the hybrid signature on the tree heads they fall under is what keeps the log
trustworthy against a future quantum adversary.

Nodes keep the heads they have seen. Two heads signed by the hub that cannot both
describe one append-only log are a :class:`Misbehaviour`: self-contained, JSON
serialisable proof that anyone holding the directory can re-check.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from google.protobuf.message import DecodeError

from exchange.core.evidence import HUB_UNIT
from exchange.core.keys import Directory, KeyAlgorithm, Keyring, SigningPrivateKey, SigningPublicKey
from exchange.core.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from exchange.core.suites import sign, verify_signature
from exchange.errors import BadSignature, ExchangeError, MalformedEnvelope
from exchange.wire.v1 import exchange_pb2 as pb

SIGNED_PREFIX = b"exchange/v1/tree-head\x00"
#: the algorithms a hub signs tree heads with, in signature order
TREE_HEAD_ALGORITHMS = (KeyAlgorithm.ED25519, KeyAlgorithm.ML_DSA_65)
_MAX_UINT64 = (1 << 64) - 1
_MIN_INT64, _MAX_INT64 = -(1 << 63), (1 << 63) - 1


@dataclass(frozen=True)
class TreeHead:
    """The log's size and Merkle root at a hub time; valid by construction."""

    size: int
    root_hash: bytes
    hub_time_us: int

    def __post_init__(self) -> None:
        if not 0 <= self.size <= _MAX_UINT64:
            raise ValueError(f"a log size is 0 to 2**64-1, not {self.size}")
        if len(self.root_hash) != HASH_SIZE:
            raise ValueError(f"a root hash has {HASH_SIZE} bytes, not {len(self.root_hash)}")
        if self.size == 0 and self.root_hash != EMPTY_ROOT:
            raise ValueError("the root of the empty log is SHA-256 of nothing")
        if not _MIN_INT64 <= self.hub_time_us <= _MAX_INT64:
            raise ValueError("the hub time does not fit in 64 bits")

    def encode(self) -> bytes:
        """The deterministic ``pb.TreeHead`` bytes the hub signs."""
        return pb.TreeHead(
            size=self.size, root_hash=self.root_hash, hub_time_us=self.hub_time_us
        ).SerializeToString(deterministic=True)

    @classmethod
    def decode(cls, data: bytes) -> TreeHead:
        """Parse tree head bytes; refuses any but the one canonical encoding."""
        message = pb.TreeHead()
        try:
            message.ParseFromString(data)
            head = cls(message.size, message.root_hash, message.hub_time_us)
        except (DecodeError, ValueError) as error:
            raise MalformedEnvelope(f"not a tree head: {error}") from None
        if head.encode() != data:
            raise MalformedEnvelope("the tree head is not in canonical form")
        return head

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root_hash": self.root_hash.hex(),
            "hub_time_us": self.hub_time_us,
        }


def sign_tree_head(
    head: TreeHead, keyring: Keyring, directory: Directory, now: datetime
) -> pb.SignedTreeHead:
    """Sign ``head`` with each of the hub's current signing keys (Ed25519 required).

    A key the directory certifies but whose private half this keyring lacks is an
    error, not a skipped signature: verifiers would refuse the head anyway.
    """
    data = head.encode()
    signatures = []
    for algorithm in TREE_HEAD_ALGORITHMS:
        cert = directory.current(keyring.unit, algorithm, now)
        if cert is None and algorithm is not KeyAlgorithm.ED25519:
            continue
        # raises UnknownSigner when the key is not certified or not held here
        key: SigningPrivateKey = keyring.newest(algorithm, directory, now)  # type: ignore[assignment]
        assert cert is not None
        signatures.append(
            pb.Signature(
                algorithm=algorithm.value,
                key_id=cert.key_id,
                value=sign(key, SIGNED_PREFIX + data),
            )
        )
    return pb.SignedTreeHead(tree_head=data, signatures=signatures)


def verify_tree_head(signed: pb.SignedTreeHead, directory: Directory, now: datetime) -> TreeHead:
    """Check the hub's signatures on a tree head and return the head.

    Every signature present must verify under a valid, unrevoked hub key of the
    algorithm it names; the Ed25519 one must be there, and the ML-DSA-65 one too when
    the directory certifies an ML-DSA-65 key for the hub at ``now`` (so stripping the
    post-quantum half is refused, not tolerated). Raises :class:`BadSignature`, the
    directory's errors for unknown, revoked or expired keys, or
    :class:`MalformedEnvelope` when the head does not parse.
    """
    if not signed.signatures:
        raise BadSignature("the tree head carries no hub signature")
    message = SIGNED_PREFIX + signed.tree_head
    verified: set[KeyAlgorithm] = set()
    for signature in signed.signatures:
        cert = directory.key(HUB_UNIT, signature.key_id, now)
        if not cert.algorithm.is_signing or signature.algorithm != cert.algorithm.value:
            raise BadSignature(
                f"the tree head signature names {signature.algorithm!r} for the hub's "
                f"{cert.algorithm.value} key {cert.key_id}"
            )
        public: SigningPublicKey = cert.public_key  # type: ignore[assignment]
        if not verify_signature(public, signature.value, message):
            raise BadSignature(
                f"the hub's {cert.algorithm.value} signature on the tree head does not verify"
            )
        verified.add(cert.algorithm)
    required = {KeyAlgorithm.ED25519}
    if directory.current(HUB_UNIT, KeyAlgorithm.ML_DSA_65, now) is not None:
        required.add(KeyAlgorithm.ML_DSA_65)
    missing = sorted(required - verified)
    if missing:
        names = " and ".join(a.value for a in missing)
        raise BadSignature(f"the tree head lacks the hub's {names} signature")
    return TreeHead.decode(signed.tree_head)


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class TreeHeadPolicy:
    """When the hub signs a new tree head: after ``every_entries`` new entries, and at
    least every ``every_seconds`` seconds.

    The timer applies even when no entry was added: a fresh hub time on an unchanged
    root tells nodes the log is not frozen (a node refusing heads older than a few
    periods cannot be kept on a stale view).
    """

    every_entries: int = 1000
    every_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.every_entries < 1:
            raise ValueError("a tree head is due after at least one entry")
        if not self.every_seconds > 0:
            raise ValueError("the tree head period must be positive")

    def due(self, entries_since: int, seconds_since: float) -> bool:
        """Whether to sign a new head, ``entries_since`` / ``seconds_since`` the last one."""
        return entries_since >= self.every_entries or seconds_since >= self.every_seconds


# --------------------------------------------------------------------------- misbehaviour


class MisbehaviourKind(StrEnum):
    #: two heads of the same size with different roots: a split view
    FORKED = "forked"
    #: the head signed later has fewer entries than one signed earlier: a truncation
    ROLLED_BACK = "rolled_back"
    #: the consistency proof the hub served between the two sizes does not verify
    INCONSISTENT = "inconsistent"


@dataclass(frozen=True)
class Misbehaviour:
    """Two signed heads that cannot both be true of one append-only log.

    ``FORKED`` and ``ROLLED_BACK`` convince anyone holding the directory on their own.
    ``INCONSISTENT`` records the consistency proof the hub served: anyone can check
    that it fails, and ask the hub for another; an honest hub always has one.
    """

    kind: MisbehaviourKind
    first: bytes  # a serialised pb.SignedTreeHead
    second: bytes
    consistency_proof: tuple[bytes, ...] = ()

    @property
    def heads(self) -> tuple[TreeHead, TreeHead]:
        return _signed_head(self.first), _signed_head(self.second)

    def holds(self, directory: Directory, now: datetime) -> bool:
        """Re-check the evidence: both heads signed by the hub, and the contradiction real."""
        try:
            found = find_misbehaviour(
                _parse_signed(self.first),
                _parse_signed(self.second),
                directory,
                now,
                consistency_proof=self.consistency_proof,
            )
        except ExchangeError:
            return False
        return found is not None and found.kind is self.kind

    def to_json(self) -> dict[str, Any]:
        first, second = self.heads
        return {
            "kind": self.kind.value,
            "first": {"signed": base64.b64encode(self.first).decode(), **first.to_json()},
            "second": {"signed": base64.b64encode(self.second).decode(), **second.to_json()},
            "consistency_proof": [h.hex() for h in self.consistency_proof],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Misbehaviour:
        """Parse :meth:`to_json`; the plain head fields must agree with the signed bytes."""
        try:
            found = cls(
                kind=MisbehaviourKind(data["kind"]),
                first=base64.b64decode(data["first"]["signed"], validate=True),
                second=base64.b64decode(data["second"]["signed"], validate=True),
                consistency_proof=tuple(bytes.fromhex(h) for h in data["consistency_proof"]),
            )
            first, second = found.heads
            agree = all(
                data[name][field] == value
                for name, head in (("first", first), ("second", second))
                for field, value in head.to_json().items()
            )
        except (KeyError, TypeError, ValueError) as error:
            raise MalformedEnvelope(f"not a misbehaviour record: {error}") from None
        if not agree:
            raise MalformedEnvelope("the misbehaviour record's heads differ from its signed bytes")
        return found


class MisbehaviourDetected(ExchangeError):
    """The hub signed heads that contradict each other; ``evidence`` holds the proof."""

    exit_code = 3
    code = "LOG-MISBEHAVIOUR"

    def __init__(self, evidence: Misbehaviour) -> None:
        super().__init__(f"the hub's tree heads contradict each other: {evidence.kind.value}")
        self.evidence = evidence


def _parse_signed(data: bytes) -> pb.SignedTreeHead:
    signed = pb.SignedTreeHead()
    try:
        signed.ParseFromString(data)
    except DecodeError:
        raise MalformedEnvelope("not a signed tree head") from None
    return signed


def _signed_head(data: bytes) -> TreeHead:
    return TreeHead.decode(_parse_signed(data).tree_head)


def find_misbehaviour(
    first: pb.SignedTreeHead,
    second: pb.SignedTreeHead,
    directory: Directory,
    now: datetime,
    *,
    consistency_proof: Sequence[bytes] | None,
) -> Misbehaviour | None:
    """The contradiction between two signed heads, or None when they may both be true.

    Both heads must carry valid hub signatures (else this raises, as for
    :func:`verify_tree_head`: an unsigned claim proves nothing about the hub).
    ``consistency_proof`` is the hub's proof from the smaller to the larger size; with
    None, heads of different sizes are only checked for a roll-back.
    """
    head_a = verify_tree_head(first, directory, now)
    head_b = verify_tree_head(second, directory, now)
    raw_a = first.SerializeToString(deterministic=True)
    raw_b = second.SerializeToString(deterministic=True)
    if head_a.size == head_b.size:
        if head_a.root_hash != head_b.root_hash:
            return Misbehaviour(MisbehaviourKind.FORKED, raw_a, raw_b)
        return None
    (old, raw_old), (new, raw_new) = sorted(
        ((head_a, raw_a), (head_b, raw_b)), key=lambda pair: pair[0].size
    )
    if new.hub_time_us < old.hub_time_us:
        return Misbehaviour(MisbehaviourKind.ROLLED_BACK, raw_old, raw_new)
    if consistency_proof is None:
        return None
    if verify_consistency(old.size, new.size, old.root_hash, new.root_hash, consistency_proof):
        return None
    return Misbehaviour(
        MisbehaviourKind.INCONSISTENT, raw_old, raw_new, tuple(bytes(h) for h in consistency_proof)
    )
