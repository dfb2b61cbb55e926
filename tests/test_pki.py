"""The PKI: files on disk, what loading accepts and refuses, and the `exchange pki` commands.

Tests are named after what they protect; the attacks (a foreign CA, a tampered CRL, a
certificate in another unit's folder, a revoked or expired peer) each have their own.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from exchange.core.keys import KeyAlgorithm
from exchange.core.suites import CLASSIC, HYBRID_PQ
from exchange.errors import CertificateExpired, CertificateRevoked, PKIError, UnknownSigner
from exchange.pki import (
    HUB,
    CertificateNotYetValid,
    ForeignCertificate,
    InvalidCrl,
    Outcome,
    PeerVerifier,
    PkiLayout,
    Role,
    TlsUsage,
    UnsuitableCertificate,
    UntrustedCertificate,
    Validity,
    check_peer_certificate,
    describe,
    init_pki,
    issue_subject,
    load_directory,
    load_hub_keyring,
    load_keyring,
    load_tls_material,
    load_trust_anchor,
    revoke_serial,
    revoke_subject,
)
from exchange.pki.inspection import CertificateDescription

UNITS = ["AL.CTD", "RS.CTU", "EU.EUROPOL"]
NOW = datetime.now(UTC)

REGISTRY = """\
units:
  - id: AL.CTD
    name: Albanian State Police, Counter-Terrorism Directorate
    status: operational
    channels: [SIENA, CT]
    clearance: RESTREINT_UE
    relay: null
  - id: RS.CTU
    name: Serbian Service for Combating Terrorism
    status: operational
    channels: [SIENA, CT]
    clearance: RESTREINT_UE
    relay: null
  - id: EU.EUROPOL
    name: Europol operational desk
    status: agency
    channels: [SIENA, CT, ARO]
    clearance: CONFIDENTIEL_UE
    relay: null
"""


def make_pki(root: Path, units: list[str] | None = None, **kwargs: object) -> Path:
    init_pki(root, UNITS if units is None else units, **kwargs)  # type: ignore[arg-type]
    return root


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "certs")


@pytest.fixture
def other_pki(tmp_path: Path) -> Path:
    """A second, unrelated PKI: its certificates are foreign to ``certs``."""
    return make_pki(tmp_path / "other", ["AL.CTD"])


def key_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.key"))


def file_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".key", ".crt")
    }


def pem_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# -- files on disk ---------------------------------------------------------------------------------


def test_private_keys_are_written_0600(tmp_path: Path) -> None:
    previous = os.umask(0)  # even a permissive umask must not widen a private key
    try:
        root = make_pki(tmp_path / "certs")
        issue_subject(root, "AL.CTD", rotate=True)
    finally:
        os.umask(previous)
    keys = key_files(root)
    assert len(keys) == 1 + 3 + 3 * 5 + 4  # CA, hub, 3 units, AL.CTD's rotated keys
    for path in keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert b"BEGIN PRIVATE KEY" in path.read_bytes()  # PKCS#8
    for path in root.rglob("*.crt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert not list(root.rglob("*.tmp")), "no temporary file left behind"


def test_layout_matches_the_documented_tree(certs: Path) -> None:
    layout = PkiLayout(certs)
    for path in (layout.ca_cert, layout.ca_key, layout.crl, layout.state):
        assert path.is_file(), path
    hub = {p.name for p in (certs / "hub").iterdir()}
    assert hub == {
        f"{stem}.{ext}"
        for stem in ("tls", "sign-ed25519", "sign-ml-dsa-65")
        for ext in ("crt", "key")
    }
    unit = {p.name for p in (certs / "units" / "AL.CTD").iterdir()}
    assert unit == {f"{role.value}.{ext}" for role in Role for ext in ("crt", "key")}
    state = json.loads(layout.state.read_text())
    assert state["next_serial"] == 1 + 1 + 3 + 3 * 5
    assert len(state["issued"]) == 3 + 3 * 5


def test_certificates_follow_their_profiles(certs: Path) -> None:
    ca = pem_of(certs / "ca" / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)

    hub_tls = pem_of(certs / "hub" / "tls.crt")
    eku = hub_tls.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH}
    san = hub_tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "hub"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:exchange:hub"]

    unit_tls = pem_of(certs / "units" / "AL.CTD" / "tls.crt")
    eku = unit_tls.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert unit_tls.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "AL.CTD"

    expected = {
        Role.SIGN_ED25519: "digital_signature",
        Role.SIGN_ML_DSA_65: "digital_signature",
        Role.KEM_X25519: "key_agreement",
        Role.KEM_ML_KEM_768: "key_encipherment",
    }
    for role, flag in expected.items():
        cert = pem_of(certs / "units" / "AL.CTD" / f"{role.value}.crt")
        key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert getattr(key_usage, flag), role
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            "urn:exchange:unit:AL.CTD"
        ]


# -- idempotence, force, suites, validity ----------------------------------------------------------


def test_init_is_idempotent_and_keeps_keys(certs: Path) -> None:
    before = file_bytes(certs)
    report = init_pki(certs, UNITS)
    assert {slot.outcome for slot in report.slots} == {Outcome.KEPT}
    assert not report.ca_created
    assert file_bytes(certs) == before


def test_units_added_to_the_registry_get_their_keys(tmp_path: Path) -> None:
    root = make_pki(tmp_path / "certs", ["AL.CTD"])
    before = file_bytes(root)
    report = init_pki(root, ["AL.CTD", "ME.ARO"])
    issued = {slot.subject for slot in report.slots if slot.outcome is Outcome.ISSUED}
    assert issued == {"ME.ARO"}
    after = file_bytes(root)
    assert all(after[name] == data for name, data in before.items())
    assert "ME.ARO" in load_directory(root).keys


def test_force_replaces_keys(certs: Path) -> None:
    before = file_bytes(certs)
    report = init_pki(certs, UNITS, force=True)
    assert report.ca_created
    after = file_bytes(certs)
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in before)
    load_directory(certs)  # nothing from the old CA is left to be refused


def test_classic_suite_alone_makes_no_post_quantum_keys_until_asked(tmp_path: Path) -> None:
    root = make_pki(tmp_path / "certs", ["AL.CTD"], suites=["classic-2026"])
    assert not (root / "units" / "AL.CTD" / "sign-ml-dsa-65.key").exists()
    directory = load_directory(root)
    assert CLASSIC.supported_by(directory, "AL.CTD", NOW)
    assert not HYBRID_PQ.supported_by(directory, "AL.CTD", NOW)
    x25519_before = (root / "units" / "AL.CTD" / "kem-x25519.key").read_bytes()

    report = init_pki(root, ["AL.CTD"])  # both suites: PQ keys added, classic ones widened
    outcomes = {slot.role: slot.outcome for slot in report.slots if slot.subject == "AL.CTD"}
    assert outcomes[Role.SIGN_ML_DSA_65] is Outcome.ISSUED
    assert outcomes[Role.KEM_X25519] is Outcome.RECERTIFIED
    assert (root / "units" / "AL.CTD" / "kem-x25519.key").read_bytes() == x25519_before
    assert HYBRID_PQ.supported_by(load_directory(root), "AL.CTD", NOW)


def test_hub_host_names_are_added_to_its_tls_certificate(tmp_path: Path) -> None:
    root = make_pki(tmp_path / "certs", [], hub_hosts=["hub.example.org"])
    key_before = (root / "hub" / "tls.key").read_bytes()
    report = init_pki(root, [], hub_hosts=["10.0.0.5"])
    (tls,) = [slot for slot in report.slots if slot.role is Role.TLS]
    assert tls.outcome is Outcome.RECERTIFIED
    san = pem_of(root / "hub" / "tls.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert {"hub.example.org", "localhost", "hub"} <= set(
        san.value.get_values_for_type(x509.DNSName)
    )
    assert "10.0.0.5" in {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)}
    assert (root / "hub" / "tls.key").read_bytes() == key_before


def test_tls_certificates_near_their_end_are_renewed(tmp_path: Path) -> None:
    long_ago = NOW - timedelta(days=820)
    root = make_pki(tmp_path / "certs", ["AL.CTD"], validity=Validity.of(None, now=long_ago))
    key_before = (root / "units" / "AL.CTD" / "tls.key").read_bytes()
    report = init_pki(root, ["AL.CTD"])
    renewed = {(s.subject, s.role) for s in report.slots if s.outcome is Outcome.RENEWED}
    assert renewed == {(HUB, Role.TLS), ("AL.CTD", Role.TLS)}
    assert (root / "units" / "AL.CTD" / "tls.key").read_bytes() == key_before
    tls = pem_of(root / "units" / "AL.CTD" / "tls.crt")
    assert tls.not_valid_after_utc > NOW + timedelta(days=800)


def test_exercise_dates_are_covered_with_valid_from(tmp_path: Path) -> None:
    root = make_pki(
        tmp_path / "certs", ["RS.CTU"], validity=Validity.of(datetime(2019, 1, 1, tzinfo=UTC))
    )
    directory = load_directory(root)
    exercise_day = datetime(2019, 9, 1, tzinfo=UTC)
    assert HYBRID_PQ.supported_by(directory, "RS.CTU", exercise_day)
    # TLS is checked by the TLS library against the real clock: it must cover today too
    anchor = load_trust_anchor(root)
    tls = (root / "units" / "RS.CTU" / "tls.crt").read_bytes()
    assert check_peer_certificate(tls, anchor.certificate, anchor.crl, NOW) == "RS.CTU"
    assert check_peer_certificate(tls, anchor.certificate, anchor.crl, exercise_day) == "RS.CTU"


def test_existing_ca_refuses_dates_before_its_own(certs: Path) -> None:
    with pytest.raises(PKIError, match="--force"):
        issue_subject(
            certs, "AL.CTD", rotate=True, validity=Validity.of(datetime(2019, 1, 1, tzinfo=UTC))
        )


# -- loading and what it refuses -------------------------------------------------------------------


def test_directory_holds_every_unit_and_the_hub(certs: Path) -> None:
    directory = load_directory(certs, now=NOW)
    assert directory.units() == sorted([*UNITS, HUB])
    algorithms = {cert.algorithm for cert in directory.keys["AL.CTD"]}
    assert algorithms == set(KeyAlgorithm)
    assert {cert.algorithm for cert in directory.keys[HUB]} == {
        KeyAlgorithm.ED25519,
        KeyAlgorithm.ML_DSA_65,
    }
    hub_keyring = load_hub_keyring(certs)
    for cert in directory.keys[HUB]:
        assert hub_keyring.get(cert.key_id) is not None
    ml_dsa = directory.current("AL.CTD", KeyAlgorithm.ML_DSA_65, NOW)
    assert ml_dsa is not None
    assert ml_dsa.suites == frozenset({"hybrid-pq-2026"})


def test_directory_loads_without_other_units_private_keys(certs: Path, tmp_path: Path) -> None:
    # What a node's container mounts: the CA certificate, the CRL, its own folder and
    # the public certificates of everyone else.
    node = tmp_path / "node"
    for relative in ("ca/ca.crt", "ca/crl.pem"):
        (node / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(certs / relative, node / relative)
    shutil.copytree(certs / "units" / "AL.CTD", node / "units" / "AL.CTD")
    for crt in [*certs.glob("units/*/*.crt"), *certs.glob("hub/*.crt")]:
        target = node / crt.relative_to(certs)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(crt, target)
    assert not (node / "units" / "RS.CTU" / "sign-ed25519.key").exists()

    assert load_directory(node) == load_directory(certs)
    assert set(load_keyring(node, "AL.CTD").private_keys) == set(
        load_keyring(certs, "AL.CTD").private_keys
    )
    with pytest.raises(PKIError, match=r"no private keys of RS\.CTU"):
        load_keyring(node, "RS.CTU")
    with pytest.raises(PKIError, match="no CA private key"):
        issue_subject(node, "AL.CTD")


def test_foreign_ca_certificate_is_refused(certs: Path, other_pki: Path) -> None:
    planted = certs / "units" / "AL.CTD" / "sign-ed25519.crt"
    shutil.copy(other_pki / "units" / "AL.CTD" / "sign-ed25519.crt", planted)
    with pytest.raises(ForeignCertificate, match=str(planted)) as caught:
        load_directory(certs)
    assert isinstance(caught.value, PKIError)
    assert isinstance(caught.value, UntrustedCertificate)


def test_foreign_ca_peer_certificate_is_refused(certs: Path, other_pki: Path) -> None:
    anchor = load_trust_anchor(certs)
    foreign = (other_pki / "units" / "AL.CTD" / "tls.crt").read_bytes()
    with pytest.raises(UntrustedCertificate):
        check_peer_certificate(foreign, anchor.certificate, anchor.crl, NOW)


def test_certificate_claiming_our_ca_name_is_refused(certs: Path) -> None:
    # Same issuer name as our CA, signed by an attacker's key.
    anchor = load_trust_anchor(certs)
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AL.CTD")]))
        .issuer_name(anchor.certificate.subject)
        .public_key(attacker.public_key())
        .serial_number(4242)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("urn:exchange:unit:AL.CTD")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(attacker, hashes.SHA256())
    )
    with pytest.raises(UntrustedCertificate):
        check_peer_certificate(forged, anchor.certificate, anchor.crl, NOW)


def test_certificate_in_another_units_folder_is_refused(certs: Path) -> None:
    # AL.CTD's genuine certificate planted as RS.CTU's: identity comes from the certificate.
    planted = certs / "units" / "RS.CTU" / "sign-ed25519.crt"
    shutil.copy(certs / "units" / "AL.CTD" / "sign-ed25519.crt", planted)
    with pytest.raises(PKIError, match=r"names AL\.CTD, but lies in RS\.CTU's folder"):
        load_directory(certs)


def test_key_of_the_wrong_algorithm_is_refused(certs: Path) -> None:
    unit = certs / "units" / "AL.CTD"
    shutil.copy(unit / "kem-x25519.crt", unit / "sign-ed25519.crt")
    with pytest.raises(PKIError, match="x25519 key, but the file is for sign-ed25519"):
        load_directory(certs)


def test_missing_and_garbage_files_name_the_file(certs: Path) -> None:
    (certs / "units" / "AL.CTD" / "kem-x25519.crt").write_text("not a certificate")
    with pytest.raises(PKIError, match=r"kem-x25519\.crt: not an X\.509 certificate"):
        load_directory(certs)
    (certs / "ca" / "crl.pem").unlink()
    with pytest.raises(PKIError, match=r"crl\.pem: no such CRL file"):
        load_directory(certs)
    with pytest.raises(PKIError, match=r"no key folder for ZZ\.NONE"):
        load_keyring(certs, "ZZ.NONE")


def test_peer_certificate_names_the_unit(certs: Path) -> None:
    anchor = load_trust_anchor(certs)
    verifier = PeerVerifier(anchor.certificate, anchor.crl)
    unit_tls = pem_of(certs / "units" / "AL.CTD" / "tls.crt")
    assert verifier.check(unit_tls, NOW) == "AL.CTD"
    hub_tls = (certs / "hub" / "tls.crt").read_bytes()
    assert verifier.check(hub_tls, NOW, TlsUsage.SERVER) == HUB
    # a unit's client certificate cannot pose as the hub's server certificate
    with pytest.raises(UnsuitableCertificate):
        verifier.check(unit_tls, NOW, TlsUsage.SERVER)
    # nor can a unit-key certificate be used for TLS
    with pytest.raises(UnsuitableCertificate):
        verifier.check(pem_of(certs / "units" / "AL.CTD" / "sign-ed25519.crt"), NOW)


def test_expired_certificate_is_refused(certs: Path) -> None:
    anchor = load_trust_anchor(certs)
    tls = pem_of(certs / "units" / "AL.CTD" / "tls.crt")
    later = tls.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(CertificateExpired) as caught:
        check_peer_certificate(tls, anchor.certificate, anchor.crl, later)
    assert not isinstance(caught.value, CertificateNotYetValid)
    directory = load_directory(certs)
    signing = directory.keys["AL.CTD"][0]
    with pytest.raises(CertificateExpired):
        directory.key("AL.CTD", signing.key_id, signing.not_after + timedelta(seconds=1))


def test_not_yet_valid_certificate_is_refused(tmp_path: Path) -> None:
    root = make_pki(
        tmp_path / "certs", ["AL.CTD"], validity=Validity.of(datetime(2019, 1, 1, tzinfo=UTC))
    )
    anchor = load_trust_anchor(root)
    tls = (root / "units" / "AL.CTD" / "tls.crt").read_bytes()
    with pytest.raises(CertificateNotYetValid):
        check_peer_certificate(
            tls, anchor.certificate, anchor.crl, datetime(2018, 6, 1, tzinfo=UTC)
        )
    with pytest.raises(CertificateNotYetValid, match="valid from 2019"):
        load_directory(root, now=datetime(2018, 6, 1, tzinfo=UTC))


# -- revocation ------------------------------------------------------------------------------------


def test_revoked_unit_is_listed_in_signed_crl(certs: Path) -> None:
    current = {pem_of(path).serial_number for path in (certs / "units" / "RS.CTU").glob("*.crt")}
    report = revoke_subject(certs, "RS.CTU", "laptop lost at an airport")
    assert {entry.serial for entry in report.entries} == current

    layout = PkiLayout(certs)
    crl = x509.load_pem_x509_crl(layout.crl.read_bytes())
    ca = pem_of(layout.ca_cert)
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert {entry.serial_number for entry in crl} == current

    directory = load_directory(certs)
    assert set(directory.revocations) == current
    assert {r.reason for r in directory.revocations.values()} == {"laptop lost at an airport"}
    key = directory.keys["RS.CTU"][0]
    with pytest.raises(CertificateRevoked, match="laptop lost at an airport"):
        directory.key("RS.CTU", key.key_id, NOW)
    assert all(directory.current("RS.CTU", alg, NOW) is None for alg in KeyAlgorithm)

    anchor = load_trust_anchor(certs)
    with pytest.raises(CertificateRevoked):
        check_peer_certificate(
            (certs / "units" / "RS.CTU" / "tls.crt").read_bytes(),
            anchor.certificate,
            anchor.crl,
            NOW,
        )
    state = json.loads(layout.state.read_text())
    assert {r["reason"] for r in state["revoked"]} == {"laptop lost at an airport"}
    assert all(r["revoked_at"] for r in state["revoked"])
    # other units are untouched
    assert directory.current("AL.CTD", KeyAlgorithm.ED25519, NOW) is not None


def test_revocation_keeps_its_first_date_and_reason(certs: Path) -> None:
    first_day = datetime(2026, 1, 2, tzinfo=UTC)
    serial = pem_of(certs / "units" / "AL.CTD" / "tls.crt").serial_number
    revoke_serial(certs, serial, "first reason", at=first_day)
    again = revoke_serial(certs, serial, "second reason")
    (entry,) = again.entries
    assert not entry.newly_revoked
    assert (entry.revoked_at, entry.reason) == (first_day, "first reason")
    assert load_directory(certs).revocations[serial].revoked_at == first_day
    # one serial: only that certificate
    assert len(load_directory(certs).revocations) == 1


def test_issue_replaces_revoked_certificates(certs: Path) -> None:
    revoke_subject(certs, "AL.CTD", "compromised")
    assert {s.outcome for s in init_pki(certs, UNITS).slots if s.subject == "AL.CTD"} == {
        Outcome.REVOKED
    }
    report = issue_subject(certs, "AL.CTD")
    assert {slot.outcome for slot in report.slots} == {Outcome.REPLACED}
    directory = load_directory(certs)
    assert HYBRID_PQ.supported_by(directory, "AL.CTD", NOW)
    anchor = load_trust_anchor(certs)
    tls = (certs / "units" / "AL.CTD" / "tls.crt").read_bytes()
    assert check_peer_certificate(tls, anchor.certificate, anchor.crl, NOW) == "AL.CTD"


def test_tampered_crl_is_refused(certs: Path, other_pki: Path) -> None:
    revoke_subject(certs, "RS.CTU", "compromised")
    layout = PkiLayout(certs)
    genuine = x509.load_pem_x509_crl(layout.crl.read_bytes())

    # 1. a flipped bit in the signed bytes
    der = bytearray(genuine.public_bytes(serialization.Encoding.DER))
    der[-10] ^= 0x01
    layout.crl.write_bytes(bytes(der))
    with pytest.raises(InvalidCrl, match=str(layout.crl)):
        load_directory(certs)

    # 2. an attacker's empty CRL under our CA's name, to un-revoke RS.CTU
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(genuine.issuer)
        .last_update(NOW)
        .next_update(NOW + timedelta(days=30))
        .sign(attacker, hashes.SHA256())
    )
    layout.crl.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(InvalidCrl):
        load_directory(certs)
    with pytest.raises(InvalidCrl):
        PeerVerifier(pem_of(layout.ca_cert), forged)
    with pytest.raises(InvalidCrl):
        init_pki(certs, UNITS)  # never silently re-signed over

    # 3. another CA's genuine CRL
    shutil.copy(other_pki / "ca" / "crl.pem", layout.crl)
    with pytest.raises(InvalidCrl):
        load_directory(certs)


# -- rotation --------------------------------------------------------------------------------------


def test_rotation_keeps_old_key_openable(certs: Path) -> None:
    before = load_directory(certs)
    old_kem = before.current("AL.CTD", KeyAlgorithm.X25519, NOW)
    old_sign = before.current("AL.CTD", KeyAlgorithm.ED25519, NOW)
    assert old_kem is not None
    assert old_sign is not None
    old_keyring = load_keyring(certs, "AL.CTD")
    sealed = CLASSIC.wrap(b"k" * 32, (old_kem,), b"message-1")
    signing_key = old_keyring.get(old_sign.key_id)
    assert isinstance(signing_key, ed25519.Ed25519PrivateKey)
    signature = signing_key.sign(b"header of message-1")

    report = issue_subject(certs, "AL.CTD", rotate=True)
    rotated = {slot.role for slot in report.slots if slot.outcome is Outcome.ROTATED}
    assert rotated == {r for r in Role if r is not Role.TLS}

    directory = load_directory(certs)
    keyring = load_keyring(certs, "AL.CTD")
    new_kem = directory.current("AL.CTD", KeyAlgorithm.X25519, NOW)
    assert new_kem is not None
    assert new_kem.key_id != old_kem.key_id
    # new messages use the new key ...
    assert keyring.newest(KeyAlgorithm.X25519, directory, NOW) is keyring.get(new_kem.key_id)
    # ... and an old message still opens with the old private key, kept by key id,
    private = keyring.get(old_kem.key_id)
    assert private is not None
    assert CLASSIC.unwrap(sealed, (private,), b"message-1") == b"k" * 32
    # ... and its signature still verifies against the old certificate.
    old_cert = directory.key("AL.CTD", old_sign.key_id, NOW)
    assert isinstance(old_cert.public_key, ed25519.Ed25519PublicKey)
    old_cert.public_key.verify(signature, b"header of message-1")
    assert len(keyring.private_keys) == 8
    previous = certs / "units" / "AL.CTD" / "previous"
    assert (previous / f"{old_kem.key_id.replace(':', '-')}.key").is_file()
    assert (previous / f"{old_kem.key_id.replace(':', '-')}.crt").is_file()


def test_hub_keys_rotate_too(certs: Path) -> None:
    old = {cert.key_id for cert in load_directory(certs).keys[HUB]}
    issue_subject(certs, HUB, rotate=True)
    directory = load_directory(certs)
    assert old < {cert.key_id for cert in directory.keys[HUB]}
    assert old <= set(load_hub_keyring(certs).private_keys)


# -- TLS material ----------------------------------------------------------------------------------


def test_tls_material_is_ready_for_grpc_and_hides_the_key(certs: Path) -> None:
    material = load_tls_material(certs, "AL.CTD")
    assert material.private_key_pem == (certs / "units" / "AL.CTD" / "tls.key").read_bytes()
    assert pem_of(certs / "units" / "AL.CTD" / "tls.crt") == x509.load_pem_x509_certificate(
        material.certificate_chain_pem
    )
    assert material.root_ca_pem == pem_of(certs / "ca" / "ca.crt").public_bytes(
        serialization.Encoding.PEM
    )
    assert "PRIVATE" not in repr(material)
    shutil.copy(certs / "units" / "RS.CTU" / "tls.key", certs / "units" / "AL.CTD" / "tls.key")
    with pytest.raises(PKIError, match="does not match"):
        load_tls_material(certs, "AL.CTD")


# -- bringing your own CA --------------------------------------------------------------------------


def test_brought_ca_issues_and_is_never_replaced(tmp_path: Path) -> None:
    root = tmp_path / "certs"
    (root / "ca").mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Agency Issuing CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(datetime(2018, 1, 1, tzinfo=UTC))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA384())
    )
    (root / "ca" / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "ca" / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    report = init_pki(root, ["AL.CTD"], validity=Validity.of(datetime(2019, 1, 1, tzinfo=UTC)))
    assert not report.ca_created
    assert "AL.CTD" in load_directory(root).keys
    state = json.loads((root / "ca" / "state.json").read_text())
    assert state["generated"] is False
    assert state["next_serial"] > 2**62  # cannot collide with the CA's earlier serials

    init_pki(root, ["AL.CTD"], force=True)
    assert pem_of(root / "ca" / "ca.crt") == ca
    load_directory(root)


# -- the command line ------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path) -> tuple[Path, Path]:
    """A PKI folder to make, and a registry of three units."""
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    return tmp_path / "certs", registry


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from exchange.cli.main import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_init_issue_revoke_show(
    cli: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    certs, registry = cli
    base = ["--registry", str(registry)]
    code, out, _ = run(
        [
            "pki",
            "init",
            "--out",
            str(certs),
            *base,
            "--valid-from",
            "2019-01-01",
            "--format",
            "json",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(out)
    assert result["ca"]["created"] is True
    assert result["summary"] == {"issued": 3 + 3 * 5}

    code, out, _ = run(
        ["pki", "init", "--out", str(certs), *base, "--valid-from", "2019-01-01"], capsys
    )
    assert code == 0
    assert "kept" in out

    code, out, _ = run(
        [
            "pki",
            "issue",
            "AL.CTD",
            "--certs",
            str(certs),
            *base,
            "--rotate",
            "--valid-from",
            "2019-06-01",
            "--format",
            "json",
        ],
        capsys,
    )
    assert code == 0
    assert json.loads(out)["summary"] == {"kept": 1, "rotated": 4}

    code, out, _ = run(
        [
            "pki",
            "revoke",
            "RS.CTU",
            "--certs",
            str(certs),
            "--reason",
            "seized device",
            "--code",
            "key_compromise",
            "--at",
            "2019-09-01",
            "--format",
            "json",
        ],
        capsys,
    )
    assert code == 0
    revoked = json.loads(out)["revoked"]
    assert len(revoked) == 5
    assert {r["reason"] for r in revoked} == {"seized device"}

    code, out, _ = run(
        ["pki", "show", str(certs / "units" / "RS.CTU" / "sign-ml-dsa-65.crt"), "--format", "json"],
        capsys,
    )
    assert code == 0
    shown = json.loads(out)
    assert shown["kind"] == "sign"
    assert shown["algorithm"] == "ml-dsa-65"
    assert shown["unit"] == "RS.CTU"
    assert shown["key_id"].startswith("ml-dsa-65:")
    assert shown["revoked"] is True
    assert shown["revocation_reason"] == "seized device"
    assert shown["revoked_at"].startswith("2019-09-01")
    assert shown["valid_from"].startswith("2019-01-01")
    assert shown["issued_by_ca"] is True

    code, out, _ = run(
        ["pki", "show", str(certs / "units" / "AL.CTD" / "tls.crt"), "--format", "json"], capsys
    )
    assert json.loads(out)["kind"] == "tls"
    assert json.loads(out)["revoked"] is False


def test_cli_refuses_bad_input_without_traceback(
    cli: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    certs, registry = cli
    cases = [
        ["pki", "show", str(certs / "nope.crt")],
        ["pki", "init", "--out", str(certs), "--registry", str(registry), "--suites", "rot13"],
        ["pki", "init", "--out", str(certs), "--registry", str(registry), "--valid-from", "soon"],
        ["pki", "issue", "AL.CTD", "--certs", str(certs), "--registry", str(registry)],
    ]
    for argv in cases:
        code, _, err = run(argv, capsys)
        assert code == 2, argv
        assert "Traceback" not in err, argv
        assert "error" in err, argv

    assert run(["pki", "init", "--out", str(certs), "--registry", str(registry)], capsys)[0] == 0
    code, _, err = run(
        ["pki", "issue", "ZZ.TYPO", "--certs", str(certs), "--registry", str(registry)], capsys
    )
    assert code == 2
    assert "no unit ZZ.TYPO in the registry" in err
    code, _, err = run(["pki", "revoke", "AL.CTD", "--certs", str(certs)], capsys)
    assert code == 2
    assert "--reason" in err

    planted = certs / "units" / "AL.CTD" / "sign-ed25519.crt"
    other = make_pki(certs.parent / "other", ["AL.CTD"])
    shutil.copy(other / "units" / "AL.CTD" / "sign-ed25519.crt", planted)
    code, out, err = run(["pki", "show", str(planted), "--format", "json"], capsys)
    assert code == 0
    assert json.loads(out)["issued_by_ca"] is False


def test_show_never_prints_key_material(
    cli: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    certs, registry = cli
    assert run(["pki", "init", "--out", str(certs), "--registry", str(registry)], capsys)[0] == 0
    keys = key_files(certs)
    assert len(keys) == 1 + 3 + 3 * 5
    for path in keys:
        pem = path.read_text()
        secrets = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        for fmt in ("text", "json"):
            code, out, err = run(["pki", "show", str(path), "--format", fmt], capsys)
            assert code == 0, (path, err)
            shown = out + err
            assert "PRIVATE KEY" not in shown
            for secret in secrets:
                assert secret[:24] not in shown.replace("\n", "")
        code, out, _ = run(["pki", "show", str(path), "--format", "json"], capsys)
        assert json.loads(out)["mode"] == "0600"
        assert json.loads(out)["warning"] is None

    loose = certs / "units" / "AL.CTD" / "kem-x25519.key"
    loose.chmod(0o644)
    code, out, _ = run(["pki", "show", str(loose), "--format", "json"], capsys)
    shown = json.loads(out)
    assert shown["mode"] == "0644"
    assert "chmod 600" in shown["warning"]
    public = describe(certs / "units" / "AL.CTD" / "kem-x25519.crt")
    assert isinstance(public, CertificateDescription)
    assert shown["key_id"] == public.key_id


def test_show_without_a_pki_folder_leaves_revocation_unknown(certs: Path, tmp_path: Path) -> None:
    loose = tmp_path / "loose.crt"
    shutil.copy(certs / "units" / "AL.CTD" / "sign-ed25519.crt", loose)
    description = describe(loose)
    assert isinstance(description, CertificateDescription)
    assert description.revocation is None
    assert description.issued_by_ca is None
    current = load_directory(certs).current("AL.CTD", KeyAlgorithm.ED25519, NOW)
    assert current is not None
    assert description.key_id == current.key_id


def test_unknown_key_id_is_not_in_the_directory(certs: Path) -> None:
    with pytest.raises(UnknownSigner):
        load_directory(certs).key("AL.CTD", "ed25519:" + "0" * 32, NOW)
