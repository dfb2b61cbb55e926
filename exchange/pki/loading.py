"""From certificate files to the core's plain data: the Directory and the Keyrings.

Everything read here is checked before it becomes an object: each key certificate
must be signed by the folder's CA (a foreign one is refused, naming the file), must
name in its SAN URI the unit whose folder holds it, and must carry the key usage of
its role; the CRL must be signed by the CA. Loading works with only the public parts
of other units (``ca/ca.crt``, ``ca/crl.pem``, their ``*.crt``), which is what a
node's container mounts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    mldsa,
    mlkem,
    rsa,
    x25519,
)
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)

from exchange.core.keys import (
    CertifiedKey,
    Directory,
    KeyAlgorithm,
    Keyring,
    PrivateKey,
    PublicKey,
    Revocation,
    key_id,
)
from exchange.errors import CertificateExpired, PKIError
from exchange.logs import get_logger
from exchange.pki.errors import CertificateNotYetValid, ForeignCertificate, InvalidCrl
from exchange.pki.files import (
    file_mode,
    read_certificate,
    read_crl,
    read_private_key,
    readable_by_others,
)
from exchange.pki.layout import HUB, HUB_KEY_ALGORITHMS, PkiLayout, Role
from exchange.pki.profiles import certified_suites, decode_reason_text, has_key_usage, identities

log = get_logger("exchange.pki")

#: public keys that can sign a CRL (what ``is_signature_valid`` accepts)
_ISSUER_PUBLIC_KEYS = (
    ec.EllipticCurvePublicKey,
    rsa.RSAPublicKey,
    dsa.DSAPublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    mldsa.MLDSA44PublicKey,
    mldsa.MLDSA65PublicKey,
    mldsa.MLDSA87PublicKey,
)


# -- the CA and its CRL ----------------------------------------------------------------------


def verify_issued_by(certificate: x509.Certificate, ca: x509.Certificate, source: str) -> None:
    """Refuse ``certificate`` (:class:`ForeignCertificate`) unless the CA signed it."""
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ForeignCertificate(
            f"{source}: not issued by this folder's CA ({ca.subject.rfc4514_string()}); "
            "refusing a certificate from another CA"
        ) from None


def verify_crl(crl: x509.CertificateRevocationList, ca: x509.Certificate, source: str) -> None:
    """Refuse a CRL (:class:`InvalidCrl`) unless the CA signed it: revocations fail closed."""
    public_key = ca.public_key()
    valid = False
    if crl.issuer == ca.subject and isinstance(public_key, _ISSUER_PUBLIC_KEYS):
        try:
            valid = crl.is_signature_valid(public_key)
        except (TypeError, ValueError):
            valid = False
    if not valid:
        raise InvalidCrl(
            f"{source}: the CRL's signature does not verify against the CA "
            f"({ca.subject.rfc4514_string()}); it was altered or comes from another CA"
        )


def revocations_from_crl(crl: x509.CertificateRevocationList) -> dict[int, Revocation]:
    """The CRL's entries as the core's :class:`Revocation` values (reason as a sentence)."""
    revocations: dict[int, Revocation] = {}
    for entry in crl:
        reason = decode_reason_text(entry)
        if reason is None:
            try:
                code = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
                reason = code.value
            except x509.ExtensionNotFound:
                reason = "no reason given"
        revocations[entry.serial_number] = Revocation(
            serial=entry.serial_number, revoked_at=entry.revocation_date_utc, reason=reason
        )
    return revocations


@dataclass(frozen=True)
class TrustAnchor:
    """The CA certificate and its verified CRL: what every check starts from."""

    certificate: x509.Certificate
    crl: x509.CertificateRevocationList
    revocations: Mapping[int, Revocation]


def load_trust_anchor(certs_dir: Path) -> TrustAnchor:
    """``ca/ca.crt`` and ``ca/crl.pem`` of ``certs_dir``, the CRL's signature verified."""
    layout = PkiLayout(certs_dir)
    ca = read_certificate(layout.ca_cert)
    crl = read_crl(layout.crl)
    verify_crl(crl, ca, str(layout.crl))
    return TrustAnchor(certificate=ca, crl=crl, revocations=revocations_from_crl(crl))


def check_validity(certificate: x509.Certificate, now: datetime, what: str) -> None:
    """:class:`CertificateExpired` or :class:`CertificateNotYetValid` unless valid at ``now``."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now < start:
        raise CertificateNotYetValid(
            f"{what} is valid from {start:%Y-%m-%d %H:%M} UTC, not yet at {now:%Y-%m-%d %H:%M} "
            "UTC (for an exercise set in the past, issue with --valid-from)"
        )
    if now > end:
        raise CertificateExpired(
            f"{what} expired on {end:%Y-%m-%d %H:%M} UTC (checked at {now:%Y-%m-%d %H:%M} UTC)"
        )


# -- unit key certificates ---------------------------------------------------------------------


def unit_public_key(public: CertificatePublicKeyTypes) -> PublicKey | None:
    """``public`` if it is a unit key (Ed25519, ML-DSA-65, X25519, ML-KEM-768), else None."""
    if isinstance(
        public,
        ed25519.Ed25519PublicKey
        | mldsa.MLDSA65PublicKey
        | x25519.X25519PublicKey
        | mlkem.MLKEM768PublicKey,
    ):
        return public
    return None


def unit_private_key(key: PrivateKeyTypes) -> PrivateKey | None:
    """``key`` if it is a unit key's private half, None otherwise (a TLS key, say)."""
    if isinstance(
        key,
        ed25519.Ed25519PrivateKey
        | mldsa.MLDSA65PrivateKey
        | x25519.X25519PrivateKey
        | mlkem.MLKEM768PrivateKey,
    ):
        return key
    return None


def certified_key(
    path: Path, subject: str, ca: x509.Certificate, role: Role | None = None
) -> CertifiedKey:
    """Read and check one key certificate of ``subject``; ``role`` is the one its name says.

    Refuses, naming ``path``: another CA's certificate, a certificate naming someone
    else than ``subject``, a key of the wrong algorithm or without the key usage of
    its role.
    """
    certificate = read_certificate(path)
    verify_issued_by(certificate, ca, str(path))
    named = identities(certificate)
    if named != [subject]:
        holder = ", ".join(named) or "no exchange identity"
        raise PKIError(f"{path}: the certificate names {holder}, but lies in {subject}'s folder")
    public = unit_public_key(certificate.public_key())
    if public is None:
        raise PKIError(
            f"{path}: holds a {type(certificate.public_key()).__name__}, not a unit key "
            "(Ed25519, ML-DSA-65, X25519 or ML-KEM-768)"
        )
    algorithm = KeyAlgorithm.of(public)
    if role is not None and role.algorithm is not algorithm:
        raise PKIError(f"{path}: holds a {algorithm.value} key, but the file is for {role.value}")
    actual_role = Role.for_algorithm(algorithm)
    if not has_key_usage(certificate, actual_role):
        raise PKIError(f"{path}: its KeyUsage does not allow a {actual_role.kind} key")
    # A certificate cannot outlive the CA that vouches for it.
    not_before = max(certificate.not_valid_before_utc, ca.not_valid_before_utc)
    not_after = min(certificate.not_valid_after_utc, ca.not_valid_after_utc)
    return CertifiedKey(
        unit=subject,
        algorithm=algorithm,
        key_id=key_id(public),
        public_key=public,
        serial=certificate.serial_number,
        not_before=not_before,
        not_after=not_after,
        suites=certified_suites(certificate, algorithm),
    )


def _key_certificate_files(layout: PkiLayout, subject: str) -> Iterator[tuple[Path, Role | None]]:
    """The current key certificates of ``subject``, then the rotated-out ones."""
    algorithms = HUB_KEY_ALGORITHMS if subject == HUB else tuple(KeyAlgorithm)
    for algorithm in algorithms:
        role = Role.for_algorithm(algorithm)
        path = layout.cert_path(subject, role)
        if path.is_file():
            yield path, role
    previous = layout.previous_dir(subject)
    if previous.is_dir():
        for path in sorted(previous.glob("*.crt")):
            # rotated-out TLS certificates are kept for the record, not as unit keys
            if not path.name.startswith(f"{Role.TLS.value}-"):
                yield path, None


def _subject_keys(layout: PkiLayout, subject: str, ca: x509.Certificate) -> list[CertifiedKey]:
    by_key_id: dict[str, CertifiedKey] = {}
    for path, role in _key_certificate_files(layout, subject):
        cert = certified_key(path, subject, ca, role)
        kept = by_key_id.get(cert.key_id)
        # the same key certified twice (suites widened): keep the newest certificate
        if kept is None or (cert.not_before, cert.serial) > (kept.not_before, kept.serial):
            by_key_id[cert.key_id] = cert
    # newest first per algorithm; the serial breaks ties (higher = issued later)
    return sorted(by_key_id.values(), key=lambda c: (c.not_before, c.serial), reverse=True)


def load_directory(certs_dir: Path, *, now: datetime | None = None) -> Directory:
    """Every unit's certified keys (current and rotated-out), the hub's as ``HUB``, and the CRL.

    Only public files are read, so this works in a node's container where the other
    units' private keys are absent. With ``now``, a CA certificate not valid at that
    moment is refused up front (the keys' own validity is checked when they are used).
    """
    layout = PkiLayout(certs_dir)
    anchor = load_trust_anchor(certs_dir)
    if now is not None:
        check_validity(anchor.certificate, now, f"the CA certificate {layout.ca_cert}")
    keys: dict[str, tuple[CertifiedKey, ...]] = {}
    for subject in [*layout.unit_ids(), HUB]:
        found = _subject_keys(layout, subject, anchor.certificate)
        if found:
            keys[subject] = tuple(found)
    log.debug("pki.directory_loaded", units=len(keys), revocations=len(anchor.revocations))
    return Directory(keys=keys, revocations=anchor.revocations)


# -- private keys ----------------------------------------------------------------------------------


def _private_key_files(layout: PkiLayout, subject: str) -> Iterator[Path]:
    algorithms = HUB_KEY_ALGORITHMS if subject == HUB else tuple(KeyAlgorithm)
    for algorithm in algorithms:
        path = layout.key_path(subject, Role.for_algorithm(algorithm))
        if path.is_file():
            yield path
    previous = layout.previous_dir(subject)
    if previous.is_dir():
        for path in sorted(previous.glob("*.key")):
            if not path.name.startswith(f"{Role.TLS.value}-"):
                yield path


def read_unit_private_key(path: Path) -> PrivateKey:
    """A unit key's private half from ``path``; a TLS or other key is a :class:`PKIError`."""
    key = unit_private_key(read_private_key(path))
    if key is None:
        raise PKIError(f"{path}: not a unit key (Ed25519, ML-DSA-65, X25519 or ML-KEM-768)")
    mode = file_mode(path)
    if readable_by_others(mode):
        log.warning("pki.key_file_too_open", path=str(path), mode=f"{mode:04o}")
    return key


def _keyring(certs_dir: Path, subject: str) -> Keyring:
    layout = PkiLayout(certs_dir)
    folder = layout.subject_dir(subject)
    if not folder.is_dir():
        raise PKIError(f"{folder}: no key folder for {subject} (run `exchange pki init`)")
    private_keys: dict[str, PrivateKey] = {}
    for path in _private_key_files(layout, subject):
        key = read_unit_private_key(path)
        private_keys[key_id(key.public_key())] = key
    if not private_keys:
        raise PKIError(f"{folder}: no private keys of {subject} here")
    return Keyring(unit=subject, private_keys=private_keys)


def load_keyring(certs_dir: Path, unit: str) -> Keyring:
    """``unit``'s private keys by key id, current and rotated-out (``previous/``).

    The rotated-out keys are what opens messages sealed before a rotation.
    """
    return _keyring(certs_dir, unit)


def load_hub_keyring(certs_dir: Path) -> Keyring:
    """The hub's signing keys (Ed25519, ML-DSA-65) by key id, as unit :data:`HUB`."""
    return _keyring(certs_dir, HUB)
