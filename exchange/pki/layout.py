"""Where every PKI file lives, in one place (certs/README.md describes the same tree).

::

    <certs>/ca/{ca.crt, ca.key, crl.pem, state.json}
    <certs>/hub/{tls.crt, tls.key, sign-ed25519.{crt,key}, sign-ml-dsa-65.{crt,key}}
    <certs>/units/<UNIT>/{tls.crt, tls.key, sign-ed25519.{crt,key}, kem-x25519.{crt,key},
                          sign-ml-dsa-65.{crt,key}, kem-ml-kem-768.{crt,key}}
    <certs>/units/<UNIT>/previous/<key-id-safe-name>.{crt,key}   (rotated-out keys)

The hub is the pseudo-unit :data:`HUB` everywhere a unit id is expected (directory,
keyring, TLS material), but its files live under ``hub/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from exchange.core.keys import KeyAlgorithm
from exchange.errors import InputError

#: the hub's id in the directory (it signs evidences and directories)
HUB = "HUB"

#: what a unit id may look like on disk: it becomes a folder name, so no separators
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")


class Role(StrEnum):
    """What a key and its certificate are for; the value is the file stem."""

    TLS = "tls"
    SIGN_ED25519 = "sign-ed25519"
    SIGN_ML_DSA_65 = "sign-ml-dsa-65"
    KEM_X25519 = "kem-x25519"
    KEM_ML_KEM_768 = "kem-ml-kem-768"

    @property
    def algorithm(self) -> KeyAlgorithm | None:
        """The unit-key algorithm of this role (None for TLS, whose key is ECDSA P-256)."""
        return _ALGORITHM_OF.get(self)

    @classmethod
    def for_algorithm(cls, algorithm: KeyAlgorithm) -> Role:
        """The role that holds a unit key of ``algorithm``."""
        return _ROLE_OF[algorithm]

    @property
    def kind(self) -> str:
        """``tls``, ``sign`` or ``kem``: what ``exchange pki show`` calls it."""
        return self.value.split("-", 1)[0]


_ROLE_OF = {
    KeyAlgorithm.ED25519: Role.SIGN_ED25519,
    KeyAlgorithm.ML_DSA_65: Role.SIGN_ML_DSA_65,
    KeyAlgorithm.X25519: Role.KEM_X25519,
    KeyAlgorithm.ML_KEM_768: Role.KEM_ML_KEM_768,
}
_ALGORITHM_OF = {role: algorithm for algorithm, role in _ROLE_OF.items()}

#: the hub signs, it never receives encrypted bodies: no KEM keys
HUB_KEY_ALGORITHMS = (KeyAlgorithm.ED25519, KeyAlgorithm.ML_DSA_65)


def check_subject_id(subject: str) -> str:
    """``subject`` if it is a usable unit id (or :data:`HUB`); :class:`InputError` otherwise.

    Unit ids become folder names, so anything that could step out of ``units/`` is refused.
    """
    if not _SAFE_ID.match(subject) or ".." in subject:
        raise InputError(f"{subject!r} is not a unit id (expected CC.NAME, e.g. AL.CTD)")
    return subject


def previous_stem(key_id: str) -> str:
    """File stem of a rotated-out unit key: its key id with ':' made file-name safe."""
    return key_id.replace(":", "-")


@dataclass(frozen=True)
class PkiLayout:
    """The file paths of one PKI folder (``certs/dev`` by default)."""

    root: Path

    # -- CA ----------------------------------------------------------------------------
    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def crl(self) -> Path:
        return self.ca_dir / "crl.pem"

    @property
    def state(self) -> Path:
        return self.ca_dir / "state.json"

    @property
    def lock(self) -> Path:
        return self.ca_dir / ".lock"

    # -- subjects (units and the hub) ----------------------------------------------------
    @property
    def units_dir(self) -> Path:
        return self.root / "units"

    def subject_dir(self, subject: str) -> Path:
        """The folder of a unit's files, or ``hub/`` for :data:`HUB`."""
        if subject == HUB:
            return self.root / "hub"
        return self.units_dir / check_subject_id(subject)

    def cert_path(self, subject: str, role: Role) -> Path:
        return self.subject_dir(subject) / f"{role.value}.crt"

    def key_path(self, subject: str, role: Role) -> Path:
        return self.subject_dir(subject) / f"{role.value}.key"

    def previous_dir(self, subject: str) -> Path:
        return self.subject_dir(subject) / "previous"

    def unit_ids(self) -> list[str]:
        """Units that have a folder here, sorted (the hub is not among them)."""
        if not self.units_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.units_dir.iterdir()
            if entry.is_dir() and _SAFE_ID.match(entry.name)
        )
