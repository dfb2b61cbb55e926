"""Errors the hub raises to a caller; each maps to one gRPC status (see interceptor)."""

from __future__ import annotations

from exchange.errors import ExchangeError


class HubError(ExchangeError):
    """A request the hub cannot carry out; ``code`` is the stable rule or check id."""

    exit_code = 3


class SenderMismatch(HubError):
    """The header names another sender than the caller's certificate."""

    code = "AUTH-SENDER-MISMATCH"


class ReplayConflict(HubError):
    """A message id already accepted with other bytes."""

    code = "REPLAY-CONFLICT"


class EnvelopeTooLarge(HubError):
    """The envelope is above the policy's size limit."""

    code = "SZ-TOO-LARGE"


class UnknownDelivery(HubError):
    """An acknowledgement or forward names nothing the caller may act on."""

    code = "NO-SUCH-DELIVERY"


class NotAuthenticated(HubError):
    """The caller presented no usable client certificate."""

    code = "AUTH-NO-CERTIFICATE"


class CallerRevoked(HubError):
    """The caller's certificate is revoked, expired or not for this exchange."""

    code = "AUTH-CERT-REFUSED"


class ForwardRefused(HubError):
    """A forward the hub will not carry (not a recipient, weakened codes, no permission)."""

    code = "FWD-REFUSED"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class NotAvailable(HubError):
    """An RPC of the wire contract that this version of the hub does not serve yet."""

    code = "NOT-AVAILABLE"


class StoreUnavailable(HubError):
    """The store refused or lost a transaction; nothing of it was kept. Try again."""

    code = "STORE-UNAVAILABLE"
