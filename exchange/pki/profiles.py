"""What each kind of certificate contains: names, key usages, identities, suites.

One place decides the certificate profiles, so issuing (:mod:`exchange.pki.authority`)
and checking (:mod:`exchange.pki.loading`, :mod:`exchange.pki.tls`) agree:

- the CA: ``CA:true``, keyCertSign and cRLSign;
- TLS: ECDSA P-256, serverAuth+clientAuth for the hub, clientAuth for a unit;
- unit keys: digitalSignature (Ed25519, ML-DSA-65), keyAgreement (X25519),
  keyEncipherment (ML-KEM-768), and the suites the key is certified for.

Every certificate but the CA's names its holder in a SAN URI, ``urn:exchange:unit:AL.CTD``
or ``urn:exchange:hub``: identity comes from there, never from a folder name or a
field the caller fills in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exchange.core.keys import KeyAlgorithm
from exchange.core.suites import SUITES
from exchange.pki.layout import HUB, Role

#: A UUID-derived OID arc (ITU-T X.667, ``2.25.<uuid>``): private OIDs without registration.
EXCHANGE_ARC = "2.25.96050343720086817692467401268175842576"

#: Each suite is a certificate policy: a key's certificate lists the suites it may serve.
SUITE_POLICY_OIDS: dict[str, x509.ObjectIdentifier] = {
    "classic-2026": x509.ObjectIdentifier(f"{EXCHANGE_ARC}.1.1"),
    "hybrid-pq-2026": x509.ObjectIdentifier(f"{EXCHANGE_ARC}.1.2"),
}
_SUITE_OF_POLICY = {oid: suite for suite, oid in SUITE_POLICY_OIDS.items()}

#: CRL entry extension carrying the revocation reason as text (RFC 5280 reason codes
#: are an enum; a liaison officer wants the sentence).
REVOCATION_TEXT_OID = x509.ObjectIdentifier(f"{EXCHANGE_ARC}.2.1")

UNIT_URI_PREFIX = "urn:exchange:unit:"
HUB_URI = "urn:exchange:hub"

#: the hub's TLS names: local runs and the compose service name
HUB_DEFAULT_HOSTS = ("localhost", "hub", "127.0.0.1", "::1")

#: the longest revocation reason kept in the CRL (the full text stays in state.json)
MAX_REASON_TEXT = 1000


def subject_uri(subject: str) -> str:
    """The SAN URI naming ``subject`` (a unit id or :data:`HUB`)."""
    return HUB_URI if subject == HUB else f"{UNIT_URI_PREFIX}{subject}"


def subject_name(subject: str) -> x509.Name:
    """The subject DN of a unit's or the hub's certificates: CN = the unit id."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "exchange"),
            x509.NameAttribute(NameOID.COMMON_NAME, subject),
        ]
    )


def identities(certificate: x509.Certificate) -> list[str]:
    """The exchange identities a certificate's SAN URIs name (unit ids, or :data:`HUB`)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    found: list[str] = []
    for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
        if uri == HUB_URI:
            found.append(HUB)
        elif uri.startswith(UNIT_URI_PREFIX) and len(uri) > len(UNIT_URI_PREFIX):
            found.append(uri[len(UNIT_URI_PREFIX) :])
    return found


def hub_alternative_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for the hub's TLS certificate: DNS names, IP addresses, its URI."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # keep order, drop repeats
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    names.append(x509.UniformResourceIdentifier(HUB_URI))
    return names


def certificate_hosts(certificate: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses a TLS certificate is valid for, as strings."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    dns = set(san.value.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)}
    return dns | ips


# -- suites --------------------------------------------------------------------------------


def suites_for(algorithm: KeyAlgorithm, chosen: Iterable[str]) -> frozenset[str]:
    """The chosen suites that use ``algorithm``: what its certificate certifies it for."""
    return frozenset(
        suite_id
        for suite_id in chosen
        if algorithm in (*SUITES[suite_id].signature_algorithms, *SUITES[suite_id].kem_algorithms)
    )


def certified_suites(certificate: x509.Certificate, algorithm: KeyAlgorithm) -> frozenset[str]:
    """The suites a key certificate lists.

    A certificate without the policies extension (one your own CA issued without
    knowing about suites) serves every suite that uses its algorithm; one that has the
    extension serves exactly the suites it lists (unknown policy OIDs are ignored).
    """
    try:
        policies = certificate.extensions.get_extension_for_class(x509.CertificatePolicies)
    except x509.ExtensionNotFound:
        return suites_for(algorithm, SUITES)
    return frozenset(
        _SUITE_OF_POLICY[p.policy_identifier]
        for p in policies.value
        if p.policy_identifier in _SUITE_OF_POLICY
    )


# -- extensions by role ----------------------------------------------------------------------


@dataclass(frozen=True)
class Extension:
    """One extension to put into a certificate, with its criticality."""

    value: x509.ExtensionType
    critical: bool


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def ca_extensions() -> list[Extension]:
    """Extensions of the root CA (path length 0: it signs end-entity certificates only)."""
    return [
        Extension(x509.BasicConstraints(ca=True, path_length=0), critical=True),
        Extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True),
    ]


def key_usage_for(role: Role) -> x509.KeyUsage:
    """The KeyUsage a certificate of ``role`` carries (and must carry to be accepted)."""
    algorithm = role.algorithm
    if algorithm is None or algorithm.is_signing:
        return _key_usage(digital_signature=True)
    if algorithm is KeyAlgorithm.X25519:
        return _key_usage(key_agreement=True)
    return _key_usage(key_encipherment=True)


def leaf_extensions(
    subject: str,
    role: Role,
    *,
    suites: Iterable[str] = (),
    hosts: Sequence[str] = HUB_DEFAULT_HOSTS,
) -> list[Extension]:
    """Extensions of a TLS or unit-key certificate for ``subject``."""
    extensions = [
        Extension(x509.BasicConstraints(ca=False, path_length=None), critical=True),
        Extension(key_usage_for(role), critical=True),
    ]
    if role is Role.TLS:
        if subject == HUB:
            usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            alternative_names = hub_alternative_names(hosts)
        else:
            usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
            alternative_names = [x509.UniformResourceIdentifier(subject_uri(subject))]
        extensions.append(Extension(x509.ExtendedKeyUsage(usages), critical=False))
        extensions.append(Extension(x509.SubjectAlternativeName(alternative_names), critical=False))
        return extensions
    extensions.append(
        Extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(subject_uri(subject))]),
            critical=False,
        )
    )
    extensions.append(
        Extension(
            x509.CertificatePolicies(
                [x509.PolicyInformation(SUITE_POLICY_OIDS[suite], None) for suite in sorted(suites)]
            ),
            critical=False,
        )
    )
    return extensions


def has_key_usage(certificate: x509.Certificate, role: Role) -> bool:
    """Whether the certificate's KeyUsage allows what ``role`` does with its key."""
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    algorithm = role.algorithm
    if algorithm is None or algorithm.is_signing:
        return usage.digital_signature
    if algorithm is KeyAlgorithm.X25519:
        return usage.key_agreement
    return usage.key_encipherment


def is_ca(certificate: x509.Certificate) -> bool:
    """Whether the certificate says it is a CA (BasicConstraints ``CA:true``)."""
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def has_extended_usage(certificate: x509.Certificate, usage: x509.ObjectIdentifier) -> bool:
    """Whether the certificate's ExtendedKeyUsage lists ``usage``."""
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return usage in eku


# -- revocation reason text --------------------------------------------------------------------


def encode_reason_text(reason: str) -> x509.UnrecognizedExtension:
    """The reason sentence as a DER UTF8String in a private CRL entry extension."""
    data = reason[:MAX_REASON_TEXT].encode("utf-8")
    length = len(data)
    if length < 0x80:
        header = bytes([0x0C, length])
    elif length < 0x100:
        header = bytes([0x0C, 0x81, length])
    else:
        header = bytes([0x0C, 0x82, length >> 8, length & 0xFF])
    return x509.UnrecognizedExtension(REVOCATION_TEXT_OID, header + data)


def decode_reason_text(entry: x509.RevokedCertificate) -> str | None:
    """The reason sentence of a CRL entry, or None when absent or malformed."""
    try:
        extension = entry.extensions.get_extension_for_oid(REVOCATION_TEXT_OID).value
    except x509.ExtensionNotFound:
        return None
    if not isinstance(extension, x509.UnrecognizedExtension):
        return None
    data = extension.value
    if len(data) < 2 or data[0] != 0x0C:
        return None
    length, start = data[1], 2
    if length == 0x81 and len(data) >= 3:
        length, start = data[2], 3
    elif length == 0x82 and len(data) >= 4:
        length, start = (data[2] << 8) | data[3], 4
    elif length >= 0x80:
        return None
    if len(data) != start + length:
        return None
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError:
        return None
