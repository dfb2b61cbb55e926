"""Making a PKI folder and keeping it up to date: init, issue, rotate.

Idempotent by design: every key slot (a unit or the hub, and a :class:`Role`) is looked
at on its own; what exists and is sound is kept, what is missing is made, a key whose
certificate is missing is certified, a certificate that lists too few suites (or hub
host names) is re-issued for the same key. ``--force`` starts over; ``rotate`` moves
the current unit keys to ``previous/`` (where they still open old messages) and
issues new ones.

Validity. Unit keys get ``[valid_from, valid_from + valid_days]``: they are checked
against the exercise clock, which may run in 2019. TLS certificates are checked by
the TLS library against the real clock, so their period also always covers the
present; the CA's covers both.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from exchange.core.identities import generate_key
from exchange.core.keys import KeyAlgorithm, PrivateKey, PublicKey, key_id
from exchange.core.suites import SUITES
from exchange.errors import InputError, PKIError
from exchange.pki.authority import (
    CA_MINIMUM_LIFETIME,
    CertificateAuthority,
    locked,
    same_public_key,
)
from exchange.pki.errors import CaUnavailable
from exchange.pki.files import (
    read_certificate,
    read_crl,
    read_private_key,
    write_certificate,
    write_private_key,
)
from exchange.pki.layout import HUB, HUB_KEY_ALGORITHMS, PkiLayout, Role, previous_stem
from exchange.pki.loading import (
    unit_private_key,
    unit_public_key,
    verify_crl,
    verify_issued_by,
)
from exchange.pki.profiles import (
    HUB_DEFAULT_HOSTS,
    certificate_hosts,
    certified_suites,
    suites_for,
)

#: how long certificates last unless told otherwise (the CA/Browser Forum's old maximum)
DEFAULT_VALID_DAYS = 825

#: a TLS certificate this close to its end (in real time) is renewed by init and issue
TLS_RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class Validity:
    """The period asked for unit keys, and the real time it is asked at."""

    not_before: datetime
    days: int
    real_now: datetime

    @classmethod
    def of(
        cls,
        valid_from: datetime | None,
        days: int = DEFAULT_VALID_DAYS,
        now: datetime | None = None,
    ) -> Validity:
        """``valid_from`` (default: a day before ``now``) for ``days`` days."""
        if days < 1:
            raise InputError(f"--valid-days must be at least 1, not {days}")
        real_now = now or datetime.now(UTC)
        start = valid_from if valid_from is not None else real_now - timedelta(days=1)
        return cls(not_before=start, days=days, real_now=real_now)

    @property
    def not_after(self) -> datetime:
        return self.not_before + timedelta(days=self.days)

    def tls(self) -> tuple[datetime, datetime]:
        """A TLS certificate's period: the asked one, stretched to cover the present."""
        present = self.real_now - timedelta(days=1)
        return (
            min(self.not_before, present),
            max(self.not_after, present + timedelta(days=self.days)),
        )

    def ca(self) -> tuple[datetime, datetime]:
        """A new CA's period: covers every certificate above, and at least ten years."""
        start, tls_end = self.tls()
        return start, max(tls_end, start + CA_MINIMUM_LIFETIME)


class Outcome(StrEnum):
    """What happened to one key slot."""

    ISSUED = "issued"  # new key, new certificate
    KEPT = "kept"  # key and certificate were there and sound
    CERTIFIED = "certified"  # the key was there, its certificate was not
    RECERTIFIED = "recertified"  # same key, a new certificate listing more suites or names
    RENEWED = "renewed"  # same TLS key, a new certificate: the old one expires soon
    ROTATED = "rotated"  # old key moved to previous/, new key issued
    REPLACED = "replaced"  # the old certificate was revoked: moved to previous/, new key issued
    REVOKED = "revoked"  # kept as it is, but revoked: `exchange pki issue` replaces it


@dataclass(frozen=True)
class SlotReport:
    """One key slot after provisioning (never any key material)."""

    subject: str
    role: Role
    outcome: Outcome
    certificate: Path
    serial: int
    key_id: str | None
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class ProvisioningReport:
    """What ``init`` or ``issue`` did."""

    certs_dir: Path
    ca_created: bool
    ca_not_before: datetime
    ca_not_after: datetime
    slots: tuple[SlotReport, ...]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for slot in self.slots if slot.outcome is outcome)


#: a slot's private key: ECDSA for TLS, a unit key otherwise
SlotKey = ec.EllipticCurvePrivateKey | PrivateKey


class _Mode(StrEnum):
    INIT = "init"  # keep everything sound, revoked ones included
    ISSUE = "issue"  # also replace revoked certificates
    ROTATE = "rotate"  # also replace every unit key


def check_suites(suites: Sequence[str]) -> tuple[str, ...]:
    """The suite ids asked for, each known (:class:`InputError` listing the known ones)."""
    chosen = tuple(dict.fromkeys(s.strip() for s in suites if s.strip()))
    unknown = [s for s in chosen if s not in SUITES]
    if unknown or not chosen:
        raise InputError(
            f"unknown suite(s) {', '.join(unknown) or '(none given)'}; "
            f"known suites: {', '.join(SUITES)}"
        )
    return chosen


def _algorithms(subject: str, suites: Sequence[str]) -> list[KeyAlgorithm]:
    if subject == HUB:
        return list(HUB_KEY_ALGORITHMS)
    return [a for a in KeyAlgorithm if suites_for(a, suites)]


def _suites_of(subject: str, algorithm: KeyAlgorithm, suites: Sequence[str]) -> frozenset[str]:
    # the hub signs evidences for units of every suite
    return suites_for(algorithm, SUITES if subject == HUB else suites)


class _Provisioner:
    """Fills key slots for one CA, under its lock."""

    def __init__(
        self,
        ca: CertificateAuthority,
        validity: Validity,
        suites: Sequence[str],
        mode: _Mode,
        hub_hosts: Sequence[str],
    ) -> None:
        self.ca = ca
        self.layout = ca.layout
        self.validity = validity
        self.suites = suites
        self.mode = mode
        self.hub_hosts = tuple(dict.fromkeys((*HUB_DEFAULT_HOSTS, *hub_hosts)))
        self.slots: list[SlotReport] = []

    def subject(self, subject: str) -> None:
        self.slot(subject, Role.TLS)
        for algorithm in _algorithms(subject, self.suites):
            self.slot(subject, Role.for_algorithm(algorithm))

    def slot(self, subject: str, role: Role) -> None:
        cert_path = self.layout.cert_path(subject, role)
        key_path = self.layout.key_path(subject, role)
        has_cert, has_key = cert_path.is_file(), key_path.is_file()
        rotating = self.mode is _Mode.ROTATE and role is not Role.TLS

        if rotating and (has_cert or has_key):
            self._retire(subject, role)
            self._issue_new(subject, role, Outcome.ROTATED)
            return
        if not has_cert and not has_key:
            self._issue_new(subject, role, Outcome.ISSUED)
            return
        if not has_key:
            raise PKIError(
                f"{key_path}: missing, but its certificate {cert_path.name} is here; "
                f"issue a new key with `exchange pki issue {subject} --rotate`"
            )
        key = self._read_key(key_path, role)
        if not has_cert:
            self._certify(subject, role, key.public_key(), Outcome.CERTIFIED)
            return

        certificate = read_certificate(cert_path)
        try:
            verify_issued_by(certificate, self.ca.certificate, str(cert_path))
        except PKIError as error:
            raise type(error)(
                f"{error.message}; start over with `exchange pki init --force`"
            ) from None
        if not same_public_key(key.public_key(), certificate.public_key()):
            raise PKIError(f"{key_path}: does not match the certificate {cert_path.name}")
        if certificate.serial_number in self.ca.state.revoked:
            if self.mode is _Mode.INIT:
                self._report(subject, role, Outcome.REVOKED, certificate)
                return
            self._retire(subject, role)
            self._issue_new(subject, role, Outcome.REPLACED)
            return
        if role is Role.TLS and certificate.not_valid_after_utc < self.validity.real_now + (
            TLS_RENEW_BEFORE
        ):
            # TLS runs on the real clock: renew before a handshake starts failing
            self._certify(subject, role, key.public_key(), Outcome.RENEWED, certificate)
            return
        if not self._wide_enough(subject, role, certificate):
            self._certify(subject, role, key.public_key(), Outcome.RECERTIFIED, certificate)
            return
        self._report(subject, role, Outcome.KEPT, certificate)

    # -- steps ------------------------------------------------------------------------------

    def _read_key(self, path: Path, role: Role) -> SlotKey:
        if role is Role.TLS:
            key = read_private_key(path)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise PKIError(f"{path}: a TLS key must be ECDSA, not {type(key).__name__}")
            return key
        return self._unit_key(path, role)

    def _wide_enough(self, subject: str, role: Role, certificate: x509.Certificate) -> bool:
        algorithm = role.algorithm
        if algorithm is None:
            return subject != HUB or set(self.hub_hosts) <= certificate_hosts(certificate)
        wanted = _suites_of(subject, algorithm, self.suites)
        return wanted <= certified_suites(certificate, algorithm)

    def _issue_new(self, subject: str, role: Role, outcome: Outcome) -> None:
        algorithm = role.algorithm
        key: SlotKey
        if algorithm is None:
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = generate_key(algorithm)
        # The key is written before its certificate: a crash in between leaves a key
        # that the next run certifies, never a certificate without its key.
        write_private_key(self.layout.key_path(subject, role), key)
        self._certify(subject, role, key.public_key(), outcome)

    def _certify(
        self,
        subject: str,
        role: Role,
        public_key: CertificatePublicKeyTypes,
        outcome: Outcome,
        replacing: x509.Certificate | None = None,
    ) -> None:
        """Certify ``public_key``; when ``replacing``, keep what that certificate granted.

        A re-certification only widens (suites, hub names) and keeps the validity, except
        a renewal, which is about validity.
        """
        algorithm = role.algorithm
        suites: frozenset[str] = frozenset()
        hosts: tuple[str, ...] = ()
        kid = None
        if algorithm is None:
            start, end = self.validity.tls()
            if subject == HUB:
                hosts = self.hub_hosts
                if replacing is not None:
                    hosts = tuple(dict.fromkeys((*hosts, *sorted(certificate_hosts(replacing)))))
        else:
            start, end = self.validity.not_before, self.validity.not_after
            suites = _suites_of(subject, algorithm, self.suites)
            if replacing is not None:
                suites |= certified_suites(replacing, algorithm)
            kid = key_id(self._public_unit_key(public_key))
        if replacing is not None and outcome is not Outcome.RENEWED:
            start, end = replacing.not_valid_before_utc, replacing.not_valid_after_utc
        certificate = self.ca.issue(
            subject,
            role,
            public_key,
            not_before=start,
            not_after=end,
            key_id=kid,
            suites=sorted(suites),
            hosts=hosts,
        )
        write_certificate(self.layout.cert_path(subject, role), certificate)
        self._report(subject, role, outcome, certificate)

    @staticmethod
    def _public_unit_key(public_key: CertificatePublicKeyTypes) -> PublicKey:
        unit_key = unit_public_key(public_key)
        if unit_key is None:
            raise PKIError(f"not a unit key: {type(public_key).__name__}")
        return unit_key

    def _retire(self, subject: str, role: Role) -> None:
        """Move a slot's key and certificate to ``previous/``, named by key id (or serial)."""
        cert_path = self.layout.cert_path(subject, role)
        key_path = self.layout.key_path(subject, role)
        if role is Role.TLS:
            stem = f"{Role.TLS.value}-{read_certificate(cert_path).serial_number}"
        elif key_path.is_file():
            stem = previous_stem(key_id(self._unit_key(key_path, role).public_key()))
        else:
            public = read_certificate(cert_path).public_key()
            stem = previous_stem(key_id(self._public_unit_key(public)))
        previous = self.layout.previous_dir(subject)
        previous.mkdir(parents=True, exist_ok=True)
        for source, suffix in ((cert_path, ".crt"), (key_path, ".key")):
            if source.is_file():
                os.replace(source, previous / f"{stem}{suffix}")

    def _unit_key(self, path: Path, role: Role) -> PrivateKey:
        key = unit_private_key(read_private_key(path))
        if key is None or KeyAlgorithm.of(key) is not role.algorithm:
            raise PKIError(f"{path}: not a {role.algorithm} key, as its name says it is")
        return key

    def _report(
        self, subject: str, role: Role, outcome: Outcome, certificate: x509.Certificate
    ) -> None:
        algorithm = role.algorithm
        kid = None
        if algorithm is not None:
            kid = key_id(self._public_unit_key(certificate.public_key()))
        self.slots.append(
            SlotReport(
                subject=subject,
                role=role,
                outcome=outcome,
                certificate=self.layout.cert_path(subject, role),
                serial=certificate.serial_number,
                key_id=kid,
                not_before=certificate.not_valid_before_utc,
                not_after=certificate.not_valid_after_utc,
            )
        )


# -- public entry points ------------------------------------------------------------------------


def _wipe_issued(layout: PkiLayout) -> None:
    """Delete every issued key and certificate (``--force``); the CA folder is handled apart."""
    if not layout.ca_cert.is_file():
        # only a folder that is a PKI folder is wiped: `--out .` must not empty a project
        return
    for folder in (layout.units_dir, layout.subject_dir(HUB)):
        if folder.is_dir():
            shutil.rmtree(folder)


def _ensure_crl(ca: CertificateAuthority) -> None:
    if not ca.layout.crl.is_file():
        ca.sign_crl()
        return
    # An existing CRL is never silently re-signed over: if it was tampered with, say so.
    verify_crl(read_crl(ca.layout.crl), ca.certificate, str(ca.layout.crl))


def init_pki(
    certs_dir: Path,
    units: Sequence[str],
    *,
    suites: Sequence[str] = tuple(SUITES),
    validity: Validity | None = None,
    force: bool = False,
    hub_hosts: Sequence[str] = (),
) -> ProvisioningReport:
    """Make or complete a PKI folder: the CA and CRL, the hub, and every unit in ``units``.

    Existing sound keys and certificates are kept (units new to the registry get
    theirs). With ``force`` everything issued is deleted and made again, including
    the CA when ``init`` generated it; a CA you brought (``ca.crt`` + ``ca.key``
    dropped into ``ca/`` without a ``state.json``) is never replaced.
    """
    chosen = check_suites(suites)
    validity = validity or Validity.of(None)
    layout = PkiLayout(certs_dir)
    for unit in units:
        layout.subject_dir(unit)  # refuses ids that are not safe folder names
    with locked(layout):
        ca: CertificateAuthority | None = None
        if layout.ca_cert.is_file() or layout.ca_key.is_file():
            if not layout.ca_cert.is_file():
                raise CaUnavailable(f"{layout.ca_cert}: missing, but ca.key is there")
            ca = CertificateAuthority.open(layout)
            if force:
                _wipe_issued(layout)
                if ca.state.generated:
                    ca = None
                    layout.crl.unlink(missing_ok=True)
                    layout.state.unlink(missing_ok=True)
        ca_created = ca is None
        if ca is None:
            ca = CertificateAuthority.create(layout, *validity.ca())
        _ensure_crl(ca)
        provisioner = _Provisioner(ca, validity, chosen, _Mode.INIT, hub_hosts)
        provisioner.subject(HUB)
        for unit in sorted(dict.fromkeys(units)):
            provisioner.subject(unit)
    return ProvisioningReport(
        certs_dir=certs_dir,
        ca_created=ca_created,
        ca_not_before=ca.not_before,
        ca_not_after=ca.not_after,
        slots=tuple(provisioner.slots),
    )


def issue_subject(
    certs_dir: Path,
    subject: str,
    *,
    suites: Sequence[str] = tuple(SUITES),
    validity: Validity | None = None,
    rotate: bool = False,
    hub_hosts: Sequence[str] = (),
) -> ProvisioningReport:
    """Issue what ``subject`` (a unit, or ``HUB``) lacks, replacing revoked certificates.

    With ``rotate``, every unit key of the subject is replaced: the old key and
    certificate move to ``previous/<key id>.{key,crt}``, so messages sealed to or
    signed with the old key still open and verify, while new ones use the new key.
    The TLS key is not rotated (it protects no stored message); revoke it to replace it.
    """
    chosen = check_suites(suites)
    validity = validity or Validity.of(None)
    layout = PkiLayout(certs_dir)
    layout.subject_dir(subject)
    with locked(layout):
        ca = CertificateAuthority.open(layout)
        _ensure_crl(ca)
        mode = _Mode.ROTATE if rotate else _Mode.ISSUE
        provisioner = _Provisioner(ca, validity, chosen, mode, hub_hosts)
        provisioner.subject(subject)
    return ProvisioningReport(
        certs_dir=certs_dir,
        ca_created=False,
        ca_not_before=ca.not_before,
        ca_not_after=ca.not_after,
        slots=tuple(provisioner.slots),
    )
