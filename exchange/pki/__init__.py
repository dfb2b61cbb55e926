"""The exchange's PKI: a CA, TLS certificates, and X.509-certified unit keys.

Public surface (everything else in the package may change):

- making and keeping a PKI folder: :func:`init_pki`, :func:`issue_subject`,
  :func:`revoke_subject`, :func:`revoke_serial`, :class:`Validity`;
- loading it for the envelope, the hub and the nodes: :func:`load_directory`,
  :func:`load_keyring`, :func:`load_hub_keyring`, :func:`load_tls_material`,
  :func:`load_trust_anchor`;
- checking a TLS peer: :func:`check_peer_certificate`, :class:`PeerVerifier`;
- describing a file: :func:`describe`.

The folder layout is in :mod:`exchange.pki.layout` and certs/README.md.
"""

from __future__ import annotations

from exchange.pki.errors import (
    CaUnavailable,
    CertificateNotYetValid,
    ForeignCertificate,
    InvalidCrl,
    UnsuitableCertificate,
    UntrustedCertificate,
)
from exchange.pki.inspection import describe
from exchange.pki.layout import HUB, PkiLayout, Role
from exchange.pki.loading import (
    TrustAnchor,
    load_directory,
    load_hub_keyring,
    load_keyring,
    load_trust_anchor,
)
from exchange.pki.provisioning import (
    DEFAULT_VALID_DAYS,
    Outcome,
    ProvisioningReport,
    Validity,
    init_pki,
    issue_subject,
)
from exchange.pki.revocation import RevocationReport, revoke_serial, revoke_subject
from exchange.pki.tls import (
    PeerVerifier,
    TlsMaterial,
    TlsUsage,
    check_peer_certificate,
    load_tls_material,
)

__all__ = [
    "DEFAULT_VALID_DAYS",
    "HUB",
    "CaUnavailable",
    "CertificateNotYetValid",
    "ForeignCertificate",
    "InvalidCrl",
    "Outcome",
    "PeerVerifier",
    "PkiLayout",
    "ProvisioningReport",
    "RevocationReport",
    "Role",
    "TlsMaterial",
    "TlsUsage",
    "TrustAnchor",
    "UnsuitableCertificate",
    "UntrustedCertificate",
    "Validity",
    "check_peer_certificate",
    "describe",
    "init_pki",
    "issue_subject",
    "load_directory",
    "load_hub_keyring",
    "load_keyring",
    "load_tls_material",
    "load_trust_anchor",
    "revoke_serial",
    "revoke_subject",
]
