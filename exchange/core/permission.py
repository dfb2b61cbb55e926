"""Permissions a provider signs: e.g. to let a recipient forward H2 content onward.

A permission names the message, the provider, the unit allowed (grantee), the units
it may pass the content to and the purpose; it is signed with the provider's keys of
the message's suite, over ``b"exchange/v1/permission\\x00" || bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.message import DecodeError

from exchange.core.keys import Directory, Keyring, SigningPublicKey
from exchange.core.suites import Suite, sign, suite_by_id, verify_signature
from exchange.errors import BadSignature, MalformedEnvelope
from exchange.wire.v1 import exchange_pb2 as pb

SIGNED_PREFIX = b"exchange/v1/permission\x00"


@dataclass(frozen=True)
class Permission:
    message_id: str
    provider: str
    grantee: str
    recipients: tuple[str, ...]
    purpose: str
    granted_at_us: int

    def allows(self, message_id: str, grantee: str, recipients: Sequence[str]) -> bool:
        return (
            self.message_id == message_id
            and self.grantee == grantee
            and set(recipients) <= set(self.recipients)
        )


def sign_permission(
    *,
    message_id: str,
    grantee: str,
    recipients: Sequence[str],
    purpose: str,
    keyring: Keyring,
    directory: Directory,
    suite: Suite,
    now: datetime,
) -> bytes:
    """A serialized ``SignedPermission`` from ``keyring.unit`` (the provider)."""
    body = pb.Permission(
        message_id=message_id,
        provider=keyring.unit,
        grantee=grantee,
        recipients=list(recipients),
        purpose=purpose,
        granted_at_us=int(now.timestamp() * 1_000_000),
    ).SerializeToString(deterministic=True)
    signatures = []
    for algorithm in suite.signature_algorithms:
        key = keyring.newest(algorithm, directory, now, suite.id)
        cert = directory.current(keyring.unit, algorithm, now, suite.id)
        assert cert is not None
        signatures.append(
            pb.Signature(
                algorithm=algorithm.value,
                key_id=cert.key_id,
                value=sign(key, SIGNED_PREFIX + body),  # type: ignore[arg-type]
            )
        )
    return pb.SignedPermission(permission=body, signatures=signatures).SerializeToString(
        deterministic=True
    )


def verify_permission(
    data: bytes, *, provider: str, suite_id: str, directory: Directory, now: datetime
) -> Permission:
    """Check a signed permission from ``provider``; every signature of the suite must hold."""
    signed = pb.SignedPermission()
    permission = pb.Permission()
    try:
        signed.ParseFromString(data)
        permission.ParseFromString(signed.permission)
    except DecodeError:
        raise MalformedEnvelope("the permission does not parse") from None
    suite = suite_by_id(suite_id)
    required = sorted(a.value for a in suite.signature_algorithms)
    if sorted(s.algorithm for s in signed.signatures) != required:
        raise BadSignature(f"the permission must be signed with {' + '.join(required)}")
    for signature in signed.signatures:
        cert = directory.key(provider, signature.key_id, now)
        public: SigningPublicKey = cert.public_key  # type: ignore[assignment]
        if not verify_signature(public, signature.value, SIGNED_PREFIX + signed.permission):
            raise BadSignature(f"the permission is not signed by {provider}")
    if permission.provider != provider:
        raise BadSignature(f"the permission names {permission.provider}, not {provider}")
    return Permission(
        message_id=permission.message_id,
        provider=permission.provider,
        grantee=permission.grantee,
        recipients=tuple(permission.recipients),
        purpose=permission.purpose,
        granted_at_us=permission.granted_at_us,
    )
