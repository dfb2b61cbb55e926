"""Revoking certificates: a unit's current ones, or one by serial, and re-signing the CRL.

The CRL is rebuilt from the CA's register (``ca/state.json``) and signed again each
time, keeping every earlier revocation with its first date and reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from exchange.errors import InputError
from exchange.pki.authority import CertificateAuthority, locked
from exchange.pki.files import read_certificate
from exchange.pki.layout import HUB, PkiLayout, Role
from exchange.pki.profiles import MAX_REASON_TEXT


@dataclass(frozen=True)
class RevokedEntry:
    """One certificate in a revocation report."""

    serial: int
    subject: str
    role: str
    certificate: Path | None
    revoked_at: datetime
    reason: str
    #: False when it had been revoked before (its first date and reason are kept)
    newly_revoked: bool


@dataclass(frozen=True)
class RevocationReport:
    """What ``revoke`` did, and the CRL it re-signed."""

    crl: Path
    entries: tuple[RevokedEntry, ...]


@dataclass(frozen=True)
class _Found:
    serial: int
    subject: str
    role: str
    path: Path | None


def _check_reason(reason: str) -> str:
    text = " ".join(reason.split())
    if not text:
        raise InputError("--reason must say why (it is kept with the revocation)")
    if len(text) > MAX_REASON_TEXT:
        raise InputError(f"--reason is longer than {MAX_REASON_TEXT} characters")
    return text


def _current_certificates(layout: PkiLayout, subject: str) -> Iterator[_Found]:
    for role in Role:
        path = layout.cert_path(subject, role)
        if path.is_file():
            yield _Found(read_certificate(path).serial_number, subject, role.value, path)


def _all_certificates(layout: PkiLayout) -> Iterator[_Found]:
    for subject in (HUB, *layout.unit_ids()):
        yield from _current_certificates(layout, subject)
        previous = layout.previous_dir(subject)
        if previous.is_dir():
            for path in sorted(previous.glob("*.crt")):
                yield _Found(read_certificate(path).serial_number, subject, path.stem, path)


def _revoke(
    ca: CertificateAuthority,
    found: list[_Found],
    reason: str,
    at: datetime,
    code: x509.ReasonFlags,
) -> RevocationReport:
    entries = []
    for item in found:
        record, new = ca.revoke(item.serial, reason, at=at, code=code, subject=item.subject)
        entries.append(
            RevokedEntry(
                serial=item.serial,
                subject=item.subject,
                role=item.role,
                certificate=item.path,
                revoked_at=record.revoked_at,
                reason=record.reason,
                newly_revoked=new,
            )
        )
    ca.sign_crl()
    return RevocationReport(crl=ca.layout.crl, entries=tuple(entries))


def revoke_subject(
    certs_dir: Path,
    subject: str,
    reason: str,
    *,
    at: datetime | None = None,
    code: x509.ReasonFlags = x509.ReasonFlags.unspecified,
) -> RevocationReport:
    """Revoke every current certificate of ``subject`` (TLS and unit keys); re-sign the CRL.

    Rotated-out keys in ``previous/`` are left as they are. ``at`` (default now) is the
    revocation date, e.g. an exercise date.
    """
    text = _check_reason(reason)
    layout = PkiLayout(certs_dir)
    folder = layout.subject_dir(subject)
    with locked(layout):
        ca = CertificateAuthority.open(layout)
        found = list(_current_certificates(layout, subject))
        if not found:
            raise InputError(f"{folder}: {subject} has no certificates to revoke")
        return _revoke(ca, found, text, at or datetime.now(UTC), code)


def revoke_serial(
    certs_dir: Path,
    serial: int,
    reason: str,
    *,
    subject: str | None = None,
    at: datetime | None = None,
    code: x509.ReasonFlags = x509.ReasonFlags.unspecified,
) -> RevocationReport:
    """Revoke the one certificate with ``serial`` (of ``subject``, when given); re-sign the CRL."""
    text = _check_reason(reason)
    layout = PkiLayout(certs_dir)
    with locked(layout):
        ca = CertificateAuthority.open(layout)
        if serial == ca.certificate.serial_number:
            raise InputError(
                f"serial {serial} is the CA itself; a CA is not revoked by its own CRL "
                "(make a new one with `exchange pki init --force`)"
            )
        found = next((f for f in _all_certificates(layout) if f.serial == serial), None)
        if found is None:
            issued = ca.state.find(serial)
            if issued is None:
                raise InputError(f"{layout.root}: no certificate with serial {serial} was issued")
            found = _Found(serial, issued.subject, issued.role, None)
        if subject is not None and found.subject != subject:
            raise InputError(f"serial {serial} belongs to {found.subject}, not {subject}")
        return _revoke(ca, [found], text, at or datetime.now(UTC), code)
