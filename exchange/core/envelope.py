"""The sealed envelope: seal, verify, open. Pure functions over plain data.

Format (``SealedEnvelope`` in proto/exchange/v1/exchange.proto, format 1):

* ``header``: the ``Header`` message serialised deterministically (fields in number
  order, packed repeated fields, no unknown fields). These exact bytes are signed and
  carried; a verifier checks the signature over the bytes it received, then parses
  them, and refuses bytes that do not re-serialise identically (so there is one
  encoding of a header, and nothing is ever re-serialised before verification).
* ``signatures``: one per algorithm of the suite named in the header, each over
  ``b"exchange/v1/header\\x00" || header`` (ML-DSA-65 with context ``exchange/v1``).
  The hybrid suite's composite signature holds only when both halves verify.
* ``body_ciphertext``: ``nonce (12) || AES-256-GCM(content key, SaltedBody)`` with
  associated data ``b"exchange/v1/body\\x00" || suite || 0x00 || message id``.
  The content key is fresh for every envelope.
* ``key_wraps``: the content key wrapped for each recipient with HPKE base mode,
  ``info = b"exchange/v1/key-wrap\\x00" || suite || 0x00 || message id || 0x00 ||
  recipient || 0x00 || key id``, binding each wrap to its message and recipient.
* Digests in the signed header: ``body_digest = SHA-256(b"exchange/v1/body\\x00" ||
  salt || body)`` (salted so the hub cannot confirm a guessed body),
  ``ciphertext_digest = SHA-256(body_ciphertext)`` and ``key_wraps_digest`` =
  SHA-256 over each wrap's length-prefixed recipient, key id and sealed key, in order.

The hub verifies without the body key; a recipient opens with its private key.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError

from exchange.core.body import Body, check_body_against_header
from exchange.core.codec import body_from_wire, body_to_wire, header_from_wire, header_to_wire
from exchange.core.header import Header
from exchange.core.keys import Directory, KeyAlgorithm, Keyring, PrivateKey, SigningPublicKey
from exchange.core.suites import (
    Suite,
    sign,
    strongest_common_suite,
    suite_by_id,
    verify_signature,
)
from exchange.errors import (
    BadSignature,
    DecryptionFailed,
    DigestMismatch,
    ForwardWeakened,
    HeaderBodyMismatch,
    MalformedEnvelope,
    NotARecipient,
    SuiteError,
    SuiteTooWeak,
)
from exchange.wire.v1 import exchange_pb2 as pb

FORMAT = 1
SIGNED_PREFIX = b"exchange/v1/header\x00"
BODY_AAD_PREFIX = b"exchange/v1/body\x00"
WRAP_INFO_PREFIX = b"exchange/v1/key-wrap\x00"
BODY_DIGEST_PREFIX = b"exchange/v1/body\x00"
NONCE_BYTES = 12
SALT_BYTES = 32
#: an envelope larger than this is refused before parsing (50 MB body plus overhead)
MAX_ENVELOPE_BYTES = 64 * 1024 * 1024


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def key_wraps_digest(wraps: Iterable[pb.KeyWrap]) -> bytes:
    """SHA-256 over every wrap's recipient, key id and sealed key, each length-prefixed

    (so the concatenation cannot be re-split differently)."""
    parts = []
    for wrap in wraps:
        recipient, key_id = wrap.recipient.encode(), wrap.key_id.encode()
        parts.append(struct.pack(">I", len(recipient)) + recipient)
        parts.append(struct.pack(">I", len(key_id)) + key_id)
        parts.append(struct.pack(">I", len(wrap.sealed_key)) + wrap.sealed_key)
    return hashlib.sha256(b"".join(parts)).digest()


def body_digest(salt: bytes, body_bytes: bytes) -> bytes:
    """The salted commitment to the plaintext body that the header carries."""
    return _sha256(BODY_DIGEST_PREFIX + salt + body_bytes)


def _wrap_info(suite: str, message_id: str, recipient: str, key_id: str) -> bytes:
    return WRAP_INFO_PREFIX + b"\x00".join(
        (suite.encode(), message_id.encode(), recipient.encode(), key_id.encode())
    )


def _body_aad(suite: str, message_id: str) -> bytes:
    return BODY_AAD_PREFIX + suite.encode() + b"\x00" + message_id.encode()


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def from_micros(micros: int) -> datetime:
    """A UTC datetime from microseconds since the epoch."""
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC)


# --------------------------------------------------------------------------- envelope


@dataclass(frozen=True, eq=False)
class SealedEnvelope:
    """A structurally valid envelope: parsed, canonical, but not yet verified.

    Build one with :meth:`from_bytes` (refuses anything malformed) or :func:`seal`.
    ``raw`` is the exact serialised envelope; ``wire_header`` the parsed signed header.
    """

    raw: bytes
    wire: pb.SealedEnvelope
    wire_header: pb.Header

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedEnvelope:
        """Parse an envelope; :class:`MalformedEnvelope` for anything that is not one."""
        if len(data) > MAX_ENVELOPE_BYTES:
            raise MalformedEnvelope(
                f"envelope is {len(data)} bytes; the limit is {MAX_ENVELOPE_BYTES}"
            )
        wire = pb.SealedEnvelope()
        try:
            wire.ParseFromString(data)
        except DecodeError:
            raise MalformedEnvelope("not an envelope: the bytes do not parse") from None
        if wire.format != FORMAT:
            raise MalformedEnvelope(
                f"not an envelope of format {FORMAT} (format field is {wire.format})"
            )
        header = pb.Header()
        try:
            header.ParseFromString(wire.header)
        except DecodeError:
            raise MalformedEnvelope("the signed header does not parse") from None
        if header.SerializeToString(deterministic=True) != wire.header:
            raise MalformedEnvelope("the signed header is not in canonical form")
        if not header.id or not header.sender or not header.suite:
            raise MalformedEnvelope("the header lacks a message id, a sender or a suite")
        if len(wire.body_ciphertext) < NONCE_BYTES + 16:
            raise MalformedEnvelope("the body ciphertext is truncated")
        return cls(raw=data, wire=wire, wire_header=header)

    @property
    def message_id(self) -> str:
        return self.wire_header.id

    @property
    def sender(self) -> str:
        return self.wire_header.sender

    @property
    def suite_id(self) -> str:
        return self.wire_header.suite

    @property
    def recipients(self) -> tuple[str, ...]:
        seen: dict[str, None] = dict.fromkeys((*self.wire_header.to, *self.wire_header.cc))
        return tuple(seen)

    @property
    def is_forward(self) -> bool:
        return bool(self.wire.forwarding.provider_header)

    @cached_property
    def provider_header(self) -> pb.Header:
        """The provider's signed header (this envelope's own header unless it is a forward)."""
        if not self.is_forward:
            return self.wire_header
        header = pb.Header()
        try:
            header.ParseFromString(self.wire.forwarding.provider_header)
        except DecodeError:
            raise MalformedEnvelope("the provider's header in the forward does not parse") from None
        if header.SerializeToString(deterministic=True) != self.wire.forwarding.provider_header:
            raise MalformedEnvelope("the provider's header is not in canonical form")
        return header

    @property
    def provider(self) -> str:
        return self.provider_header.sender

    @property
    def sent_at(self) -> datetime:
        return from_micros(self.wire_header.sent_at_us)

    @cached_property
    def header(self) -> Header:
        """The domain header (converted lazily: the hub's verify path does not need it)."""
        return header_from_wire(self.wire_header)

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the serialised envelope (what evidences name)."""
        return _sha256(self.raw)

    def header_json(self) -> dict[str, object]:
        """The outer header as JSON: the contract fields plus suite, time and digests."""
        out: dict[str, object] = dict(self.header.to_json())
        out["suite"] = self.suite_id
        out["sent_at"] = self.sent_at.isoformat()
        out["body_digest"] = self.wire_header.body_digest.hex()
        out["ciphertext_digest"] = self.wire_header.ciphertext_digest.hex()
        out["key_wraps_digest"] = self.wire_header.key_wraps_digest.hex()
        out["signatures"] = [
            {"algorithm": s.algorithm, "key_id": s.key_id} for s in self.wire.signatures
        ]
        out["key_wraps"] = [
            {"recipient": w.recipient, "key_id": w.key_id, "bytes": len(w.sealed_key)}
            for w in self.wire.key_wraps
        ]
        return out


@dataclass(frozen=True)
class OpenedMessage:
    """What a recipient reads: the verified header and the body it declared."""

    header: Header
    body: Body
    envelope: SealedEnvelope
    #: the encrypted plaintext (salt and body bytes), kept so a forward can re-encrypt
    #: exactly what the provider committed to
    salted_body: bytes
    #: who provided the content (the sender, or the original provider of a forward)
    provider: str


# --------------------------------------------------------------------------- seal


def seal(
    header: Header,
    body: Body,
    *,
    keyring: Keyring,
    directory: Directory,
    now: datetime,
    suite: Suite | None = None,
) -> SealedEnvelope:
    """Encrypt ``body`` for the header's recipients and sign the header as ``keyring.unit``.

    Without ``suite``, the strongest suite that the sender and every recipient support
    is used. A recipient lacking keys for the chosen suite is a :class:`SuiteError`.
    """
    if header.sender != keyring.unit:
        raise BadSignature(f"{keyring.unit} cannot sign a header whose sender is {header.sender}")
    recipients = list(header.recipients)
    chosen = suite or strongest_common_suite(directory, [header.sender, *recipients], now)
    suite_id = chosen.id

    body_bytes = body_to_wire(body).SerializeToString(deterministic=True)
    salt = os.urandom(SALT_BYTES)
    salted = pb.SaltedBody(salt=salt, body=body_bytes).SerializeToString(deterministic=True)
    content_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = nonce + AESGCM(content_key).encrypt(nonce, salted, _body_aad(suite_id, header.id))

    wraps = _wrap_for(recipients, chosen, content_key, header.id, directory, now)

    wire_header = header_to_wire(header)
    wire_header.sent_at_us = _micros(now)
    wire_header.suite = suite_id
    wire_header.body_digest = body_digest(salt, body_bytes)
    wire_header.ciphertext_digest = _sha256(ciphertext)
    wire_header.key_wraps_digest = key_wraps_digest(wraps)
    header_bytes = wire_header.SerializeToString(deterministic=True)
    signatures = _sign_header(header_bytes, chosen, keyring, directory, now)

    envelope = pb.SealedEnvelope(
        format=FORMAT,
        header=header_bytes,
        signatures=signatures,
        key_wraps=wraps,
        body_ciphertext=ciphertext,
    )
    raw = envelope.SerializeToString(deterministic=True)
    return SealedEnvelope(raw=raw, wire=envelope, wire_header=wire_header)


def seal_forward(
    original: OpenedMessage,
    *,
    message_id: str,
    to: Sequence[str],
    cc: Sequence[str] = (),
    keyring: Keyring,
    directory: Directory,
    now: datetime,
    suite: Suite | None = None,
    permission: bytes = b"",
) -> SealedEnvelope:
    """Forward opened content to new recipients, keeping the provider's signed header.

    The forwarder re-encrypts exactly the salted plaintext the provider committed to,
    so the new recipients can check the provider's digest and signature; the forward's
    own header copies the provider's handling codes, classification and declaration.
    """
    source = original.envelope
    provider_bytes = (
        source.wire.forwarding.provider_header if source.is_forward else source.wire.header
    )
    provider_signatures = (
        list(source.wire.forwarding.provider_signatures)
        if source.is_forward
        else list(source.wire.signatures)
    )
    provider = source.provider_header
    recipients = list(dict.fromkeys((*to, *cc)))
    chosen = suite or strongest_common_suite(directory, [keyring.unit, *recipients], now)
    content_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = nonce + AESGCM(content_key).encrypt(
        nonce, original.salted_body, _body_aad(chosen.id, message_id)
    )
    wraps = _wrap_for(recipients, chosen, content_key, message_id, directory, now)
    wire_header = pb.Header()
    wire_header.CopyFrom(provider)
    wire_header.id = message_id
    wire_header.sender = keyring.unit
    wire_header.in_reply_to = ""
    del wire_header.to[:]
    wire_header.to.extend(to)
    del wire_header.cc[:]
    wire_header.cc.extend(cc)
    wire_header.sent_at_us = _micros(now)
    wire_header.suite = chosen.id
    wire_header.ciphertext_digest = _sha256(ciphertext)
    wire_header.key_wraps_digest = key_wraps_digest(wraps)
    header_bytes = wire_header.SerializeToString(deterministic=True)
    envelope = pb.SealedEnvelope(
        format=FORMAT,
        header=header_bytes,
        signatures=_sign_header(header_bytes, chosen, keyring, directory, now),
        key_wraps=wraps,
        body_ciphertext=ciphertext,
        forwarding=pb.Forwarding(
            provider_header=provider_bytes,
            provider_signatures=provider_signatures,
            permission=permission,
        ),
    )
    return SealedEnvelope(
        raw=envelope.SerializeToString(deterministic=True), wire=envelope, wire_header=wire_header
    )


def _wrap_for(
    recipients: Sequence[str],
    suite: Suite,
    content_key: bytes,
    message_id: str,
    directory: Directory,
    now: datetime,
) -> list[pb.KeyWrap]:
    wraps = []
    for recipient in recipients:
        keys = suite.recipient_keys(directory, recipient, now)
        if keys is None:
            raise SuiteTooWeak(
                f"{recipient} has no valid certified keys for suite {suite.id}; "
                f"it cannot receive this message"
            )
        wrap_key_id = suite.wrap_key_id(keys)
        wraps.append(
            pb.KeyWrap(
                recipient=recipient,
                key_id=wrap_key_id,
                sealed_key=suite.wrap(
                    content_key, keys, _wrap_info(suite.id, message_id, recipient, wrap_key_id)
                ),
            )
        )
    return wraps


def _sign_header(
    header_bytes: bytes, suite: Suite, keyring: Keyring, directory: Directory, now: datetime
) -> list[pb.Signature]:
    signatures = []
    message = SIGNED_PREFIX + header_bytes
    for algorithm in suite.signature_algorithms:
        key = keyring.newest(algorithm, directory, now, suite.id)
        cert = directory.current(keyring.unit, algorithm, now, suite.id)
        assert cert is not None  # newest() found it
        signatures.append(
            pb.Signature(
                algorithm=algorithm.value,
                key_id=cert.key_id,
                value=sign(key, message),  # type: ignore[arg-type]
            )
        )
    return signatures


# --------------------------------------------------------------------------- verify


def verify(
    envelope: SealedEnvelope,
    directory: Directory,
    now: datetime,
    *,
    minimum_suite: Suite | None = None,
) -> Suite:
    """Check signatures and digests without the body key (what the hub does).

    Raises a precise :class:`~exchange.errors.EnvelopeError`; returns the suite.
    """
    header = envelope.wire_header
    suite = suite_by_id(header.suite)
    if minimum_suite is not None and suite.strength < minimum_suite.strength:
        raise SuiteTooWeak(
            f"message {header.id} uses {suite.id}; at least {minimum_suite.id} is required"
        )
    _verify_signatures(
        envelope.wire.header, envelope.wire.signatures, header.sender, suite, directory, now
    )
    if _sha256(envelope.wire.body_ciphertext) != header.ciphertext_digest:
        raise DigestMismatch(f"message {header.id}: the body ciphertext does not match its digest")
    if key_wraps_digest(envelope.wire.key_wraps) != header.key_wraps_digest:
        raise DigestMismatch(f"message {header.id}: the key wraps do not match their digest")
    wrapped_for = [w.recipient for w in envelope.wire.key_wraps]
    if sorted(wrapped_for) != sorted(envelope.recipients):
        raise DigestMismatch(
            f"message {header.id}: the key wraps are for {', '.join(wrapped_for) or 'nobody'}, "
            f"the header addresses {', '.join(envelope.recipients)}"
        )
    for wrap in envelope.wire.key_wraps:
        _check_wrap_keys(wrap, suite, directory, now)
    if envelope.is_forward:
        _verify_forward(envelope, directory, now)
    return suite


def _verify_forward(envelope: SealedEnvelope, directory: Directory, now: datetime) -> None:
    """The provider's signature still holds and the forward weakens nothing."""
    provider = envelope.provider_header
    forwarding = envelope.wire.forwarding
    _verify_signatures(
        forwarding.provider_header,
        forwarding.provider_signatures,
        provider.sender,
        suite_by_id(provider.suite),
        directory,
        now,
    )
    own = envelope.wire_header
    problems = []
    if own.body_digest != provider.body_digest:
        problems.append("the content is not the provider's (body digest differs)")
    if not set(provider.handling.codes) <= set(own.handling.codes):
        problems.append("handling codes were dropped")
    if own.handling.h3 != provider.handling.h3:
        problems.append("the H3 restrictions were changed")
    if own.classification < provider.classification:
        problems.append("the classification was lowered")
    if own.subjects != provider.subjects:
        problems.append("the data-subject declaration was changed")
    if (own.channel, own.crime_area) != (provider.channel, provider.crime_area):
        problems.append("the channel or crime area was changed")
    if problems:
        raise ForwardWeakened(
            f"forward {own.id} of {provider.id} by {own.sender}: " + "; ".join(problems)
        )


def _check_wrap_keys(wrap: pb.KeyWrap, suite: Suite, directory: Directory, now: datetime) -> None:
    """A wrap must use the recipient's certified keys of the right kind, certified for the suite.

    This stops a sender (or anyone re-sealing) from wrapping for a hybrid-only
    recipient with the classic KEM: its X25519 certificate does not list classic.
    """
    parts = wrap.key_id.split("+")
    if len(parts) != len(suite.kem_algorithms):
        raise SuiteError(f"key wrap {wrap.key_id} for {wrap.recipient} does not fit {suite.id}")
    for part, algorithm in zip(parts, suite.kem_algorithms, strict=True):
        cert = directory.key(wrap.recipient, part, now)
        if cert.algorithm is not algorithm:
            raise SuiteError(
                f"key wrap for {wrap.recipient} uses a {cert.algorithm.value} key where "
                f"{suite.id} needs {algorithm.value}"
            )
        if suite.id not in cert.suites:
            raise SuiteTooWeak(
                f"{wrap.recipient} accepts only {', '.join(sorted(cert.suites))}; "
                f"this message was wrapped for it with {suite.id}"
            )


def _verify_signatures(
    header_bytes: bytes,
    signatures: Sequence[pb.Signature],
    signer: str,
    suite: Suite,
    directory: Directory,
    now: datetime,
) -> None:
    required = [a.value for a in suite.signature_algorithms]
    present = [s.algorithm for s in signatures]
    if sorted(present) != sorted(required):
        raise BadSignature(
            f"suite {suite.id} requires signatures {' + '.join(required)}; "
            f"the envelope carries {' + '.join(present) or 'none'}"
        )
    message = SIGNED_PREFIX + header_bytes
    for signature in signatures:
        cert = directory.key(signer, signature.key_id, now)
        if suite.id not in cert.suites:
            raise SuiteTooWeak(f"{signer}'s key {signature.key_id} is not certified for {suite.id}")
        if cert.algorithm.value != signature.algorithm:
            raise BadSignature(
                f"{signer}'s key {signature.key_id} is {cert.algorithm.value}, "
                f"not {signature.algorithm}"
            )
        public: SigningPublicKey = cert.public_key  # type: ignore[assignment]
        if not verify_signature(public, signature.value, message):
            raise BadSignature(
                f"the {signature.algorithm} signature of {signer} does not verify over this header"
            )


# --------------------------------------------------------------------------- open


def open_envelope(
    envelope: SealedEnvelope,
    *,
    keyring: Keyring,
    directory: Directory,
    now: datetime,
) -> OpenedMessage:
    """Verify, then decrypt as ``keyring.unit`` and check the body against the header."""
    suite = verify(envelope, directory, now)
    header = envelope.wire_header
    unit = keyring.unit
    if unit not in envelope.recipients:
        raise NotARecipient(f"{unit} is not a recipient of message {header.id}")
    wrap = next((w for w in envelope.wire.key_wraps if w.recipient == unit), None)
    if wrap is None:  # pragma: no cover - verify() checked wraps match recipients
        raise NotARecipient(f"message {header.id} carries no key for {unit}")
    private_keys = _private_keys_for(wrap.key_id, keyring, suite)
    content_key = suite.unwrap(
        wrap.sealed_key, private_keys, _wrap_info(suite.id, header.id, unit, wrap.key_id)
    )
    nonce = envelope.wire.body_ciphertext[:NONCE_BYTES]
    try:
        salted_bytes = AESGCM(content_key).decrypt(
            nonce, envelope.wire.body_ciphertext[NONCE_BYTES:], _body_aad(suite.id, header.id)
        )
    except (InvalidTag, ValueError):
        raise DecryptionFailed(f"the body of message {header.id} does not decrypt") from None
    salted = pb.SaltedBody()
    try:
        salted.ParseFromString(salted_bytes)
    except DecodeError:
        raise HeaderBodyMismatch(f"the body of message {header.id} does not parse") from None
    if body_digest(salted.salt, salted.body) != header.body_digest:
        raise DigestMismatch(f"the body of message {header.id} does not match its digest")
    wire_body = pb.Body()
    try:
        wire_body.ParseFromString(salted.body)
    except DecodeError:
        raise HeaderBodyMismatch(f"the body of message {header.id} does not parse") from None
    body = body_from_wire(wire_body)
    disagreements = check_body_against_header(body, envelope.header.subjects)
    if disagreements:
        raise HeaderBodyMismatch(
            f"message {header.id}: the body does not match the header: " + "; ".join(disagreements)
        )
    return OpenedMessage(
        header=envelope.header,
        body=body,
        envelope=envelope,
        salted_body=salted_bytes,
        provider=envelope.provider,
    )


def _private_keys_for(wrap_key_id: str, keyring: Keyring, suite: Suite) -> tuple[PrivateKey, ...]:
    parts = wrap_key_id.split("+")
    if len(parts) != len(suite.kem_algorithms):
        raise SuiteError(f"key id {wrap_key_id} does not fit suite {suite.id}")
    keys: list[PrivateKey] = []
    for part, algorithm in zip(parts, suite.kem_algorithms, strict=True):
        key = keyring.get(part)
        if key is None or KeyAlgorithm.of(key) is not algorithm:
            raise NotARecipient(
                f"{keyring.unit} does not hold the private key {part} this message was sealed for"
            )
        keys.append(key)
    return tuple(keys)
