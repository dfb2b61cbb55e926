"""What a node checks in the hub's answers: evidences and the signed directory.

An evidence is kept only once the hub's signature verifies against the directory
(the node's own copy, built from the PKI folder) and it speaks about the message the
node asked about: the same message id and the digest of the very envelope bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from datetime import datetime

from google.protobuf.message import DecodeError

from exchange.core.evidence import (
    DIRECTORY_PREFIX,
    EvidenceKind,
    EvidenceView,
    verify_evidence,
    verify_hub_signatures,
)
from exchange.core.keys import Directory
from exchange.errors import EnvelopeError, MalformedEnvelope
from exchange.wire.v1 import exchange_pb2 as pb

__all__ = ["EvidenceMismatch", "check_evidence", "relayed_units", "verify_signed_directory"]


class EvidenceMismatch(EnvelopeError):
    """A hub-signed evidence that speaks about another message or event than asked."""

    code = "NODE-EVIDENCE-MISMATCH"


def check_evidence(
    evidence: pb.Evidence,
    directory: Directory,
    now: datetime,
    *,
    message_id: str,
    envelope: bytes,
    kinds: Collection[EvidenceKind],
) -> EvidenceView:
    """Verify the hub's signature and that the evidence is about ``envelope``."""
    view = verify_evidence(evidence, directory, now)
    if view.message_id != message_id:
        raise EvidenceMismatch(
            f"the hub's evidence names message {view.message_id}, not {message_id}"
        )
    if view.envelope_digest != hashlib.sha256(envelope).digest():
        raise EvidenceMismatch(
            f"the hub's evidence for {message_id} names another envelope (digest differs)"
        )
    if view.kind not in kinds:
        wanted = ", ".join(sorted(k.value for k in kinds))
        raise EvidenceMismatch(
            f"the hub's evidence for {message_id} states {view.kind.value}, expected {wanted}"
        )
    return view


def verify_signed_directory(
    signed: pb.SignedDirectory, directory: Directory, now: datetime
) -> pb.Directory:
    """The hub's directory, once its signature verifies under the hub's certified key.

    The hub signs its directory like its evidences (Ed25519), under its own prefix.
    """
    verify_hub_signatures(
        signed.signatures, DIRECTORY_PREFIX + signed.directory, directory, now, "directory"
    )
    parsed = pb.Directory()
    try:
        parsed.ParseFromString(signed.directory)
    except DecodeError:
        raise MalformedEnvelope("the hub's directory does not parse") from None
    return parsed


def relayed_units(directory: pb.Directory, relay: str) -> list[str]:
    """The units whose messages ``relay`` carries, per the hub's directory."""
    return sorted(u.id for u in directory.units if u.relay == relay)
