"""Mutual TLS: the material gRPC needs, and the check of a peer's certificate.

Identity comes from the TLS peer certificate, never from a field the caller fills in:
:func:`check_peer_certificate` returns the unit id its SAN URI names
(``urn:exchange:unit:AL.CTD``; ``urn:exchange:hub`` gives :data:`HUB`) only once the
certificate is shown to come from the CA, valid at ``now``, unrevoked, and made for
TLS in that direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from exchange.core.keys import Revocation
from exchange.errors import CertificateRevoked, PKIError
from exchange.pki.authority import same_public_key
from exchange.pki.errors import UnsuitableCertificate, UntrustedCertificate
from exchange.pki.files import parse_certificate, read_bytes, read_private_key
from exchange.pki.layout import PkiLayout, Role
from exchange.pki.loading import check_validity, revocations_from_crl, verify_crl
from exchange.pki.profiles import has_extended_usage, identities


@dataclass(frozen=True, repr=False)
class TlsMaterial:
    """PEM bytes for ``grpc.ssl_server_credentials`` / ``grpc.ssl_channel_credentials``.

    ``repr`` is withheld so a private key never reaches a log line or a traceback.
    """

    private_key_pem: bytes
    certificate_chain_pem: bytes
    root_ca_pem: bytes

    def __repr__(self) -> str:
        return "TlsMaterial(<withheld>)"


def load_tls_material(certs_dir: Path, unit: str) -> TlsMaterial:
    """The TLS key, certificate and root CA of ``unit`` (or the hub, as ``"HUB"``).

    Checks that the key matches the certificate and that the CA issued it, so a
    misplaced file fails here with its name rather than in a TLS handshake.
    """
    layout = PkiLayout(certs_dir)
    key_path, cert_path = layout.key_path(unit, Role.TLS), layout.cert_path(unit, Role.TLS)
    key_pem = read_bytes(key_path, "TLS private key")
    cert_pem = read_bytes(cert_path, "TLS certificate")
    root_pem = read_bytes(layout.ca_cert, "CA certificate")
    key = read_private_key(key_path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path}: a TLS key must be ECDSA, not {type(key).__name__}")
    certificate = parse_certificate(cert_pem, str(cert_path))
    if not same_public_key(key.public_key(), certificate.public_key()):
        raise PKIError(f"{key_path}: does not match the certificate {cert_path.name}")
    ca = parse_certificate(root_pem, str(layout.ca_cert))
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError(f"{cert_path}: not issued by the CA in {layout.ca_cert}") from None
    return TlsMaterial(
        private_key_pem=key_pem,
        certificate_chain_pem=certificate.public_bytes(serialization.Encoding.PEM),
        root_ca_pem=ca.public_bytes(serialization.Encoding.PEM),
    )


class TlsUsage(StrEnum):
    """Which side of the connection the peer certificate authenticates."""

    CLIENT = "client"  # a node connecting to the hub: clientAuth
    SERVER = "server"  # the hub answering a node: serverAuth

    @property
    def oid(self) -> x509.ObjectIdentifier:
        if self is TlsUsage.CLIENT:
            return ExtendedKeyUsageOID.CLIENT_AUTH
        return ExtendedKeyUsageOID.SERVER_AUTH


class PeerVerifier:
    """Checks peer certificates against one CA and its CRL (verified once, at construction).

    The hub builds one at start-up (and again when the CRL changes) and calls
    :meth:`check` for each connection.
    """

    def __init__(self, ca_certificate: x509.Certificate, crl: x509.CertificateRevocationList):
        verify_crl(crl, ca_certificate, "the CRL")
        self.ca_certificate = ca_certificate
        self.revocations: dict[int, Revocation] = revocations_from_crl(crl)

    def check(
        self,
        certificate: bytes | x509.Certificate,
        now: datetime,
        usage: TlsUsage = TlsUsage.CLIENT,
    ) -> str:
        """The unit id (or ``HUB``) of a peer certificate (DER or PEM), once it passes.

        Raises :class:`UntrustedCertificate` (another CA), :class:`CertificateExpired`
        or its subclass :class:`CertificateNotYetValid`, :class:`CertificateRevoked`, or
        :class:`UnsuitableCertificate` (no TLS usage for ``usage``, no exchange identity).
        """
        if isinstance(certificate, bytes):
            try:
                certificate = parse_certificate(certificate, "the peer certificate")
            except PKIError as error:
                raise UntrustedCertificate(error.message) from None
        subject = certificate.subject.rfc4514_string()
        try:
            certificate.verify_directly_issued_by(self.ca_certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise UntrustedCertificate(
                f"the peer certificate ({subject}) was not issued by the exchange's CA"
            ) from None
        check_validity(certificate, now, f"the peer certificate ({subject})")
        revocation = self.revocations.get(certificate.serial_number)
        if revocation is not None:
            raise CertificateRevoked(
                f"the peer certificate ({subject}, serial {certificate.serial_number}) was "
                f"revoked on {revocation.revoked_at:%Y-%m-%d}: {revocation.reason}"
            )
        if not has_extended_usage(certificate, usage.oid):
            raise UnsuitableCertificate(
                f"the peer certificate ({subject}) is not a TLS {usage.value} certificate"
            )
        named = identities(certificate)
        if len(named) != 1:
            raise UnsuitableCertificate(
                f"the peer certificate ({subject}) must name exactly one exchange identity "
                f"in a SAN URI, it names {len(named)}"
            )
        return named[0]


def check_peer_certificate(
    certificate: bytes | x509.Certificate,
    ca_certificate: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: datetime,
    usage: TlsUsage = TlsUsage.CLIENT,
) -> str:
    """The unit id a TLS peer certificate proves, or a precise error (see :class:`PeerVerifier`).

    Verifies the CRL's signature on every call; a server checking many connections
    should keep a :class:`PeerVerifier` instead.
    """
    return PeerVerifier(ca_certificate, crl).check(certificate, now, usage)
