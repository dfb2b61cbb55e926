"""Cryptographic suites: which key wrap and which signatures an envelope uses.

Every envelope names its suite by a stable id inside the signed header, so nobody
between sender and recipient can downgrade it. Two suites exist:

``classic-2026``
    HPKE base mode (RFC 9180) with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
    AES-256-GCM to wrap the content key; an Ed25519 signature.
``hybrid-pq-2026``
    HPKE with the hybrid KEM ML-KEM-768 + X25519 (X-Wing style, as shipped by
    ``cryptography``), HKDF-SHA256 and AES-256-GCM; a composite signature
    Ed25519 + ML-DSA-65 over the same bytes, where both halves must verify.

Only ``cryptography``'s primitives are used; nothing here invents a construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from exchange.core.keys import (
    CertifiedKey,
    Directory,
    KeyAlgorithm,
    PrivateKey,
    SigningPrivateKey,
    SigningPublicKey,
)
from exchange.errors import DecryptionFailed, SuiteError

#: ML-DSA context string (FIPS 204 domain separation) for header signatures.
MLDSA_CONTEXT = b"exchange/v1"

_HpkePublic = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
_HpkePrivate = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


@dataclass(frozen=True)
class Suite:
    """A named combination of key wrap and signature algorithms."""

    id: str
    #: signature algorithms, every one required on an envelope of this suite
    signature_algorithms: tuple[KeyAlgorithm, ...]
    #: key-encapsulation keys a recipient needs, in the order the HPKE KEM combines them
    kem_algorithms: tuple[KeyAlgorithm, ...]
    #: higher is stronger; a policy minimum compares these
    strength: int
    hpke_kem: hpke.KEM

    @property
    def hpke_suite(self) -> hpke.Suite:
        return hpke.Suite(self.hpke_kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

    def __str__(self) -> str:
        return self.id

    # -- key wrap ----------------------------------------------------------------

    def wrap_key_id(self, keys: tuple[CertifiedKey, ...]) -> str:
        """The key id a wrap names: the component key ids joined with '+'."""
        return "+".join(k.key_id for k in keys)

    def wrap(self, content_key: bytes, keys: tuple[CertifiedKey, ...], info: bytes) -> bytes:
        """Wrap ``content_key`` for a recipient's certified KEM keys (HPKE base mode)."""
        return self.hpke_suite.encrypt(content_key, self._public(keys), info=info)

    def unwrap(self, sealed: bytes, private_keys: tuple[PrivateKey, ...], info: bytes) -> bytes:
        """Recover the content key; :class:`DecryptionFailed` when it does not open."""
        try:
            return self.hpke_suite.decrypt(sealed, self._private(private_keys), info=info)
        except Exception as error:  # cryptography raises InvalidTag or ValueError
            raise DecryptionFailed("the content key does not unwrap with this key") from error

    def _public(self, keys: tuple[CertifiedKey, ...]) -> _HpkePublic:
        publics = [k.public_key for k in keys]
        if self.hpke_kem is hpke.KEM.X25519:
            (only,) = publics
            if isinstance(only, x25519.X25519PublicKey):
                return only
        else:
            pq, classic = publics
            if isinstance(pq, mlkem.MLKEM768PublicKey) and isinstance(
                classic, x25519.X25519PublicKey
            ):
                return hpke.MLKEM768X25519PublicKey(pq, classic)
        raise SuiteError(f"{self.id} cannot wrap for keys {[k.key_id for k in keys]}")

    def _private(self, keys: tuple[PrivateKey, ...]) -> _HpkePrivate:
        if self.hpke_kem is hpke.KEM.X25519:
            (only,) = keys
            if isinstance(only, x25519.X25519PrivateKey):
                return only
        else:
            pq, classic = keys
            if isinstance(pq, mlkem.MLKEM768PrivateKey) and isinstance(
                classic, x25519.X25519PrivateKey
            ):
                return hpke.MLKEM768X25519PrivateKey(pq, classic)
        raise SuiteError(f"{self.id} cannot unwrap with these keys")

    # -- recipients ------------------------------------------------------------------

    def recipient_keys(
        self, directory: Directory, unit: str, now: datetime
    ) -> tuple[CertifiedKey, ...] | None:
        """The recipient's current certified KEM keys for this suite, or None if it lacks one."""
        keys = tuple(directory.current(unit, alg, now, self.id) for alg in self.kem_algorithms)
        if any(k is None for k in keys):
            return None
        return tuple(k for k in keys if k is not None)

    def supported_by(self, directory: Directory, unit: str, now: datetime) -> bool:
        """Whether ``unit`` holds valid certified keys for every algorithm of this suite."""
        return all(
            directory.current(unit, alg, now, self.id) is not None
            for alg in (*self.signature_algorithms, *self.kem_algorithms)
        )


def sign(key: SigningPrivateKey, message: bytes) -> bytes:
    """Sign with an Ed25519 or ML-DSA-65 key (ML-DSA with the exchange context string)."""
    if isinstance(key, mldsa.MLDSA65PrivateKey):
        return key.sign(message, MLDSA_CONTEXT)
    return key.sign(message)


def verify_signature(key: SigningPublicKey, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` over ``message`` verifies under ``key``."""
    try:
        if isinstance(key, mldsa.MLDSA65PublicKey):
            key.verify(signature, message, MLDSA_CONTEXT)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:  # pragma: no cover - the directory only certifies the two above for signing
            return False
    except InvalidSignature:
        return False
    return True


CLASSIC = Suite(
    id="classic-2026",
    signature_algorithms=(KeyAlgorithm.ED25519,),
    kem_algorithms=(KeyAlgorithm.X25519,),
    strength=1,
    hpke_kem=hpke.KEM.X25519,
)

HYBRID_PQ = Suite(
    id="hybrid-pq-2026",
    signature_algorithms=(KeyAlgorithm.ED25519, KeyAlgorithm.ML_DSA_65),
    kem_algorithms=(KeyAlgorithm.ML_KEM_768, KeyAlgorithm.X25519),
    strength=2,
    hpke_kem=hpke.KEM.MLKEM768_X25519,
)

#: every suite by id, strongest last
SUITES: Mapping[str, Suite] = {s.id: s for s in (CLASSIC, HYBRID_PQ)}


def suite_by_id(suite_id: str) -> Suite:
    """The suite named ``suite_id``; :class:`SuiteError` listing the known ones otherwise."""
    try:
        return SUITES[suite_id]
    except KeyError:
        raise SuiteError(f"unknown suite {suite_id!r}; known suites: {', '.join(SUITES)}") from None


def suites_supported(directory: Directory, unit: str, now: datetime) -> list[Suite]:
    """The suites ``unit``'s certified keys support at ``now``, weakest first."""
    return [s for s in SUITES.values() if s.supported_by(directory, unit, now)]


def strongest_common_suite(directory: Directory, units: list[str], now: datetime) -> Suite:
    """The strongest suite every unit in ``units`` supports (sender and recipients)."""
    common = [s for s in SUITES.values() if all(s.supported_by(directory, u, now) for u in units)]
    if not common:
        raise SuiteError(
            "no suite is supported by every party: "
            + ", ".join(
                f"{u} ({', '.join(s.id for s in suites_supported(directory, u, now)) or 'none'})"
                for u in units
            )
        )
    return max(common, key=lambda s: s.strength)
