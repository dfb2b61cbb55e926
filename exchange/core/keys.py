"""Key algorithms, key ids, certified public keys and the directory that holds them.

The directory is what anyone needs to verify an envelope (the hub, a recipient):
per unit, the public keys a certificate authority certified, with their validity
period, and the revocations. It is plain data: :mod:`exchange.pki` builds it from
certificate files, the hub serves it, and the core reads it with ``now`` passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from exchange.errors import CertificateExpired, CertificateRevoked, UnknownSigner

SigningPublicKey = ed25519.Ed25519PublicKey | mldsa.MLDSA65PublicKey
SigningPrivateKey = ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey
KemPublicKey = x25519.X25519PublicKey | mlkem.MLKEM768PublicKey
KemPrivateKey = x25519.X25519PrivateKey | mlkem.MLKEM768PrivateKey
PublicKey = SigningPublicKey | KemPublicKey
PrivateKey = SigningPrivateKey | KemPrivateKey


class KeyAlgorithm(StrEnum):
    """Algorithms of the unit keys the CA certifies (beside the TLS key)."""

    ED25519 = "ed25519"  # signature, classic
    ML_DSA_65 = "ml-dsa-65"  # signature, post-quantum (FIPS 204)
    X25519 = "x25519"  # key agreement, classic
    ML_KEM_768 = "ml-kem-768"  # key encapsulation, post-quantum (FIPS 203)

    @property
    def is_signing(self) -> bool:
        return self in (KeyAlgorithm.ED25519, KeyAlgorithm.ML_DSA_65)

    @classmethod
    def of(cls, key: PublicKey | PrivateKey) -> KeyAlgorithm:
        """The algorithm of a public or private key object."""
        if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
            return cls.ED25519
        if isinstance(key, mldsa.MLDSA65PublicKey | mldsa.MLDSA65PrivateKey):
            return cls.ML_DSA_65
        if isinstance(key, x25519.X25519PublicKey | x25519.X25519PrivateKey):
            return cls.X25519
        if isinstance(key, mlkem.MLKEM768PublicKey | mlkem.MLKEM768PrivateKey):
            return cls.ML_KEM_768
        raise TypeError(f"not a unit key: {type(key).__name__}")


def public_bytes(key: PublicKey) -> bytes:
    """The raw public key bytes (what the key id is computed over)."""
    return key.public_bytes_raw()


def key_id(key: PublicKey) -> str:
    """Stable id of a public key: algorithm and the first 16 bytes of SHA-256 of its raw bytes.

    Envelopes name keys by this id, so a unit whose keys were rotated can still
    pick the old private key for an old message.
    """
    digest = hashlib.sha256(public_bytes(key)).hexdigest()[:32]
    return f"{KeyAlgorithm.of(key).value}:{digest}"


@dataclass(frozen=True)
class CertifiedKey:
    """A unit's public key as its certificate states it."""

    unit: str
    algorithm: KeyAlgorithm
    key_id: str
    public_key: PublicKey
    serial: int
    not_before: datetime
    not_after: datetime
    #: the suites the CA certified this key for (a certificate extension); a key is
    #: never used in a suite its certificate does not list
    suites: frozenset[str] = frozenset({"classic-2026", "hybrid-pq-2026"})

    def valid_at(self, now: datetime) -> bool:
        return self.not_before <= now <= self.not_after


@dataclass(frozen=True)
class Revocation:
    """A revoked certificate, from the CA's signed CRL."""

    serial: int
    revoked_at: datetime
    reason: str


@dataclass(frozen=True)
class Directory:
    """Who holds which certified keys, and what has been revoked.

    ``keys`` maps a unit id to its certified keys, newest first per algorithm.
    """

    keys: Mapping[str, tuple[CertifiedKey, ...]]
    revocations: Mapping[int, Revocation] = field(default_factory=dict)

    def _check(self, cert: CertifiedKey, now: datetime) -> CertifiedKey:
        revocation = self.revocations.get(cert.serial)
        if revocation is not None:
            raise CertificateRevoked(
                f"the certificate of {cert.unit}'s {cert.algorithm.value} key (serial "
                f"{cert.serial}) was revoked on {revocation.revoked_at:%Y-%m-%d}: "
                f"{revocation.reason}"
            )
        if not cert.valid_at(now):
            raise CertificateExpired(
                f"the certificate of {cert.unit}'s {cert.algorithm.value} key is valid from "
                f"{cert.not_before:%Y-%m-%d %H:%M} to {cert.not_after:%Y-%m-%d %H:%M} UTC, "
                f"not at {now:%Y-%m-%d %H:%M} UTC"
            )
        return cert

    @cached_property
    def _by_id(self) -> dict[tuple[str, str], CertifiedKey]:
        # built once per directory: verification looks keys up on the hot path
        return {(cert.unit, cert.key_id): cert for certs in self.keys.values() for cert in certs}

    def key(self, unit: str, wanted_key_id: str, now: datetime) -> CertifiedKey:
        """The certified key ``wanted_key_id`` of ``unit``, valid and unrevoked at ``now``."""
        cert = self._by_id.get((unit, wanted_key_id))
        if cert is not None:
            return self._check(cert, now)
        if unit not in self.keys:
            raise UnknownSigner(f"{unit} is not in the directory")
        raise UnknownSigner(f"{unit} has no certified key {wanted_key_id}")

    def current(
        self, unit: str, algorithm: KeyAlgorithm, now: datetime, suite: str | None = None
    ) -> CertifiedKey | None:
        """The newest valid, unrevoked key of ``unit`` for ``algorithm`` (and ``suite``)."""
        for cert in self.keys.get(unit, ()):
            if (
                cert.algorithm is algorithm
                and cert.serial not in self.revocations
                and cert.valid_at(now)
                and (suite is None or suite in cert.suites)
            ):
                return cert
        return None

    def units(self) -> list[str]:
        return sorted(self.keys)


@dataclass(frozen=True)
class Keyring:
    """A unit's own private keys, by key id (current and rotated-out ones)."""

    unit: str
    private_keys: Mapping[str, PrivateKey]

    def get(self, wanted_key_id: str) -> PrivateKey | None:
        return self.private_keys.get(wanted_key_id)

    def newest(
        self, algorithm: KeyAlgorithm, directory: Directory, now: datetime, suite: str | None = None
    ) -> PrivateKey:
        """The private key matching the directory's current certified key for ``algorithm``."""
        cert = directory.current(self.unit, algorithm, now, suite)
        if cert is None or cert.key_id not in self.private_keys:
            raise UnknownSigner(
                f"{self.unit} has no valid certified {algorithm.value} key "
                "whose private half is held here"
            )
        return self.private_keys[cert.key_id]
