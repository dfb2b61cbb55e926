"""One exception family for the whole system.

Callers catch the family (:class:`ExchangeError`); tests assert the exact kind.
Each family maps to one CLI exit code and one gRPC status code, in one place
(:func:`exit_code_for`, and the hub's interceptor).

Exit codes (DESIGN.md section 8): ``2`` bad input or usage, ``3`` refused by
policy or verification failed, ``1`` anything unexpected.
"""

from __future__ import annotations

from dataclasses import dataclass


class ExchangeError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1
    #: a stable id a program can match on (rule id, check name)
    code = "EXCHANGE-ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Location:
    """Where in a user's file a problem is: file, line (1-based) and field path."""

    source: str = ""
    line: int | None = None
    field: str = ""

    def __str__(self) -> str:
        parts = [self.source or "<input>"]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.field:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts)


class InputError(ExchangeError):
    """Bad input from a user: a file, a flag, a field. Exit code 2."""

    exit_code = 2
    code = "BAD-INPUT"

    def __init__(self, reason: str, location: Location | None = None) -> None:
        self.location = location or Location()
        self.reason = reason
        super().__init__(f"{self.location}: {reason}" if location else reason)

    def at(self, source: str, line: int | None = None) -> InputError:
        """The same error, located in ``source`` (keeps the field already known)."""
        return type(self)(
            self.reason,
            Location(source, line if line is not None else self.location.line, self.location.field),
        )


class RegistryError(InputError):
    """The unit registry file is invalid."""

    code = "BAD-REGISTRY"


class PKIError(ExchangeError):
    """A certificate or key file is missing, unreadable or of the wrong kind."""

    exit_code = 2
    code = "PKI"


# --------------------------------------------------------------------------- envelope


class EnvelopeError(ExchangeError):
    """An envelope failed a check. Exit code 3, except a malformed file (2)."""

    exit_code = 3
    code = "ENVELOPE"


class MalformedEnvelope(EnvelopeError):
    """The bytes are not an envelope at all (truncated, garbage, wrong format)."""

    exit_code = 2
    code = "ENV-MALFORMED"


class BadSignature(EnvelopeError):
    """A signature does not verify, or a signature the suite requires is missing."""

    code = "ENV-BAD-SIGNATURE"


class UnknownSigner(EnvelopeError):
    """The signer is not in the directory, or has no certified key with that id."""

    code = "ENV-UNKNOWN-SIGNER"


class CertificateRevoked(EnvelopeError):
    """The certificate of a key used here has been revoked."""

    code = "ENV-CERT-REVOKED"


class CertificateExpired(EnvelopeError):
    """The certificate of a key used here is expired or not yet valid."""

    code = "ENV-CERT-EXPIRED"


class NotARecipient(EnvelopeError):
    """The unit trying to open the envelope is not one of its recipients."""

    code = "ENV-NOT-RECIPIENT"


class DigestMismatch(EnvelopeError):
    """A digest in the signed header does not match the bytes it covers."""

    code = "ENV-DIGEST-MISMATCH"


class HeaderBodyMismatch(EnvelopeError):
    """The opened body does not agree with what the header declares."""

    code = "ENV-HEADER-BODY-MISMATCH"


class SuiteError(EnvelopeError):
    """The envelope's suite is unknown, or a key does not support it."""

    code = "ENV-SUITE"


def exit_code_for(error: BaseException) -> int:
    """The CLI exit code for an error (1 for anything not ours)."""
    if isinstance(error, ExchangeError):
        return error.exit_code
    return 1


class DecryptionFailed(EnvelopeError):
    """A key wrap or the body ciphertext does not decrypt with the recipient's key."""

    code = "ENV-DECRYPT"


class SuiteTooWeak(EnvelopeError):
    """The envelope's suite is weaker than a recipient or the policy requires."""

    code = "CR-SUITE-TOO-WEAK"


class ForwardWeakened(EnvelopeError):
    """A forward that drops handling codes, lowers the classification or alters the content."""

    code = "FWD-WEAKENED"
