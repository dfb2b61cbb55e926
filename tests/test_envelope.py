"""The sealed envelope: round trips for both suites, and the attacks it must stop."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime, timedelta

import pytest

from exchange.bench.envelope import sample_message
from exchange.core.body import Body, Person
from exchange.core.envelope import SealedEnvelope, open_envelope, seal, seal_forward, verify
from exchange.core.header import Header
from exchange.core.identities import Identities, make_identities
from exchange.core.keys import Directory, Revocation
from exchange.core.suites import CLASSIC, HYBRID_PQ, SUITES, Suite
from exchange.core.vocab import HandlingCode, SubjectCategory
from exchange.errors import (
    BadSignature,
    CertificateExpired,
    CertificateRevoked,
    DigestMismatch,
    EnvelopeError,
    ForwardWeakened,
    HeaderBodyMismatch,
    MalformedEnvelope,
    NotARecipient,
    SuiteTooWeak,
    UnknownSigner,
)
from exchange.wire.v1 import exchange_pb2 as pb

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UNITS = ["AL.CTD", "EU.EUROPOL", "RS.CTU", "ME.ARO", "AT.ENU", "DE.ENU", "MK.CTS", "BA.DKPT"]


@pytest.fixture(scope="module")
def ids() -> Identities:
    return make_identities(
        UNITS,
        not_before=NOW - timedelta(days=30),
        not_after=NOW + timedelta(days=30),
        unit_suites={"DE.ENU": [HYBRID_PQ], "BA.DKPT": [CLASSIC]},
    )


def sealed(ids: Identities, suite: Suite = CLASSIC, recipients: int = 1) -> SealedEnvelope:
    header, body = sample_message(256, recipients)
    return seal(
        header, body, keyring=ids.keyrings["AL.CTD"], directory=ids.directory, now=NOW, suite=suite
    )


def reparse(wire: pb.SealedEnvelope) -> SealedEnvelope:
    return SealedEnvelope.from_bytes(wire.SerializeToString(deterministic=True))


def copy_wire(envelope: SealedEnvelope) -> pb.SealedEnvelope:
    wire = pb.SealedEnvelope()
    wire.CopyFrom(envelope.wire)
    return wire


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x80]) + data[index + 1 :]


@pytest.mark.parametrize("suite", list(SUITES.values()), ids=list(SUITES))
def test_round_trip_for_each_suite(ids: Identities, suite: Suite) -> None:
    header, body = sample_message(2048, 3)
    envelope = seal(
        header, body, keyring=ids.keyrings["AL.CTD"], directory=ids.directory, now=NOW, suite=suite
    )
    received = SealedEnvelope.from_bytes(envelope.raw)
    assert verify(received, ids.directory, NOW) is suite
    for reader in header.recipients:
        opened = open_envelope(
            received, keyring=ids.keyrings[reader], directory=ids.directory, now=NOW
        )
        assert opened.body == body
        assert opened.header == header
        assert opened.provider == "AL.CTD"


def test_strongest_common_suite_is_chosen(ids: Identities) -> None:
    header, body = sample_message(64, 1)
    both = seal(header, body, keyring=ids.keyrings["AL.CTD"], directory=ids.directory, now=NOW)
    assert both.suite_id == HYBRID_PQ.id
    to_classic_only = dataclasses.replace(header, to=("BA.DKPT",))
    classic = seal(
        to_classic_only, body, keyring=ids.keyrings["AL.CTD"], directory=ids.directory, now=NOW
    )
    assert classic.suite_id == CLASSIC.id


def test_mixed_recipients_each_open_the_hybrid_envelope(ids: Identities) -> None:
    header, body = sample_message(64, 1)
    header = dataclasses.replace(header, to=("EU.EUROPOL", "DE.ENU"), cc=("RS.CTU",))
    envelope = seal(header, body, keyring=ids.keyrings["AL.CTD"], directory=ids.directory, now=NOW)
    assert envelope.suite_id == HYBRID_PQ.id
    for reader in ("EU.EUROPOL", "DE.ENU", "RS.CTU"):
        assert (
            open_envelope(
                envelope, keyring=ids.keyrings[reader], directory=ids.directory, now=NOW
            ).body
            == body
        )


@pytest.mark.parametrize("suite", list(SUITES.values()), ids=list(SUITES))
def test_any_flipped_header_byte_is_refused(ids: Identities, suite: Suite) -> None:
    envelope = sealed(ids, suite)
    for index in range(len(envelope.wire.header)):
        wire = copy_wire(envelope)
        wire.header = flip(wire.header, index)
        with pytest.raises(EnvelopeError):
            verify(reparse(wire), ids.directory, NOW)


@pytest.mark.parametrize("suite", list(SUITES.values()), ids=list(SUITES))
def test_any_flipped_signature_byte_is_refused(ids: Identities, suite: Suite) -> None:
    envelope = sealed(ids, suite)
    for which in range(len(envelope.wire.signatures)):
        size = len(envelope.wire.signatures[which].value)
        for index in range(0, size, max(1, size // 97)):
            wire = copy_wire(envelope)
            wire.signatures[which].value = flip(wire.signatures[which].value, index)
            with pytest.raises(BadSignature):
                verify(reparse(wire), ids.directory, NOW)


@pytest.mark.parametrize("suite", list(SUITES.values()), ids=list(SUITES))
def test_any_flipped_wrapped_key_byte_is_refused(ids: Identities, suite: Suite) -> None:
    envelope = sealed(ids, suite)
    size = len(envelope.wire.key_wraps[0].sealed_key)
    for index in range(0, size, max(1, size // 64)):
        wire = copy_wire(envelope)
        wire.key_wraps[0].sealed_key = flip(wire.key_wraps[0].sealed_key, index)
        with pytest.raises(DigestMismatch):
            verify(reparse(wire), ids.directory, NOW)


def test_any_flipped_ciphertext_byte_is_refused(ids: Identities) -> None:
    envelope = sealed(ids)
    for index in range(0, len(envelope.wire.body_ciphertext), 7):
        wire = copy_wire(envelope)
        wire.body_ciphertext = flip(wire.body_ciphertext, index)
        with pytest.raises(DigestMismatch):
            open_envelope(
                reparse(wire), keyring=ids.keyrings["EU.EUROPOL"], directory=ids.directory, now=NOW
            )


def test_signature_moved_to_another_message_is_refused(ids: Identities) -> None:
    first, second = sealed(ids), sealed(ids)
    wire = copy_wire(second)
    del wire.signatures[:]
    wire.signatures.extend(first.wire.signatures)
    with pytest.raises(BadSignature):
        verify(reparse(wire), ids.directory, NOW)


def test_header_readdressed_after_signing_is_refused(ids: Identities) -> None:
    envelope = sealed(ids)
    header = pb.Header()
    header.CopyFrom(envelope.wire_header)
    header.to[:] = ["RS.CTU"]
    wire = copy_wire(envelope)
    wire.header = header.SerializeToString(deterministic=True)
    wire.key_wraps[0].recipient = "RS.CTU"
    with pytest.raises(BadSignature):
        verify(reparse(wire), ids.directory, NOW)


def test_key_wrap_moved_to_another_recipient_is_refused(ids: Identities) -> None:
    envelope = sealed(ids, recipients=2)
    wire = copy_wire(envelope)
    first, second = wire.key_wraps[0].recipient, wire.key_wraps[1].recipient
    wire.key_wraps[0].recipient, wire.key_wraps[1].recipient = second, first
    with pytest.raises(DigestMismatch):
        verify(reparse(wire), ids.directory, NOW)


def test_unit_not_listed_cannot_open(ids: Identities) -> None:
    envelope = sealed(ids)
    with pytest.raises(NotARecipient):
        open_envelope(envelope, keyring=ids.keyrings["RS.CTU"], directory=ids.directory, now=NOW)


def test_revoked_signer_is_refused(ids: Identities) -> None:
    envelope = sealed(ids)
    signer = envelope.wire.signatures[0].key_id
    serial = next(k.serial for k in ids.directory.keys["AL.CTD"] if k.key_id == signer)
    revoked = Directory(
        keys=ids.directory.keys,
        revocations={serial: Revocation(serial, NOW - timedelta(days=1), "key compromise")},
    )
    with pytest.raises(CertificateRevoked, match="key compromise"):
        verify(envelope, revoked, NOW)


def test_expired_signer_is_refused(ids: Identities) -> None:
    envelope = sealed(ids)
    with pytest.raises(CertificateExpired):
        verify(envelope, ids.directory, NOW + timedelta(days=31))


def test_unknown_signer_is_refused(ids: Identities) -> None:
    stranger = make_identities(
        ["AL.CTD"], not_before=NOW - timedelta(1), not_after=NOW + timedelta(1)
    )
    header, body = sample_message(64, 1)
    forged = seal(
        header,
        body,
        keyring=stranger.keyrings["AL.CTD"],
        directory=dataclasses.replace(
            ids.directory, keys={**ids.directory.keys, **stranger.directory.keys}
        ),
        now=NOW,
        suite=CLASSIC,
    )
    with pytest.raises(UnknownSigner):
        verify(forged, ids.directory, NOW)


@pytest.mark.parametrize("data", [b"", b"\x00" * 10, os.urandom(4096), b"not an envelope at all"])
def test_garbage_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        SealedEnvelope.from_bytes(data)


def test_truncated_envelope_is_malformed(ids: Identities) -> None:
    raw = sealed(ids).raw
    for cut in (1, 10, len(raw) // 2, len(raw) - 1):
        with pytest.raises(MalformedEnvelope):
            verify(SealedEnvelope.from_bytes(raw[:cut]), ids.directory, NOW)


def test_body_not_matching_declared_subjects_is_refused_at_open(ids: Identities) -> None:
    header, body = sample_message(64, 1)
    extra = Person(
        family_name="OTHER",
        given_names="Undeclared",
        birth_date=None,
        nationality="RS",
        role=SubjectCategory.CONTACT,
        minor=False,
    )
    body = dataclasses.replace(body, persons=(*body.persons, extra))
    envelope = seal(header, body, keyring=ids.keyrings["AL.CTD"], directory=ids.directory, now=NOW)
    verify(envelope, ids.directory, NOW)  # the hub cannot see it
    with pytest.raises(HeaderBodyMismatch):
        open_envelope(
            envelope, keyring=ids.keyrings["EU.EUROPOL"], directory=ids.directory, now=NOW
        )


# --------------------------------------------------------------------------- hybrid


@pytest.mark.parametrize("stripped", ["ml-dsa-65", "ed25519"])
def test_stripped_signature_half_is_refused(ids: Identities, stripped: str) -> None:
    envelope = sealed(ids, HYBRID_PQ)
    wire = copy_wire(envelope)
    kept = [s for s in wire.signatures if s.algorithm != stripped]
    del wire.signatures[:]
    wire.signatures.extend(kept)
    with pytest.raises(BadSignature, match="requires signatures"):
        verify(reparse(wire), ids.directory, NOW)


def test_swapped_signature_half_is_refused(ids: Identities) -> None:
    first, second = sealed(ids, HYBRID_PQ), sealed(ids, HYBRID_PQ)
    wire = copy_wire(first)
    for signature in wire.signatures:
        if signature.algorithm == "ml-dsa-65":
            signature.value = next(
                s.value for s in second.wire.signatures if s.algorithm == "ml-dsa-65"
            )
    with pytest.raises(BadSignature):
        verify(reparse(wire), ids.directory, NOW)


def test_suite_id_swapped_to_downgrade_is_refused(ids: Identities) -> None:
    envelope = sealed(ids, HYBRID_PQ)
    header = pb.Header()
    header.CopyFrom(envelope.wire_header)
    header.suite = CLASSIC.id
    wire = copy_wire(envelope)
    wire.header = header.SerializeToString(deterministic=True)
    kept = [s for s in wire.signatures if s.algorithm == "ed25519"]
    del wire.signatures[:]
    wire.signatures.extend(kept)
    with pytest.raises(BadSignature):
        verify(reparse(wire), ids.directory, NOW)


def test_classic_rewrap_for_hybrid_only_recipient_is_refused(ids: Identities) -> None:
    header, body = sample_message(64, 1)
    header = dataclasses.replace(header, to=("DE.ENU",))
    # the sealer refuses to use the classic KEM for a hybrid-only recipient ...
    with pytest.raises(SuiteTooWeak):
        seal(
            header,
            body,
            keyring=ids.keyrings["AL.CTD"],
            directory=ids.directory,
            now=NOW,
            suite=CLASSIC,
        )
    # ... and a verifier refuses such a wrap even when a forger made one by hand
    forged_directory = dataclasses.replace(
        ids.directory,
        keys={
            **ids.directory.keys,
            "DE.ENU": tuple(
                dataclasses.replace(k, suites=frozenset(SUITES))
                for k in ids.directory.keys["DE.ENU"]
            ),
        },
    )
    forged = seal(
        header,
        body,
        keyring=ids.keyrings["AL.CTD"],
        directory=forged_directory,
        now=NOW,
        suite=CLASSIC,
    )
    with pytest.raises(SuiteTooWeak):
        verify(forged, ids.directory, NOW)


def test_minimum_suite_refuses_classic(ids: Identities) -> None:
    with pytest.raises(SuiteTooWeak):
        verify(sealed(ids, CLASSIC), ids.directory, NOW, minimum_suite=HYBRID_PQ)


def test_rotated_key_still_opens_old_message() -> None:
    old = make_identities(
        ["AL.CTD", "EU.EUROPOL"], not_before=NOW - timedelta(1), not_after=NOW + timedelta(30)
    )
    envelope = sealed(old)
    new = make_identities(["EU.EUROPOL"], not_before=NOW, not_after=NOW + timedelta(60))
    # the directory lists the new keys first, the old ones after; the keyring holds both
    directory = Directory(
        keys={
            "AL.CTD": old.directory.keys["AL.CTD"],
            "EU.EUROPOL": new.directory.keys["EU.EUROPOL"] + old.directory.keys["EU.EUROPOL"],
        }
    )
    keyring = dataclasses.replace(
        new.keyrings["EU.EUROPOL"],
        private_keys={
            **new.keyrings["EU.EUROPOL"].private_keys,
            **old.keyrings["EU.EUROPOL"].private_keys,
        },
    )
    assert (
        open_envelope(envelope, keyring=keyring, directory=directory, now=NOW).envelope is envelope
    )
    header, body = sample_message(64, 1)
    fresh = seal(header, body, keyring=old.keyrings["AL.CTD"], directory=directory, now=NOW)
    new_ids = {k.key_id for k in new.directory.keys["EU.EUROPOL"]}
    assert set(fresh.wire.key_wraps[0].key_id.split("+")) <= new_ids


# --------------------------------------------------------------------------- forward


def test_forward_keeps_provider_signature_and_digest(ids: Identities) -> None:
    envelope = sealed(ids, HYBRID_PQ)
    opened = open_envelope(
        envelope, keyring=ids.keyrings["EU.EUROPOL"], directory=ids.directory, now=NOW
    )
    forward = seal_forward(
        opened,
        message_id="fwd-1",
        to=["RS.CTU"],
        keyring=ids.keyrings["EU.EUROPOL"],
        directory=ids.directory,
        now=NOW,
    )
    received = SealedEnvelope.from_bytes(forward.raw)
    verify(received, ids.directory, NOW)
    reread = open_envelope(
        received, keyring=ids.keyrings["RS.CTU"], directory=ids.directory, now=NOW
    )
    assert reread.body == opened.body
    assert reread.provider == "AL.CTD"
    assert received.sender == "EU.EUROPOL"


def test_forward_dropping_handling_codes_is_refused(ids: Identities) -> None:
    envelope = sealed(ids)
    opened = open_envelope(
        envelope, keyring=ids.keyrings["EU.EUROPOL"], directory=ids.directory, now=NOW
    )
    forward = seal_forward(
        opened,
        message_id="fwd-2",
        to=["RS.CTU"],
        keyring=ids.keyrings["EU.EUROPOL"],
        directory=ids.directory,
        now=NOW,
    )
    # the forwarder re-signs a header without H2: the provider's header still says H2
    header = pb.Header()
    header.CopyFrom(forward.wire_header)
    header.handling.codes[:] = [pb.HANDLING_CODE_H0]
    raw_header = header.SerializeToString(deterministic=True)
    from exchange.core.envelope import SIGNED_PREFIX
    from exchange.core.suites import sign

    wire = copy_wire(forward)
    wire.header = raw_header
    key = next(iter(ids.keyrings["EU.EUROPOL"].private_keys.values()))
    for signature in wire.signatures:
        key = ids.keyrings["EU.EUROPOL"].private_keys[signature.key_id]
        signature.value = sign(key, SIGNED_PREFIX + raw_header)  # type: ignore[arg-type]
    with pytest.raises(ForwardWeakened, match="handling codes were dropped"):
        verify(reparse(wire), ids.directory, NOW)
    assert HandlingCode.H2 in opened.header.handling.codes


def test_domain_types_survive_the_wire(ids: Identities) -> None:
    header, body = sample_message(64, 1)
    assert isinstance(header, Header) and isinstance(body, Body)
    envelope = sealed(ids)
    assert envelope.header == header
    shown = envelope.header_json()
    assert shown["sender"] == "AL.CTD" and shown["suite"] == CLASSIC.id
    assert "text" not in shown and "persons" not in shown
