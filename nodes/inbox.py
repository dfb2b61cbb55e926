"""Receiving: verify a delivery, open it (or keep it for a relayed unit), store, ack.

Plain functions over the store, the keys and the time, shared by the running node
(:mod:`nodes.agent`) and the user commands (``exchange inbox``, ``read``). Nothing here
speaks to the network: acknowledgements are queued in the store and sent by the node.

A body that disagrees with its header (:class:`~exchange.errors.HeaderBodyMismatch`,
:class:`~exchange.errors.DigestMismatch`) is kept as a *rejected* inbox item and
reported to the sender with a signed NOTICE, queued in the outbox in the same commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from exchange.core.envelope import OpenedMessage, SealedEnvelope, open_envelope, seal, verify
from exchange.core.evidence import EvidenceKind
from exchange.core.keys import Directory, Keyring
from exchange.errors import DigestMismatch, EnvelopeError, ExchangeError, HeaderBodyMismatch
from exchange.logs import get_logger
from exchange.wire.v1 import exchange_pb2 as pb
from nodes.compose import mismatch_notice
from nodes.store import Delivered, InboxRow, NodeStore
from nodes.verification import check_evidence

__all__ = ["Received", "hand_on", "micros", "open_item", "read_item", "receive"]

log = get_logger("nodes.inbox")


def micros(moment: datetime) -> int:
    """Microseconds since the epoch (how the store keeps time)."""
    return int(moment.timestamp() * 1_000_000)


@dataclass(frozen=True)
class Received:
    """What became of one delivery."""

    message_id: str
    addressee: str
    new: bool
    rejected: str | None = None  # the check's code when the item was rejected
    notice_id: str | None = None  # the mismatch notice queued, if any


def _notice(
    envelope: SealedEnvelope,
    error: ExchangeError,
    keyring: Keyring,
    directory: Directory,
    now: datetime,
) -> SealedEnvelope | None:
    """Seal the mismatch notice to the sender (None, logged, when it cannot be sealed)."""
    header, body = mismatch_notice(envelope.header, keyring.unit, error.message)
    try:
        return seal(header, body, keyring=keyring, directory=directory, now=now)
    except ExchangeError as failure:
        log.warning(
            "mismatch notice not sealed",
            message_id=envelope.message_id,
            unit=keyring.unit,
            code=failure.code,
        )
        return None


def _check_opens(
    envelope: SealedEnvelope, keyring: Keyring, directory: Directory, now: datetime
) -> tuple[str | None, str | None, SealedEnvelope | None]:
    """(reject code, reason, notice) after trying to open; all None when it opens."""
    try:
        open_envelope(envelope, keyring=keyring, directory=directory, now=now)
    except (HeaderBodyMismatch, DigestMismatch) as error:
        return error.code, error.message, _notice(envelope, error, keyring, directory, now)
    except EnvelopeError as error:
        return error.code, error.message, None
    return None, None, None


def receive(
    delivery: pb.Delivery,
    *,
    store: NodeStore,
    keyring: Keyring,
    directory: Directory,
    now: datetime,
) -> Received:
    """Check one delivery and store it (committed) with its delivered-ack queued.

    The hub's acceptance evidence must verify and name this very envelope, or nothing
    is stored and nothing acknowledged (the error propagates; the hub will offer the
    delivery again). A delivery for a unit this node relays (``on_behalf_of``) is
    verified but not opened: the relay holds no key for it.
    """
    envelope = SealedEnvelope.from_bytes(delivery.envelope)
    accepted = check_evidence(
        delivery.accepted,
        directory,
        now,
        message_id=envelope.message_id,
        envelope=delivery.envelope,
        kinds={EvidenceKind.ACCEPTED},
    )
    addressee = delivery.on_behalf_of or keyring.unit
    bound = log.bind(
        message_id=envelope.message_id, addressee=addressee, sequence=delivery.sequence
    )
    code: str | None = None
    reason: str | None = None
    notice: SealedEnvelope | None = None
    if store.inbox_item(envelope.message_id, addressee) is None:
        if addressee != keyring.unit:
            try:
                verify(envelope, directory, now)
                if addressee not in envelope.recipients:
                    code, reason = (
                        "ENV-NOT-RECIPIENT",
                        f"{addressee} is not a recipient of message {envelope.message_id}",
                    )
            except EnvelopeError as error:
                code, reason = error.code, error.message
        else:
            code, reason, notice = _check_opens(envelope, keyring, directory, now)
    new = store.store_delivery(
        Delivered(
            envelope=envelope,
            addressee=addressee,
            sequence=delivery.sequence,
            accepted=accepted,
            received_at_us=micros(now),
            reject_code=code,
            reject_reason=reason,
        ),
        notice=notice,
    )
    if not new:
        bound.info("delivery already stored")
    elif code is not None:
        bound.warning("delivery rejected", code=code, notice=notice is not None)
    else:
        bound.info("delivery stored", relayed=addressee != keyring.unit)
    return Received(
        message_id=envelope.message_id,
        addressee=addressee,
        new=new,
        rejected=code if new else None,
        notice_id=notice.message_id if (notice is not None and new) else None,
    )


def hand_on(
    item: InboxRow,
    *,
    store: NodeStore,
    keyring: Keyring,
    directory: Directory,
    now: datetime,
) -> str | None:
    """A relayed unit's user takes ``item`` from the relay's node (with its own key).

    Opens it as ``keyring.unit`` to check it, then queues the acknowledgement on that
    unit's behalf (the hub logs the second leg). Returns the reject code, if any.
    """
    if item.handed_on_at_us is not None:
        return item.reject_code
    envelope = SealedEnvelope.from_bytes(item.envelope)
    code, reason, notice = _check_opens(envelope, keyring, directory, now)
    store.mark_handed_on(
        item, now_us=micros(now), reject_code=code, reject_reason=reason, notice=notice
    )
    log.info(
        "handed on to relayed unit",
        message_id=item.message_id,
        addressee=item.addressee,
        rejected=code,
    )
    return code


def open_item(
    item: InboxRow, *, keyring: Keyring, directory: Directory, now: datetime
) -> OpenedMessage:
    """Open a stored item again with the unit's key (bodies are never stored in clear)."""
    return open_envelope(
        SealedEnvelope.from_bytes(item.envelope), keyring=keyring, directory=directory, now=now
    )


def read_item(
    item: InboxRow,
    *,
    store: NodeStore,
    keyring: Keyring,
    directory: Directory,
    now: datetime,
) -> OpenedMessage:
    """Open ``item`` for a person and queue the read acknowledgement.

    For a relayed unit reading through its relay's node, the item is first handed on.
    """
    relayed = item.addressee != store.unit
    if relayed and item.handed_on_at_us is None:
        hand_on(item, store=store, keyring=keyring, directory=directory, now=now)
    opened = open_item(item, keyring=keyring, directory=directory, now=now)
    store.mark_read(item, relayed=relayed, now_us=micros(now))
    log.info("message read", message_id=item.message_id, addressee=item.addressee)
    return opened
