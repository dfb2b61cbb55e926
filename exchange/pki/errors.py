"""Precise PKI errors, inside the one family of :mod:`exchange.errors`.

Callers catch the family (:class:`~exchange.errors.PKIError` for files,
:class:`~exchange.errors.EnvelopeError` kinds for certificate checks); tests assert
the exact kind. Expired and revoked certificates reuse
:class:`~exchange.errors.CertificateExpired` and
:class:`~exchange.errors.CertificateRevoked`, so the envelope code and the TLS peer
check report them the same way.
"""

from __future__ import annotations

from exchange.errors import CertificateExpired, EnvelopeError, PKIError


class UntrustedCertificate(EnvelopeError):
    """A certificate was not issued by the exchange's CA (or its signature is broken)."""

    code = "PKI-UNTRUSTED"


class ForeignCertificate(PKIError, UntrustedCertificate):
    """A certificate file in the PKI folder was not issued by the folder's CA.

    Both a bad file (a :class:`PKIError` naming it) and an untrusted certificate: a
    verification failure, hence exit code 3 rather than the 2 of a merely bad file.
    """

    exit_code = 3
    code = "PKI-FOREIGN-CA"


class CertificateNotYetValid(CertificateExpired):
    """A certificate's validity period has not started yet at the time checked."""

    code = "PKI-CERT-NOT-YET-VALID"


class UnsuitableCertificate(EnvelopeError):
    """A certificate from the CA, but not for this use (wrong EKU, no exchange identity)."""

    code = "PKI-CERT-UNSUITABLE"


class InvalidCrl(PKIError):
    """The CRL is not signed by the CA (tampered, or from another CA): fail closed."""

    exit_code = 3
    code = "PKI-CRL-INVALID"


class CaUnavailable(PKIError):
    """The CA cannot issue here: its private key or certificate is missing or unusable."""

    code = "PKI-CA-UNAVAILABLE"
