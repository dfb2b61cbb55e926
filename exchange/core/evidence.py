"""Evidences: what the hub states about a message, signed by the hub.

Submission accepted or refused, delivered, read, forwarded, erased. Each names the
message, the unit concerned, the hub time, the digest of the envelope and the index
of the log entry that records the same event, so a sender can prove what happened
to its message and a node can check that the event is in the log.

The hub signs evidences with its Ed25519 key (one signature per evidence keeps the
accept path fast); the log's signed tree heads, which every evidence's log index
falls under, carry the hybrid signature for the long term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from google.protobuf.message import DecodeError

from exchange.core.keys import Directory, KeyAlgorithm, Keyring, SigningPublicKey
from exchange.core.policy import Violation
from exchange.core.suites import sign, verify_signature
from exchange.errors import BadSignature, MalformedEnvelope
from exchange.wire.v1 import exchange_pb2 as pb

HUB_UNIT = "HUB"
SIGNED_PREFIX = b"exchange/v1/evidence\x00"
#: what the hub's signature on its directory covers: this prefix, then the directory bytes
DIRECTORY_PREFIX = b"exchange/v1/directory\x00"


class EvidenceKind(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    DELIVERED = "delivered"
    READ = "read"
    FORWARDED = "forwarded"
    ERASED = "erased"
    PERMISSION_ASKED = "permission_asked"
    PERMISSION_GRANTED = "permission_granted"
    PERMISSION_DENIED = "permission_denied"

    @property
    def wire(self) -> int:
        return int(pb.EvidenceKind.Value(f"EVIDENCE_KIND_{self.name}"))

    @classmethod
    def from_wire(cls, number: int) -> EvidenceKind:
        return cls[pb.EvidenceKind.Name(number).removeprefix("EVIDENCE_KIND_")]  # type: ignore[arg-type]


@dataclass(frozen=True)
class EvidenceView:
    """A verified evidence, as plain data."""

    kind: EvidenceKind
    message_id: str
    unit: str
    hub_time_us: int
    envelope_digest: bytes
    violations: tuple[Violation, ...]
    log_index: int
    policy_hash: str
    log_leaf_hash: bytes
    raw: bytes

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "message_id": self.message_id,
            "unit": self.unit,
            "hub_time_us": self.hub_time_us,
            "envelope_digest": self.envelope_digest.hex(),
            "violations": [v.to_json() for v in self.violations],
            "log_index": self.log_index,
            "log_leaf_hash": self.log_leaf_hash.hex(),
            "policy_hash": self.policy_hash,
        }


def make_statement(
    kind: EvidenceKind,
    *,
    message_id: str,
    unit: str,
    hub_time_us: int,
    envelope_digest: bytes,
    log_index: int,
    policy_hash: str,
    log_leaf_hash: bytes = b"",
    violations: Sequence[Violation] = (),
) -> bytes:
    """The statement bytes the hub signs."""
    return pb.EvidenceStatement(
        kind=kind.wire,  # type: ignore[arg-type]
        message_id=message_id,
        unit=unit,
        hub_time_us=hub_time_us,
        envelope_digest=envelope_digest,
        violations=[
            pb.Violation(rule=v.rule, recipient=v.recipient, reason=v.reason) for v in violations
        ],
        log_index=log_index,
        policy_hash=policy_hash,
        log_leaf_hash=log_leaf_hash,
    ).SerializeToString(deterministic=True)


@dataclass(frozen=True)
class EvidenceSigner:
    """Signs statements with the hub's current Ed25519 key."""

    keyring: Keyring
    directory: Directory

    def sign(self, statement: bytes, now: datetime, prefix: bytes = SIGNED_PREFIX) -> pb.Evidence:
        """Sign ``prefix || statement``; the prefix keeps each kind of signed thing apart."""
        key = self.keyring.newest(KeyAlgorithm.ED25519, self.directory, now)
        cert = self.directory.current(self.keyring.unit, KeyAlgorithm.ED25519, now)
        assert cert is not None
        return pb.Evidence(
            statement=statement,
            signatures=[
                pb.Signature(
                    algorithm=KeyAlgorithm.ED25519.value,
                    key_id=cert.key_id,
                    value=sign(key, prefix + statement),  # type: ignore[arg-type]
                )
            ],
        )


def verify_hub_signatures(
    signatures: Sequence[pb.Signature],
    signed: bytes,
    directory: Directory,
    now: datetime,
    what: str,
) -> None:
    """Every signature over ``signed`` (prefix included) holds under a valid hub key."""
    if not signatures:
        raise BadSignature(f"the {what} carries no hub signature")
    for signature in signatures:
        cert = directory.key(HUB_UNIT, signature.key_id, now)
        public: SigningPublicKey = cert.public_key  # type: ignore[assignment]
        if not verify_signature(public, signature.value, signed):
            raise BadSignature(f"the hub's signature on the {what} does not verify")


def verify_evidence(evidence: pb.Evidence, directory: Directory, now: datetime) -> EvidenceView:
    """Check the hub's signature on an evidence and return what it states."""
    verify_hub_signatures(
        evidence.signatures, SIGNED_PREFIX + evidence.statement, directory, now, "evidence"
    )
    statement = pb.EvidenceStatement()
    try:
        statement.ParseFromString(evidence.statement)
    except DecodeError:
        raise MalformedEnvelope("the evidence statement does not parse") from None
    return EvidenceView(
        kind=EvidenceKind.from_wire(statement.kind),
        message_id=statement.message_id,
        unit=statement.unit,
        hub_time_us=statement.hub_time_us,
        envelope_digest=statement.envelope_digest,
        violations=tuple(
            Violation(v.rule, statement.message_id, v.recipient, v.reason)
            for v in statement.violations
        ),
        log_index=statement.log_index,
        policy_hash=statement.policy_hash,
        log_leaf_hash=statement.log_leaf_hash,
        raw=evidence.SerializeToString(deterministic=True),
    )
