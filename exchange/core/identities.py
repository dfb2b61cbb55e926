"""Unit identities held in memory: keys and a directory without certificate files.

For benchmarks, test vectors and fast tests. Keys come from the OS random source, or
from a seed (test vectors only) through each algorithm's own seed format; the real
PKI (:mod:`exchange.pki`) certifies keys in X.509 certificates instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from exchange.core.keys import CertifiedKey, Directory, KeyAlgorithm, Keyring, PrivateKey, key_id
from exchange.core.suites import SUITES, Suite


def _derive(seed: bytes, label: str, size: int) -> bytes:
    return hashlib.shake_256(seed + b"\x00" + label.encode()).digest(size)


def generate_key(algorithm: KeyAlgorithm, seed: bytes | None = None) -> PrivateKey:
    """A fresh private key, or one derived from ``seed`` (test vectors only)."""
    if algorithm is KeyAlgorithm.ED25519:
        if seed is None:
            return ed25519.Ed25519PrivateKey.generate()
        return ed25519.Ed25519PrivateKey.from_private_bytes(_derive(seed, "ed25519", 32))
    if algorithm is KeyAlgorithm.X25519:
        if seed is None:
            return x25519.X25519PrivateKey.generate()
        return x25519.X25519PrivateKey.from_private_bytes(_derive(seed, "x25519", 32))
    if algorithm is KeyAlgorithm.ML_DSA_65:
        if seed is None:
            return mldsa.MLDSA65PrivateKey.generate()
        return mldsa.MLDSA65PrivateKey.from_seed_bytes(_derive(seed, "ml-dsa-65", 32))
    if seed is None:
        return mlkem.MLKEM768PrivateKey.generate()
    return mlkem.MLKEM768PrivateKey.from_seed_bytes(_derive(seed, "ml-kem-768", 64))


def algorithms_for(suites: Iterable[Suite]) -> list[KeyAlgorithm]:
    """Every key algorithm the given suites need, in a stable order."""
    wanted = {a for s in suites for a in (*s.signature_algorithms, *s.kem_algorithms)}
    return [a for a in KeyAlgorithm if a in wanted]


@dataclass(frozen=True)
class Identities:
    """A directory and the private keyrings of the units in it."""

    directory: Directory
    keyrings: dict[str, Keyring]


def make_identities(
    units: Iterable[str],
    *,
    not_before: datetime,
    not_after: datetime,
    suites: Iterable[Suite] = tuple(SUITES.values()),
    unit_suites: Mapping[str, Iterable[Suite]] | None = None,
    seed: bytes | None = None,
) -> Identities:
    """Keys for ``units`` valid from ``not_before`` to ``not_after``, in memory.

    Each unit gets keys for ``suites``, or for ``unit_suites[unit]`` where given; each
    key is certified for exactly the chosen suites that use its algorithm.
    """
    default_suites = tuple(suites)
    keys: dict[str, tuple[CertifiedKey, ...]] = {}
    keyrings: dict[str, Keyring] = {}
    serial = 1
    for unit in units:
        chosen = tuple((unit_suites or {}).get(unit, default_suites))
        certified = []
        private: dict[str, PrivateKey] = {}
        for algorithm in algorithms_for(chosen):
            unit_seed = None if seed is None else seed + unit.encode()
            key = generate_key(algorithm, unit_seed)
            public = key.public_key()
            kid = key_id(public)
            certified.append(
                CertifiedKey(
                    unit=unit,
                    algorithm=algorithm,
                    key_id=kid,
                    public_key=public,
                    serial=serial,
                    not_before=not_before,
                    not_after=not_after,
                    suites=frozenset(
                        s.id
                        for s in chosen
                        if algorithm in (*s.signature_algorithms, *s.kem_algorithms)
                    ),
                )
            )
            private[kid] = key
            serial += 1
        keys[unit] = tuple(certified)
        keyrings[unit] = Keyring(unit=unit, private_keys=private)
    return Identities(directory=Directory(keys=keys), keyrings=keyrings)
