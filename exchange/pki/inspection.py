"""What a PKI file is (``exchange pki show``): certificate, private key or CRL.

Describes, never reveals: a private key is described by its algorithm, the key id
of its public half and its file mode, not by its bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, rsa, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from exchange.core.keys import KeyAlgorithm, Revocation, key_id
from exchange.errors import PKIError
from exchange.pki.files import file_mode, read_bytes, read_certificate, read_crl, readable_by_others
from exchange.pki.layout import PkiLayout, Role
from exchange.pki.loading import (
    revocations_from_crl,
    unit_private_key,
    unit_public_key,
    verify_crl,
)
from exchange.pki.profiles import certified_suites, has_extended_usage, identities, is_ca


@dataclass(frozen=True)
class RevocationStatus:
    """Whether a certificate is revoked, according to which CRL."""

    crl: Path
    revoked: bool
    revoked_at: datetime | None = None
    reason: str | None = None


@dataclass(frozen=True)
class CertificateDescription:
    """A certificate file, described."""

    path: Path
    kind: str  # ca | tls | sign | kem | other
    algorithm: str
    units: tuple[str, ...]
    key_id: str | None
    subject: str
    issuer: str
    serial: int
    not_before: datetime
    not_after: datetime
    suites: tuple[str, ...]
    #: None when no PKI folder (with ca/crl.pem) was found to check against
    issued_by_ca: bool | None
    revocation: RevocationStatus | None


@dataclass(frozen=True)
class PrivateKeyDescription:
    """A private key file, described without its secret."""

    path: Path
    algorithm: str
    kind: str  # tls | sign | kem | other
    key_id: str | None
    #: SHA-256 of the public half's SubjectPublicKeyInfo, to match it with a certificate
    public_key_sha256: str
    mode: int
    warning: str | None


@dataclass(frozen=True)
class CrlDescription:
    """A CRL file, described."""

    path: Path
    issuer: str
    last_update: datetime
    next_update: datetime | None
    signature_valid: bool | None
    revocations: tuple[Revocation, ...]


#: public key classes that are unit keys (isinstance accepts this tuple)
KeyAlgorithmTypes = (
    ed25519.Ed25519PublicKey,
    mldsa.MLDSA65PublicKey,
    x25519.X25519PublicKey,
    mlkem.MLKEM768PublicKey,
)

Description = CertificateDescription | PrivateKeyDescription | CrlDescription


def algorithm_name(key: object) -> str:
    """A short name for any key a PKI file may hold (``ecdsa-p256``, ``ml-kem-768``, ...)."""
    if isinstance(key, KeyAlgorithmTypes):
        return KeyAlgorithm.of(key).value
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(
            key.curve.name, f"ecdsa-{key.curve.name}"
        )
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return type(key).__name__


def nearest_certs_dir(path: Path) -> Path | None:
    """The nearest folder above ``path`` that holds ``ca/crl.pem`` (a PKI folder)."""
    for folder in path.resolve().parents:
        if (folder / "ca" / "crl.pem").is_file():
            return folder
    return None


def _kind(certificate: x509.Certificate) -> str:
    if is_ca(certificate):
        return "ca"
    if has_extended_usage(certificate, ExtendedKeyUsageOID.CLIENT_AUTH) or has_extended_usage(
        certificate, ExtendedKeyUsageOID.SERVER_AUTH
    ):
        return Role.TLS.kind
    unit_key = unit_public_key(certificate.public_key())
    if unit_key is not None:
        return Role.for_algorithm(KeyAlgorithm.of(unit_key)).kind
    return "other"


def describe_certificate(path: Path, certs_dir: Path | None) -> CertificateDescription:
    """A certificate's kind, holder, key id, validity, issuer, and revocation status."""
    certificate = read_certificate(path)
    public = certificate.public_key()
    unit_key = unit_public_key(public)
    issued_by_ca: bool | None = None
    revocation: RevocationStatus | None = None
    if certs_dir is not None:
        layout = PkiLayout(certs_dir)
        ca = read_certificate(layout.ca_cert)
        try:
            certificate.verify_directly_issued_by(ca)
            issued_by_ca = True
        except (ValueError, TypeError, InvalidSignature):
            issued_by_ca = certificate == ca  # the CA certificate itself
        crl = read_crl(layout.crl)
        verify_crl(crl, ca, str(layout.crl))
        entry = revocations_from_crl(crl).get(certificate.serial_number)
        revocation = RevocationStatus(
            crl=layout.crl,
            revoked=entry is not None and issued_by_ca,
            revoked_at=entry.revoked_at if entry and issued_by_ca else None,
            reason=entry.reason if entry and issued_by_ca else None,
        )
    return CertificateDescription(
        path=path,
        kind=_kind(certificate),
        algorithm=algorithm_name(public),
        units=tuple(identities(certificate)),
        key_id=key_id(unit_key) if unit_key is not None else None,
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        serial=certificate.serial_number,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        suites=(
            tuple(sorted(certified_suites(certificate, KeyAlgorithm.of(unit_key))))
            if unit_key is not None
            else ()
        ),
        issued_by_ca=issued_by_ca,
        revocation=revocation,
    )


def describe_private_key(path: Path, data: bytes) -> PrivateKeyDescription:
    """A private key's algorithm, the key id of its public half, and its file mode."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PKIError(f"{path}: an encrypted private key (exchange reads plain PEM)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PKIError(f"{path}: not a readable PEM private key") from None
    unit_key = unit_private_key(key)
    public = key.public_key()
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if unit_key is not None:
        algorithm = KeyAlgorithm.of(unit_key)
        kind, name, kid = (
            Role.for_algorithm(algorithm).kind,
            algorithm.value,
            key_id(unit_key.public_key()),
        )
    else:
        kind = Role.TLS.kind if isinstance(key, ec.EllipticCurvePrivateKey) else "other"
        name = algorithm_name(public)
        kid = None
    mode = file_mode(path)
    warning = None
    if readable_by_others(mode):
        warning = (
            f"mode {mode:04o}: the private key is readable by others than its owner; "
            f"run `chmod 600 {path}`"
        )
    return PrivateKeyDescription(
        path=path,
        algorithm=name,
        kind=kind,
        key_id=kid,
        public_key_sha256=hashlib.sha256(spki).hexdigest(),
        mode=mode,
        warning=warning,
    )


def describe_crl(path: Path, certs_dir: Path | None) -> CrlDescription:
    """A CRL's issuer, dates, entries, and whether the CA's signature on it verifies."""
    crl = read_crl(path)
    signature_valid: bool | None = None
    if certs_dir is not None:
        ca = read_certificate(PkiLayout(certs_dir).ca_cert)
        try:
            verify_crl(crl, ca, str(path))
            signature_valid = True
        except PKIError:
            signature_valid = False
    return CrlDescription(
        path=path,
        issuer=crl.issuer.rfc4514_string(),
        last_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        signature_valid=signature_valid,
        revocations=tuple(sorted(revocations_from_crl(crl).values(), key=lambda r: r.serial)),
    )


def describe(path: Path, certs_dir: Path | None = None) -> Description:
    """What the file at ``path`` is. ``certs_dir`` defaults to the nearest PKI folder above it."""
    data = read_bytes(path, "PKI")
    folder = certs_dir if certs_dir is not None else nearest_certs_dir(path)
    head = data.lstrip()[:64]
    if head.startswith(b"-----BEGIN") and b"PRIVATE KEY" in head:
        return describe_private_key(path, data)
    if head.startswith(b"-----BEGIN X509 CRL"):
        return describe_crl(path, folder)
    if head.startswith(b"-----BEGIN CERTIFICATE"):
        return describe_certificate(path, folder)
    if not head.startswith(b"-----BEGIN"):
        # DER: a certificate or a CRL
        try:
            x509.load_der_x509_certificate(data)
            return describe_certificate(path, folder)
        except ValueError:
            pass
        try:
            x509.load_der_x509_crl(data)
            return describe_crl(path, folder)
        except ValueError:
            pass
    raise PKIError(f"{path}: not a certificate, a CRL or a PEM private key")
