"""Reading and writing PEM files: certificates, private keys, CRLs.

Every problem with a file is a :class:`~exchange.errors.PKIError` naming the file and
the reason, never a traceback. Private keys are written atomically with mode 0600
from creation (:func:`exchange.files.write_atomic` opens the temporary file with
``os.open(..., 0o600)``), PKCS#8 PEM, unencrypted: these are development and
container keys (certs/README.md says how to bring your own CA).
"""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from exchange.errors import PKIError
from exchange.files import PRIVATE, PUBLIC, write_atomic


def read_bytes(path: Path, what: str) -> bytes:
    """The bytes of ``path``; :class:`PKIError` saying why they cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PKIError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise PKIError(f"{path}: is a directory, not a {what} file") from None
    except OSError as error:
        raise PKIError(f"{path}: cannot read the {what} file ({error.strerror})") from None


def parse_certificate(data: bytes, source: str) -> x509.Certificate:
    """A certificate from PEM or DER bytes; :class:`PKIError` naming ``source`` otherwise."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise PKIError(f"{source}: not an X.509 certificate ({error})") from None


def read_certificate(path: Path) -> x509.Certificate:
    """The certificate in ``path`` (PEM or DER)."""
    return parse_certificate(read_bytes(path, "certificate"), str(path))


def read_crl(path: Path) -> x509.CertificateRevocationList:
    """The CRL in ``path`` (PEM or DER). Its signature is checked by the caller."""
    data = read_bytes(path, "CRL")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as error:
        raise PKIError(f"{path}: not a certificate revocation list ({error})") from None


def read_private_key(path: Path) -> PrivateKeyTypes:
    """The private key in ``path`` (PEM, unencrypted). The error never quotes the file."""
    data = read_bytes(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PKIError(
            f"{path}: the private key is encrypted; exchange reads unencrypted PKCS#8 PEM "
            "(protect it with file permissions or a secret store)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # cryptography's message may echo parts of the input: keep it out of errors
        raise PKIError(f"{path}: not a PEM private key, or an unsupported algorithm") from None


def write_certificate(path: Path, certificate: x509.Certificate) -> None:
    """Write a certificate as PEM, atomically, readable by all (it is public)."""
    write_atomic(path, certificate.public_bytes(serialization.Encoding.PEM), mode=PUBLIC)


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> None:
    """Write a CRL as PEM, atomically."""
    write_atomic(path, crl.public_bytes(serialization.Encoding.PEM), mode=PUBLIC)


def write_private_key(path: Path, key: PrivateKeyTypes) -> None:
    """Write a private key as unencrypted PKCS#8 PEM, atomically, mode 0600 from creation."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, pem, mode=PRIVATE)


def file_mode(path: Path) -> int:
    """The permission bits of ``path`` (e.g. ``0o600``)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError as error:
        raise PKIError(f"{path}: cannot read its permissions ({error.strerror})") from None


def readable_by_others(mode: int) -> bool:
    """Whether a private key file with ``mode`` is open to its group or everyone."""
    return bool(mode & 0o077)
