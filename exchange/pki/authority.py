"""The certificate authority: a key, its self-signed certificate, a serial counter and a CRL.

The CA's bookkeeping lives in ``ca/state.json``: the next serial number, every
certificate issued (serial, holder, role, key id, validity) and every revocation with
its reason as a sentence (a CRL can only carry an RFC 5280 reason *code*; the
sentence also travels in a private CRL entry extension so nodes without
``state.json`` can show it). Every change to the CA happens under a file lock, so two
``exchange pki`` commands cannot hand out the same serial number.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from exchange.errors import PKIError
from exchange.files import write_atomic
from exchange.logs import get_logger
from exchange.pki.errors import CaUnavailable
from exchange.pki.files import (
    read_certificate,
    read_private_key,
    write_certificate,
    write_crl,
    write_private_key,
)
from exchange.pki.layout import PkiLayout, Role
from exchange.pki.profiles import (
    HUB_DEFAULT_HOSTS,
    ca_extensions,
    encode_reason_text,
    is_ca,
    leaf_extensions,
    subject_name,
)

log = get_logger("exchange.pki")

#: a CA we generate lives at least this long, so that rotations years later still fit in it
CA_MINIMUM_LIFETIME = timedelta(days=3650)

STATE_VERSION = 1


@dataclass(frozen=True)
class IssuedCertificate:
    """One line of the CA's issue register."""

    serial: int
    subject: str
    role: str
    key_id: str | None
    not_before: datetime
    not_after: datetime
    issued_at: datetime


@dataclass(frozen=True)
class RevocationRecord:
    """A revocation as the CA recorded it: when, the sentence, and the RFC 5280 code."""

    serial: int
    revoked_at: datetime
    reason: str
    code: x509.ReasonFlags = x509.ReasonFlags.unspecified


@dataclass
class CaState:
    """The CA's mutable register, persisted in ``ca/state.json``."""

    #: whether ``exchange pki init`` generated this CA (``--force`` replaces only those)
    generated: bool
    next_serial: int
    crl_number: int = 0
    issued: list[IssuedCertificate] = field(default_factory=list)
    revoked: dict[int, RevocationRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def issued(entry: IssuedCertificate) -> dict[str, Any]:
            data = asdict(entry)
            for name in ("not_before", "not_after", "issued_at"):
                data[name] = data[name].isoformat()
            return data

        return {
            "version": STATE_VERSION,
            "generated": self.generated,
            "next_serial": self.next_serial,
            "crl_number": self.crl_number,
            "issued": [issued(entry) for entry in self.issued],
            "revoked": [
                {
                    "serial": r.serial,
                    "revoked_at": r.revoked_at.isoformat(),
                    "reason": r.reason,
                    "code": r.code.value,
                }
                for r in sorted(self.revoked.values(), key=lambda r: r.serial)
            ],
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> CaState:
        """Parse ``state.json``; a malformed file is a :class:`PKIError` naming it."""
        version = data.get("version") if isinstance(data, dict) else None
        if version != STATE_VERSION:
            raise PKIError(f"{source}: not a CA state file of version {STATE_VERSION}")
        try:
            return cls(
                generated=bool(data["generated"]),
                next_serial=int(data["next_serial"]),
                crl_number=int(data.get("crl_number", 0)),
                issued=[
                    IssuedCertificate(
                        serial=int(e["serial"]),
                        subject=str(e["subject"]),
                        role=str(e["role"]),
                        key_id=e.get("key_id"),
                        not_before=datetime.fromisoformat(e["not_before"]),
                        not_after=datetime.fromisoformat(e["not_after"]),
                        issued_at=datetime.fromisoformat(e["issued_at"]),
                    )
                    for e in data.get("issued", [])
                ],
                revoked={
                    int(r["serial"]): RevocationRecord(
                        serial=int(r["serial"]),
                        revoked_at=datetime.fromisoformat(r["revoked_at"]),
                        reason=str(r["reason"]),
                        code=x509.ReasonFlags(r.get("code", "unspecified")),
                    )
                    for r in data.get("revoked", [])
                },
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise PKIError(f"{source}: not a valid CA state file ({error!r})") from None

    def find(self, serial: int) -> IssuedCertificate | None:
        """The register line of ``serial``, if this CA issued it."""
        for entry in self.issued:
            if entry.serial == serial:
                return entry
        return None


def signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    """The hash to sign with: SHA-256 for ECDSA/RSA/DSA, none for EdDSA and ML-DSA."""
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | dsa.DSAPrivateKey):
        return hashes.SHA256()
    return None


def _as_issuer_key(key: object, source: str) -> CertificateIssuerPrivateKeyTypes:
    if isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | dsa.DSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey
        | mldsa.MLDSA44PrivateKey
        | mldsa.MLDSA65PrivateKey
        | mldsa.MLDSA87PrivateKey,
    ):
        return key
    raise CaUnavailable(f"{source}: a {type(key).__name__} cannot sign certificates")


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def same_public_key(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    """Whether two public keys are the same key (compared as SubjectPublicKeyInfo)."""
    return _spki(a) == _spki(b)


@contextlib.contextmanager
def locked(layout: PkiLayout) -> Iterator[None]:
    """Hold the CA's lock file while changing anything in the PKI folder."""
    layout.ca_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class CertificateAuthority:
    """Issues and revokes certificates for one PKI folder (hold :func:`locked` around use)."""

    def __init__(
        self,
        layout: PkiLayout,
        certificate: x509.Certificate,
        private_key: CertificateIssuerPrivateKeyTypes,
        state: CaState,
    ) -> None:
        self.layout = layout
        self.certificate = certificate
        self._private_key = private_key
        self.state = state

    # -- creation and loading ---------------------------------------------------------------

    @classmethod
    def create(
        cls, layout: PkiLayout, not_before: datetime, not_after: datetime
    ) -> CertificateAuthority:
        """A new ECDSA P-256 root CA, written to ``ca/`` with an empty signed CRL."""
        key = ec.generate_private_key(ec.SECP256R1())
        state = CaState(generated=True, next_serial=1)
        serial = state.next_serial
        state.next_serial += 1
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "exchange"),
                x509.NameAttribute(NameOID.COMMON_NAME, "exchange development root CA"),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        for extension in ca_extensions():
            builder = builder.add_extension(extension.value, critical=extension.critical)
        certificate = builder.sign(key, hashes.SHA256())
        write_private_key(layout.ca_key, key)
        write_certificate(layout.ca_cert, certificate)
        authority = cls(layout, certificate, key, state)
        authority.save_state()
        authority.sign_crl()
        log.info("pki.ca_created", serial=serial, not_after=not_after.isoformat())
        return authority

    @classmethod
    def open(cls, layout: PkiLayout) -> CertificateAuthority:
        """The CA of ``layout``: ours, or one you brought (``ca.crt`` + ``ca.key`` dropped in)."""
        if not layout.ca_key.exists():
            raise CaUnavailable(
                f"{layout.ca_key}: no CA private key here, so this folder cannot issue "
                "certificates (a node's folder holds only ca.crt and crl.pem)"
            )
        certificate = read_certificate(layout.ca_cert)
        if not is_ca(certificate):
            raise CaUnavailable(f"{layout.ca_cert}: not a CA certificate (CA:true missing)")
        private_key = _as_issuer_key(read_private_key(layout.ca_key), str(layout.ca_key))
        if not same_public_key(private_key.public_key(), certificate.public_key()):
            raise CaUnavailable(f"{layout.ca_key}: does not match the CA certificate ca.crt")
        if layout.state.exists():
            try:
                raw = json.loads(layout.state.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise PKIError(f"{layout.state}: cannot read the CA state ({error})") from None
            state = CaState.from_json(raw, str(layout.state))
        else:
            # A CA brought from elsewhere may have issued small serials already: start
            # our counter at a random 63-bit offset so that ours cannot collide.
            state = CaState(generated=False, next_serial=secrets.randbits(62) | (1 << 62))
        return cls(layout, certificate, private_key, state)

    # -- properties ----------------------------------------------------------------------------

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def window(self, not_before: datetime, not_after: datetime) -> tuple[datetime, datetime]:
        """The validity a new certificate gets: the one asked for, ending with the CA at latest.

        A start before the CA's own is refused: a certificate the CA could not have
        vouched for then would silently not cover the exercise dates asked for.
        """
        if not_before < self.not_before:
            raise PKIError(
                f"{self.layout.ca_cert}: the CA is valid from {self.not_before:%Y-%m-%d}, "
                f"so it cannot certify keys from {not_before:%Y-%m-%d}; make a new "
                "development CA with `exchange pki init --force --valid-from ...`"
            )
        end = min(not_after, self.not_after)
        if end <= not_before:
            raise PKIError(
                f"{self.layout.ca_cert}: the CA expires on {self.not_after:%Y-%m-%d}, "
                f"before {not_before:%Y-%m-%d}"
            )
        return not_before, end

    # -- issuing ----------------------------------------------------------------------------------

    def issue(
        self,
        subject: str,
        role: Role,
        public_key: CertificatePublicKeyTypes,
        *,
        not_before: datetime,
        not_after: datetime,
        key_id: str | None = None,
        suites: Sequence[str] = (),
        hosts: Sequence[str] = (),
    ) -> x509.Certificate:
        """Certify ``public_key`` for ``subject`` in ``role``; records it in the register."""
        start, end = self.window(not_before, not_after)
        serial = self.state.next_serial
        self.state.next_serial += 1
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject_name(subject))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._issuer_public_key()),
                critical=False,
            )
        )
        for extension in leaf_extensions(
            subject, role, suites=suites, hosts=tuple(hosts) or HUB_DEFAULT_HOSTS
        ):
            builder = builder.add_extension(extension.value, critical=extension.critical)
        certificate = builder.sign(self._private_key, signature_hash(self._private_key))
        self.state.issued.append(
            IssuedCertificate(
                serial=serial,
                subject=subject,
                role=role.value,
                key_id=key_id,
                not_before=start,
                not_after=end,
                issued_at=datetime.now(UTC),
            )
        )
        self.save_state()
        log.debug("pki.issued", unit=subject, role=role.value, serial=serial, key_id=key_id)
        return certificate

    def _issuer_public_key(self) -> CertificateIssuerPublicKeyTypes:
        return self._private_key.public_key()

    # -- revocation ---------------------------------------------------------------------------

    def revoke(
        self,
        serial: int,
        reason: str,
        *,
        at: datetime,
        code: x509.ReasonFlags = x509.ReasonFlags.unspecified,
        subject: str = "",
    ) -> tuple[RevocationRecord, bool]:
        """Record the revocation of ``serial``; returns it and whether it is new.

        A certificate already revoked keeps its first date and reason. Call
        :meth:`sign_crl` afterwards (once for several revocations).
        """
        existing = self.state.revoked.get(serial)
        if existing is not None:
            return existing, False
        record = RevocationRecord(serial=serial, revoked_at=at, reason=reason, code=code)
        self.state.revoked[serial] = record
        self.save_state()
        log.info("pki.revoked", unit=subject, serial=serial, code=code.value)
        return record, True

    def sign_crl(self) -> x509.CertificateRevocationList:
        """Re-sign the CRL from the register and write ``ca/crl.pem``."""
        now = datetime.now(UTC)
        self.state.crl_number += 1
        # Nothing here checks next_update (exercise clocks run years in the past); give
        # tools such as `openssl verify -crl_check` a CRL that lasts as long as the CA.
        next_update = max(self.not_after, now + timedelta(days=1))
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(self.state.crl_number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._issuer_public_key()),
                critical=False,
            )
        )
        for record in sorted(self.state.revoked.values(), key=lambda r: r.serial):
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(record.serial)
                .revocation_date(record.revoked_at)
                .add_extension(encode_reason_text(record.reason), critical=False)
            )
            if record.code is not x509.ReasonFlags.unspecified:
                # RFC 5280 5.3.1: "unspecified" SHOULD NOT be encoded
                entry = entry.add_extension(x509.CRLReason(record.code), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(self._private_key, signature_hash(self._private_key))
        write_crl(self.layout.crl, crl)
        self.save_state()
        return crl

    def save_state(self) -> None:
        """Write ``ca/state.json`` atomically."""
        text = json.dumps(self.state.to_json(), indent=2) + "\n"
        write_atomic(self.layout.state, text.encode("utf-8"))
