"""The hub, without the network: submit, deliver, acknowledge, forward, directory.

Every step of a submission is a plain function (:mod:`exchange.core`): parse,
verify against the directory, check the sender against the caller's certificate,
decide policy. This class adds storage (one group-commit writer), the clock and
the subscribers' mailboxes; the gRPC servicer is a thin shell over it.

Deliveries reach an open Subscribe stream from memory: once a batch committed, the
writer hands its new deliveries to the subscriptions of their connections. The store
is read when a stream opens (everything still pending after its cursor), when a
stream fell behind, and now and then as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Engine, and_, bindparam, select, text, update

from exchange.core.clock import Clock
from exchange.core.envelope import SealedEnvelope, verify
from exchange.core.evidence import HUB_UNIT, EvidenceKind, EvidenceSigner, make_statement
from exchange.core.header import Header
from exchange.core.keys import Directory
from exchange.core.log_entry import LogEntry, LogEvent, entry_for_header
from exchange.core.permission import verify_permission
from exchange.core.policy import Policy, Violation
from exchange.core.registry import Registry
from exchange.core.suites import Suite
from exchange.core.vocab import PartnerStatus
from exchange.errors import ExchangeError
from exchange.hub.errors import (
    EnvelopeTooLarge,
    ForwardRefused,
    ReplayConflict,
    SenderMismatch,
    UnknownDelivery,
)
from exchange.hub.replicas import DELIVERIES_CHANNEL, ReplicaListener
from exchange.hub.transparency import HubLog
from exchange.hub.writer import Batch, GroupCommitWriter, LogPosition
from exchange.logs import get_logger
from exchange.store.tables import DELIVERIES, EVIDENCES, LOG_ENTRIES, MESSAGES, PERMISSIONS
from exchange.wire.v1 import exchange_pb2 as pb

log = get_logger("exchange.hub")


def micros(clock: Clock) -> int:
    return int(clock.now().timestamp() * 1_000_000)


def connection_for(registry: Registry, unit: str) -> str:
    """The unit whose node receives messages for ``unit`` (its relay, if relayed)."""
    entry = registry.get(unit)
    if entry is not None and entry.status is PartnerStatus.RELAYED and entry.relay:
        return entry.relay
    return unit


def check_sender(caller: str, sender: str, registry: Registry) -> None:
    """The caller must be the sender, or the relay of a relayed sender (AUTH-SENDER-MISMATCH)."""
    if caller == sender:
        return
    if connection_for(registry, sender) == caller:
        return
    raise SenderMismatch(
        f"the header names {sender} as sender, but the connection is authenticated as {caller}"
    )


@dataclass(frozen=True)
class PendingDelivery:
    sequence: int
    message_id: str
    addressee: str
    envelope: bytes
    accepted: pb.Evidence


class StoredMessage(NamedTuple):
    """What dedupe needs of an accepted message: its digest and its accepted evidence."""

    digest: bytes
    evidence: bytes | None


class StoredDelivery(NamedTuple):
    """A delivery, with what the log entry of its acknowledgement names of the message."""

    message_id: str
    connection: str
    addressee: str
    state: str
    envelope_digest: bytes
    erased: bool
    kind: str
    sender: str
    recipients: str
    channel: str
    crime_area: str
    priority: str
    in_reply_to: str | None
    case_id: str | None
    individuals: int
    legal_entities: int


_ACCEPTED = EvidenceKind.ACCEPTED.value

# The hot statements, built once with bind parameters (compiled once per dialect).
_MESSAGES_BY_ID = (
    select(MESSAGES.c.id, MESSAGES.c.envelope_digest, EVIDENCES.c.evidence)
    .select_from(
        MESSAGES.outerjoin(
            EVIDENCES,
            and_(EVIDENCES.c.message_id == MESSAGES.c.id, EVIDENCES.c.kind == _ACCEPTED),
        )
    )
    .where(MESSAGES.c.id.in_(bindparam("ids", expanding=True)))
)
_DELIVERIES_BY_SEQ = (
    select(
        DELIVERIES.c.seq,
        DELIVERIES.c.message_id,
        DELIVERIES.c.connection,
        DELIVERIES.c.addressee,
        DELIVERIES.c.state,
        MESSAGES.c.envelope_digest,
        MESSAGES.c.envelope.is_(None),
        MESSAGES.c.kind,
        MESSAGES.c.sender,
        MESSAGES.c.recipients,
        MESSAGES.c.channel,
        MESSAGES.c.crime_area,
        MESSAGES.c.priority,
        MESSAGES.c.in_reply_to,
        MESSAGES.c.case_id,
        MESSAGES.c.individuals,
        MESSAGES.c.legal_entities,
    )
    .join(MESSAGES, MESSAGES.c.id == DELIVERIES.c.message_id)
    .where(DELIVERIES.c.seq.in_(bindparam("seqs", expanding=True)))
)
_STORED_EVIDENCE = (
    select(EVIDENCES.c.evidence)
    .where(
        and_(
            EVIDENCES.c.message_id == bindparam("message_id"),
            EVIDENCES.c.kind == bindparam("kind"),
            EVIDENCES.c.unit == bindparam("unit"),
        )
    )
    .order_by(EVIDENCES.c.id.desc())
    .limit(1)
)
_MARK_DELIVERED = (
    update(DELIVERIES)
    .where(DELIVERIES.c.seq == bindparam("b_seq"))
    .values(state=bindparam("b_state"), delivered_at_us=bindparam("b_at"))
)
_MARK_READ = (
    update(DELIVERIES)
    .where(DELIVERIES.c.seq == bindparam("b_seq"))
    .values(state=bindparam("b_state"), read_at_us=bindparam("b_at"))
)


def _pending_deliveries(*which: Any) -> Any:
    """Deliveries still pending for a connection (its envelope, the acceptance evidence)."""
    return (
        select(
            DELIVERIES.c.seq,
            DELIVERIES.c.message_id,
            DELIVERIES.c.addressee,
            MESSAGES.c.envelope,
            EVIDENCES.c.evidence,
        )
        .join(MESSAGES, MESSAGES.c.id == DELIVERIES.c.message_id)
        .join(
            EVIDENCES,
            and_(EVIDENCES.c.message_id == DELIVERIES.c.message_id, EVIDENCES.c.kind == _ACCEPTED),
        )
        .where(
            and_(
                DELIVERIES.c.connection == bindparam("connection"),
                DELIVERIES.c.state == "pending",
                MESSAGES.c.envelope.is_not(None),
                *which,
            )
        )
        .order_by(DELIVERIES.c.seq)
    )


#: after a cursor, a page at a time
_PENDING = _pending_deliveries(DELIVERIES.c.seq > bindparam("after")).limit(bindparam("limit"))
#: by sequence number (what another replica announced)
_PENDING_BY_SEQ = _pending_deliveries(DELIVERIES.c.seq.in_(bindparam("seqs", expanding=True)))

#: a replica tells the others which connections have new deliveries (PostgreSQL)
_NOTIFY = text(f"SELECT pg_notify('{DELIVERIES_CHANNEL}', :payload)")

#: delivery states, in the order they advance
_STATE_ORDER = {"pending": 0, "relayed": 1, "delivered": 2, "read": 3}


def load_messages(connection: Connection, ids: Sequence[Any]) -> Mapping[Any, StoredMessage]:
    """Dedupe lookups for a batch: digest and accepted evidence of the ids already stored."""
    found: dict[Any, StoredMessage] = {}
    for message_id, digest, evidence in connection.execute(_MESSAGES_BY_ID, {"ids": list(ids)}):
        if message_id not in found or found[message_id].evidence is None:
            found[message_id] = StoredMessage(digest, evidence)
    return found


def load_deliveries(connection: Connection, seqs: Sequence[Any]) -> Mapping[Any, StoredDelivery]:
    """Acknowledgement lookups for a batch: the deliveries with these sequence numbers."""
    found: dict[Any, StoredDelivery] = {}
    for row in connection.execute(_DELIVERIES_BY_SEQ, {"seqs": list(seqs)}):
        (seq, message_id, unit, addressee, state, digest, erased, *facts) = row
        found[seq] = StoredDelivery(
            message_id, unit, addressee, state, digest, bool(erased), *facts
        )
    return found


_VerifyJob = tuple[SealedEnvelope, datetime, "asyncio.Future[Suite]"]


def _resolve(outcomes: list[tuple[asyncio.Future[Suite], Suite | None, Exception | None]]) -> None:
    for future, suite, error in outcomes:
        if future.done():
            continue  # the caller gave up
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(Suite, suite))


class Verifier:
    """Envelope checks (the signatures) beside the event loop, in a thread of their own.

    ``cryptography`` releases the GIL while it checks a signature, so the loop serves
    other calls meanwhile. Submissions that arrive together are checked in one round
    and answered with one wake-up of the loop, not a thread hop each; the header and
    the digest are decoded here too, off the loop.
    """

    def __init__(self, directory: Directory, *, max_round: int = 64) -> None:
        self.directory = directory
        self.max_round = max_round
        self._jobs: queue.SimpleQueue[_VerifyJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def verify(self, envelope: SealedEnvelope, now: datetime) -> Suite:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="verifier", daemon=True)
            self._thread.start()
        future: asyncio.Future[Suite] = asyncio.get_running_loop().create_future()
        self._jobs.put((envelope, now, future))
        return await future

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            jobs = [self._jobs.get()]
            while len(jobs) < self.max_round:
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            by_loop: dict[
                asyncio.AbstractEventLoop,
                list[tuple[asyncio.Future[Suite], Suite | None, Exception | None]],
            ] = {}
            for job in jobs:
                if job is None:
                    stopping = True
                    continue
                envelope, now, future = job
                outcome: tuple[asyncio.Future[Suite], Suite | None, Exception | None]
                try:
                    suite = verify(envelope, self.directory, now)
                    _ = envelope.header, envelope.digest  # decoded here, not on the loop
                    outcome = (future, suite, None)
                except Exception as error:
                    outcome = (future, None, error)
                by_loop.setdefault(future.get_loop(), []).append(outcome)
            for loop, outcomes in by_loop.items():
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(_resolve, outcomes)


class Subscription:
    """One Subscribe stream's mailbox: deliveries committed for its connection since it opened.

    ``reread`` says the stream must read the store (from its cursor) before it takes
    from the mailbox: at first, and after the mailbox overflowed (deliveries offered
    meanwhile were dropped; they are in the store). A stream clears it *before* it
    reads, so whatever commits after is offered here, and skips what it already sent.
    """

    def __init__(self, connection: str, capacity: int) -> None:
        self.connection = connection
        self.capacity = capacity
        self.items: deque[PendingDelivery] = deque()
        self.reread = True
        #: deliveries other replicas stored for this connection (sequence numbers)
        self.announced: set[int] = set()
        #: notices may have been missed: read the store from the stream's start
        self.reread_all = False
        self.event = asyncio.Event()

    def offer(self, item: PendingDelivery) -> None:
        if not self.reread:
            if len(self.items) < self.capacity:
                self.items.append(item)
            else:  # a slow reader: drop the backlog, the store has it
                self.items.clear()
                self.reread = True
        self.event.set()

    def take(self) -> list[PendingDelivery]:
        items = list(self.items)
        self.items.clear()
        return items


class HubService:
    """Submission, delivery and acknowledgement over storage, with the clock passed in."""

    def __init__(
        self,
        *,
        engine: Engine,
        policy: Policy,
        directory: Directory,
        signer: EvidenceSigner,
        clock: Clock,
        hub_log: HubLog | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.directory = directory
        self.signer = signer
        self.clock = clock
        self.log = hub_log or HubLog(
            engine=engine, keyring=signer.keyring, directory=directory, clock=clock
        )
        self.log.load()
        # On PostgreSQL (replicas may share it) the writer goes on from what the log read:
        # entries another replica appends meanwhile are caught up on its first turn.
        self.writer = GroupCommitWriter(
            engine,
            hooks=self.log,
            next_log_index=self.log.size if engine.dialect.name == "postgresql" else None,
        )
        self.verifier = Verifier(directory)
        self.writer.register("message", load_messages)
        self.writer.register("delivery", load_deliveries)
        self.mailbox_capacity = 4096
        self._subscriptions: dict[str, set[Subscription]] = defaultdict(set)
        #: committed deliveries on their way from the writer thread to the event loop
        self._outbox: deque[tuple[tuple[str, PendingDelivery], ...]] = deque()
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: on PostgreSQL, replicas may share the store: hear of their deliveries
        self.listener = (
            ReplicaListener(engine, self._wake_from_thread) if self.writer.shared else None
        )

    @property
    def registry(self) -> Registry:
        return self.policy.registry

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.writer.start()
        if self.listener is not None:
            self.listener.start()

    # ---------------------------------------------------------------- the log

    async def record_policy(self) -> None:
        """Log that this policy is in force, when it differs from the last one logged."""
        await self.writer.submit(self._record_policy)

    def _record_policy(self, batch: Batch) -> None:
        newest = batch.connection.execute(
            select(LOG_ENTRIES.c.entry)
            .where(LOG_ENTRIES.c.kind == LogEvent.POLICY_LOADED.value)
            .order_by(LOG_ENTRIES.c.idx.desc())
            .limit(1)
        ).first()
        if newest is not None and LogEntry.decode(newest[0]).policy_hash == self.policy.hash:
            return
        batch.append_log(
            LogEntry(
                event=LogEvent.POLICY_LOADED,
                hub_time_us=micros(self.clock),
                policy_hash=self.policy.hash,
                rules=tuple(self.policy.rules.ids),
            )
        )
        # a policy change is attested at once by a signed head
        self.log.force_head = True

    async def tree_head(self) -> pb.SignedTreeHead:
        """A signed head of the whole log as it is now (signing one if the newest is older)."""
        await self.catch_up()
        if not self.log.head_is_current() or self.log.latest is None:
            self.log.force_head = True
            await self.writer.submit(lambda _batch: None)
        assert self.log.latest is not None
        return self.log.latest

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        if tree_size > self.log.size:
            await self.catch_up()  # a head another replica signed
        return await asyncio.to_thread(self.log.inclusion, index, tree_size)

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        if new_size > self.log.size:
            await self.catch_up()
        return await asyncio.to_thread(self.log.consistency, old_size, new_size)

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        self.writer.stop()
        self.verifier.stop()

    async def catch_up(self) -> None:
        """Take in what other replicas logged (an empty turn of the writer)."""
        if self.writer.shared:
            await self.writer.submit(lambda _batch: None)

    # ---------------------------------------------------------------- submit

    async def submit(self, caller: str, raw: bytes) -> pb.Evidence:
        """Accept or refuse an envelope; returns the evidence, only after its commit."""
        if len(raw) > self.policy.max_envelope_bytes:
            raise EnvelopeTooLarge(
                f"the envelope is {len(raw):,} bytes; the limit is "
                f"{self.policy.max_envelope_bytes:,} bytes"
            )
        envelope = SealedEnvelope.from_bytes(raw)
        check_sender(caller, envelope.sender, self.registry)
        now = self.clock.now()
        suite = await self.verifier.verify(envelope, now)
        header = envelope.header
        violations = self.policy.decide(header, now=now, envelope_bytes=len(raw), suite=suite)
        if violations:
            log.info(
                "submission refused",
                message_id=header.id,
                sender=header.sender,
                rules=sorted({v.rule for v in violations}),
            )
            return await self.writer.submit(partial(self._refuse, envelope, header, violations))
        evidence = await self.writer.submit(
            partial(self._accept, envelope, header, suite.id),
            keys=(("message", header.id),),
        )
        log.info("submission accepted", message_id=header.id, sender=header.sender)
        return evidence

    def _existing(self, batch: Batch, envelope: SealedEnvelope) -> pb.Evidence | None:
        """Dedupe by message id: the same bytes get the original evidence back."""
        key = ("message", envelope.message_id)
        if key in batch.claimed:
            digest, evidence = batch.claimed[key]
        else:
            stored: StoredMessage | None = batch.lookup("message", envelope.message_id)
            if stored is None:
                return None
            digest = stored.digest
            evidence = pb.Evidence.FromString(stored.evidence) if stored.evidence else None
        if digest != envelope.digest:
            raise ReplayConflict(
                f"message id {envelope.message_id} was already accepted with other content"
            )
        return cast(pb.Evidence | None, evidence)

    def _accept(
        self,
        envelope: SealedEnvelope,
        header: Header,
        suite_id: str,
        batch: Batch,
        *,
        forwarded_from: str | None = None,
    ) -> pb.Evidence:
        existing = self._existing(batch, envelope)
        if existing is not None:
            return existing
        hub_time = micros(self.clock)
        event = LogEvent.FORWARDED if forwarded_from else LogEvent.ACCEPTED
        entry = entry_for_header(event, header, hub_time_us=hub_time, policy_hash=self.policy.hash)
        if forwarded_from:
            entry = replace(entry, extra={"forwarded_from": forwarded_from})
        position = batch.append_log(entry)
        evidence = self._evidence(
            EvidenceKind.ACCEPTED, header.id, header.sender, hub_time, envelope.digest, position
        )
        batch.add(
            MESSAGES,
            {
                "id": header.id,
                "sender": header.sender,
                "kind": header.kind.value,
                "channel": header.channel.value,
                "crime_area": header.crime_area.value,
                "classification": header.classification.value,
                "priority": header.priority.value,
                "case_id": header.case,
                "in_reply_to": header.in_reply_to,
                "suite": suite_id,
                "individuals": len(header.subjects.individuals),
                "legal_entities": header.subjects.legal_entities,
                "recipients": ",".join(header.recipients),
                "envelope": envelope.raw,
                "envelope_digest": envelope.digest,
                "size": len(envelope.raw),
                "accepted_at_us": hub_time,
                "forwarded_from": forwarded_from,
                "forwarded_by": header.sender if forwarded_from else None,
                "log_index": position.index,
                "erased_at_us": None,
            },
        )
        self._stage_deliveries(
            batch, header.id, header.recipients, hub_time, envelope.raw, evidence
        )
        self._stage_evidence(
            batch,
            evidence,
            EvidenceKind.ACCEPTED,
            header.id,
            header.sender,
            position.index,
            hub_time,
        )
        batch.claimed[("message", header.id)] = (envelope.digest, evidence)
        return evidence

    def _stage_deliveries(
        self,
        batch: Batch,
        message_id: str,
        recipients: tuple[str, ...],
        hub_time: int,
        envelope: bytes,
        accepted: pb.Evidence,
    ) -> None:
        offers = []
        for recipient in recipients:
            connection = connection_for(self.registry, recipient)
            sequence = batch.next_key(DELIVERIES)
            batch.add(
                DELIVERIES,
                {
                    "seq": sequence,
                    "connection": connection,
                    "addressee": recipient,
                    "message_id": message_id,
                    "state": "pending",
                    "created_at_us": hub_time,
                    "delivered_at_us": None,
                    "read_at_us": None,
                },
            )
            offers.append(
                (connection, PendingDelivery(sequence, message_id, recipient, envelope, accepted))
            )
            if self.listener is not None:
                # the other replicas' streams for this connection read the store (on commit)
                payload = f"{self.listener.replica} {connection} {sequence}"
                batch.execute(_NOTIFY, {"payload": payload})
        batch.after_commit.append(partial(self._publish, tuple(offers)))

    def _refuse(
        self, envelope: SealedEnvelope, header: Header, violations: list[Violation], batch: Batch
    ) -> pb.Evidence:
        hub_time = micros(self.clock)
        rules = tuple(sorted({v.rule for v in violations}))
        position = batch.append_log(
            entry_for_header(
                LogEvent.REFUSED,
                header,
                hub_time_us=hub_time,
                policy_hash=self.policy.hash,
                rules=rules,
            )
        )
        evidence = self._evidence(
            EvidenceKind.REFUSED,
            header.id,
            header.sender,
            hub_time,
            envelope.digest,
            position,
            violations,
        )
        self._stage_evidence(
            batch,
            evidence,
            EvidenceKind.REFUSED,
            header.id,
            header.sender,
            position.index,
            hub_time,
        )
        return evidence

    def _evidence(
        self,
        kind: EvidenceKind,
        message_id: str,
        unit: str,
        hub_time: int,
        digest: bytes,
        position: LogPosition,
        violations: list[Violation] | None = None,
    ) -> pb.Evidence:
        statement = make_statement(
            kind,
            message_id=message_id,
            unit=unit,
            hub_time_us=hub_time,
            envelope_digest=digest,
            log_index=position.index,
            log_leaf_hash=position.leaf_hash,
            policy_hash=self.policy.hash,
            violations=violations or (),
        )
        return self.signer.sign(statement, self.clock.now())

    @staticmethod
    def _stage_evidence(
        batch: Batch,
        evidence: pb.Evidence,
        kind: EvidenceKind,
        message_id: str,
        unit: str,
        index: int,
        hub_time: int,
    ) -> None:
        batch.add(
            EVIDENCES,
            {
                "message_id": message_id,
                "kind": kind.value,
                "unit": unit,
                "evidence": evidence.SerializeToString(deterministic=True),
                "log_index": index,
                "created_at_us": hub_time,
            },
        )

    # ---------------------------------------------------------------- forward

    async def forward(self, caller: str, raw: bytes) -> pb.Evidence:
        """Carry a forward: new recipients, the provider's signed header kept.

        The forwarder must have received the content; H2 content needs the provider's
        signed permission naming the forwarder and the new recipients.
        """
        if len(raw) > self.policy.max_envelope_bytes:
            raise EnvelopeTooLarge(
                f"the envelope is {len(raw):,} bytes; the limit is "
                f"{self.policy.max_envelope_bytes:,} bytes"
            )
        envelope = SealedEnvelope.from_bytes(raw)
        if not envelope.is_forward:
            raise ForwardRefused(
                "Forward takes a forwarding envelope; use Submit for a new message"
            )
        check_sender(caller, envelope.sender, self.registry)
        now = self.clock.now()
        suite = await self.verifier.verify(envelope, now)
        provider = envelope.provider_header
        received = await asyncio.to_thread(self._received, envelope.sender, provider.id)
        if not received:
            raise ForwardRefused(
                f"{envelope.sender} never received message {provider.id}; it cannot forward it",
                code="FWD-NOT-RECEIVED",
            )
        header = envelope.header
        violations = self.policy.decide(header, now=now, envelope_bytes=len(raw), suite=suite)
        violations += self._h2_violations(envelope, now)
        if violations:
            return await self.writer.submit(partial(self._refuse, envelope, header, violations))
        return await self.writer.submit(
            partial(self._accept, envelope, header, suite.id, forwarded_from=provider.id),
            keys=(("message", header.id),),
        )

    def _received(self, unit: str, provider_id: str) -> bool:
        """Whether ``unit`` was addressed the content of ``provider_id`` (or a forward of it)."""
        with self.engine.connect() as db:
            rows = db.execute(
                select(DELIVERIES.c.addressee)
                .join(MESSAGES, MESSAGES.c.id == DELIVERIES.c.message_id)
                .where(
                    and_(
                        DELIVERIES.c.addressee == unit,
                        (MESSAGES.c.id == provider_id) | (MESSAGES.c.forwarded_from == provider_id),
                    )
                )
                .limit(1)
            ).first()
        return rows is not None

    def _h2_violations(self, envelope: SealedEnvelope, now: datetime) -> list[Violation]:
        provider = envelope.provider_header
        if pb.HANDLING_CODE_H2 not in provider.handling.codes:
            return []
        rule = "HC-H2-FORWARD-WITHOUT-PERMISSION"
        granted = envelope.wire.forwarding.permission or self._stored_grant(
            provider.id, envelope.sender
        )
        if not granted:
            return [
                Violation(
                    rule,
                    envelope.message_id,
                    "",
                    f"Message {provider.id} carries H2: {provider.sender} must permit "
                    f"its dissemination before {envelope.sender} forwards it.",
                )
            ]
        try:
            permission = verify_permission(
                granted,
                provider=provider.sender,
                suite_id=provider.suite,
                directory=self.directory,
                now=now,
            )
        except ExchangeError as error:
            return [
                Violation(rule, envelope.message_id, "", f"The permission is not valid: {error}")
            ]
        if not permission.allows(provider.id, envelope.sender, envelope.recipients):
            return [
                Violation(
                    rule,
                    envelope.message_id,
                    ", ".join(sorted(set(envelope.recipients) - set(permission.recipients))),
                    f"{provider.sender}'s permission does not cover this forward by "
                    f"{envelope.sender} to {', '.join(envelope.recipients)}.",
                )
            ]
        return []

    def _stored_grant(self, message_id: str, grantee: str) -> bytes:
        """The newest permission the provider granted ``grantee`` through the hub, if any."""
        with self.engine.connect() as db:
            row = db.execute(
                select(PERMISSIONS.c.permission)
                .where(
                    and_(PERMISSIONS.c.message_id == message_id, PERMISSIONS.c.grantee == grantee)
                )
                .order_by(PERMISSIONS.c.id.desc())
                .limit(1)
            ).first()
        return bytes(row[0]) if row else b""

    # ---------------------------------------------------------------- permissions

    def _message_facts(self, message_id: str) -> tuple[str, list[str], str, bytes] | None:
        """(sender, recipients, suite, envelope digest) of a stored message."""
        with self.engine.connect() as db:
            row = db.execute(
                select(
                    MESSAGES.c.sender,
                    MESSAGES.c.recipients,
                    MESSAGES.c.suite,
                    MESSAGES.c.envelope_digest,
                ).where(MESSAGES.c.id == message_id)
            ).first()
        if row is None:
            return None
        return row[0], [r for r in row[1].split(",") if r], row[2], bytes(row[3])

    def _log_and_sign(
        self,
        batch: Batch,
        kind: EvidenceKind,
        entry: LogEntry,
        *,
        unit: str,
        digest: bytes,
    ) -> pb.Evidence:
        position = batch.append_log(entry)
        evidence = self._evidence(kind, entry.message_id, unit, entry.hub_time_us, digest, position)
        self._stage_evidence(
            batch, evidence, kind, entry.message_id, unit, position.index, entry.hub_time_us
        )
        return evidence

    async def ask_permission(
        self, caller: str, *, message_id: str, recipients: list[str], purpose: str, reason: str
    ) -> pb.Evidence:
        """A recipient asks the provider's permission (e.g. to forward H2 content)."""
        facts = await asyncio.to_thread(self._message_facts, message_id)
        if facts is None or caller not in {
            connection_for(self.registry, r) for r in facts[1]
        } | set(facts[1]):
            raise UnknownDelivery(f"{caller} has no message {message_id}")
        provider, _, _, digest = facts

        def prepare(batch: Batch) -> pb.Evidence:
            entry = LogEntry(
                event=LogEvent.PERMISSION_ASKED,
                hub_time_us=micros(self.clock),
                message_id=message_id,
                sender=caller,
                recipients=tuple(recipients),
                unit=provider,
                policy_hash=self.policy.hash,
                extra={"purpose": purpose} if purpose else {},
            )
            return self._log_and_sign(
                batch, EvidenceKind.PERMISSION_ASKED, entry, unit=caller, digest=digest
            )

        log.info("permission asked", message_id=message_id, provider=provider)
        return await self.writer.submit(prepare)

    async def answer_permission(
        self, caller: str, request: pb.GrantPermissionRequest
    ) -> pb.Evidence:
        """The provider grants (a signed permission) or refuses a permission."""
        if request.deny:
            message_id, grantee = request.message_id, request.grantee
        else:
            message_id = pb.Permission.FromString(request.permission.permission).message_id
            grantee = ""
        facts = await asyncio.to_thread(self._message_facts, message_id)
        if facts is None or facts[0] != caller:
            raise ForwardRefused(
                f"{caller} did not provide message {message_id}; only its provider may answer",
                code="PERM-NOT-PROVIDER",
            )
        _provider, _, suite_id, digest = facts
        now = self.clock.now()
        if request.deny:
            recipients: tuple[str, ...] = ()
            event, kind, signed = LogEvent.PERMISSION_DENIED, EvidenceKind.PERMISSION_DENIED, b""
        else:
            signed = request.permission.SerializeToString(deterministic=True)
            permission = verify_permission(
                signed, provider=caller, suite_id=suite_id, directory=self.directory, now=now
            )
            grantee, recipients = permission.grantee, permission.recipients
            event, kind = LogEvent.PERMISSION_GRANTED, EvidenceKind.PERMISSION_GRANTED

        def prepare(batch: Batch) -> pb.Evidence:
            hub_time = micros(self.clock)
            entry = LogEntry(
                event=event,
                hub_time_us=hub_time,
                message_id=message_id,
                sender=caller,
                recipients=recipients,
                unit=grantee,
                policy_hash=self.policy.hash,
            )
            if signed:
                batch.add(
                    PERMISSIONS,
                    {
                        "message_id": message_id,
                        "provider": caller,
                        "grantee": grantee,
                        "recipients": ",".join(recipients),
                        "permission": signed,
                        "granted_at_us": hub_time,
                    },
                )
            return self._log_and_sign(batch, kind, entry, unit=grantee, digest=digest)

        log.info("permission answered", message_id=message_id, answer=event.value)
        return await self.writer.submit(prepare)

    # ---------------------------------------------------------------- erasure

    async def erase(self, caller: str, *, message_id: str, reason: str) -> pb.Evidence:
        """Erase a stored message's body and metadata; the log keeps the exchange's record."""
        if caller != HUB_UNIT:
            raise ForwardRefused(
                f"{caller} may not erase messages; only the hub's administrators may",
                code="ERASE-NOT-ALLOWED",
            )
        facts = await asyncio.to_thread(self._message_facts, message_id)
        if facts is None:
            raise UnknownDelivery(f"there is no stored message {message_id}")
        sender, recipients, _suite, digest = facts

        def prepare(batch: Batch) -> pb.Evidence:
            hub_time = micros(self.clock)
            batch.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id == message_id)
                .values(envelope=None, erased_at_us=hub_time, individuals=0, legal_entities=0)
            )
            entry = LogEntry(
                event=LogEvent.ERASED,
                hub_time_us=hub_time,
                message_id=message_id,
                sender=sender,
                recipients=tuple(recipients),
                policy_hash=self.policy.hash,
                extra={"reason": reason} if reason else {},
            )
            return self._log_and_sign(batch, EvidenceKind.ERASED, entry, unit=sender, digest=digest)

        log.info("message erased", message_id=message_id)
        return await self.writer.submit(prepare)

    # ---------------------------------------------------------------- deliveries

    def subscribe(self, connection: str) -> Subscription:
        """A mailbox for ``connection``: what commits from now on, and a wake-up."""
        subscription = Subscription(connection, self.mailbox_capacity)
        self._subscriptions[connection].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscriptions = self._subscriptions.get(subscription.connection)
        if subscriptions is not None:
            subscriptions.discard(subscription)
            if not subscriptions:
                del self._subscriptions[subscription.connection]

    def _wake_from_thread(self, announced: tuple[str, int] | None) -> None:
        """From the listener: another replica stored a delivery (None: notices were missed)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed
                loop.call_soon_threadsafe(self._announce, announced)

    def _announce(self, announced: tuple[str, int] | None) -> None:
        if announced is None:
            for subscriptions in self._subscriptions.values():
                for subscription in subscriptions:
                    subscription.reread_all = True
                    subscription.event.set()
            return
        connection, sequence = announced
        for subscription in self._subscriptions.get(connection, ()):
            if len(subscription.announced) < subscription.capacity:
                subscription.announced.add(sequence)
            else:  # a slow reader: forget the numbers, read the store from the start
                subscription.announced.clear()
                subscription.reread_all = True
            subscription.event.set()

    def wake_subscribers(self) -> None:
        """Wake every stream (to notice that the hub is stopping)."""
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription.event.set()

    def _publish(self, offers: tuple[tuple[str, PendingDelivery], ...]) -> None:
        """After a commit, in the writer thread: pass new deliveries to the event loop.

        One wake-up of the loop carries whatever several commits published meanwhile.
        """
        loop = self._loop
        if loop is None:
            return
        self._outbox.append(offers)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        """In the event loop: offer published deliveries to the subscriptions."""
        self._flush_scheduled = False  # before draining: a later publish schedules anew
        outbox, subscriptions = self._outbox, self._subscriptions
        while outbox:
            for connection, delivery in outbox.popleft():
                for subscription in subscriptions.get(connection, ()):
                    subscription.offer(delivery)

    def connected(self) -> int:
        return sum(len(s) for s in self._subscriptions.values())

    async def pending_sequences(
        self, connection: str, sequences: list[int]
    ) -> list[PendingDelivery]:
        """The deliveries with these sequence numbers still pending for ``connection``."""
        return await asyncio.to_thread(self._pending_sequences, connection, sequences)

    def _pending_sequences(self, connection: str, sequences: list[int]) -> list[PendingDelivery]:
        return self._read_pending(_PENDING_BY_SEQ, {"connection": connection, "seqs": sequences})

    def _read_pending(self, statement: Any, parameters: dict[str, Any]) -> list[PendingDelivery]:
        with self.engine.connect() as db:
            rows = db.execute(statement, parameters).all()
        return [
            PendingDelivery(seq, message_id, addressee, envelope, pb.Evidence.FromString(evidence))
            for seq, message_id, addressee, envelope, evidence in rows
        ]

    async def pending(self, connection: str, after: int, limit: int = 256) -> list[PendingDelivery]:
        """Deliveries for ``connection`` not yet acknowledged, after sequence ``after``."""
        return await asyncio.to_thread(self._pending, connection, after, limit)

    def _pending(self, connection: str, after: int, limit: int) -> list[PendingDelivery]:
        return self._read_pending(
            _PENDING, {"connection": connection, "after": after, "limit": limit}
        )

    # ---------------------------------------------------------------- acknowledge

    async def acknowledge(
        self, caller: str, *, message_id: str, sequence: int, read: bool, on_behalf_of: str = ""
    ) -> pb.Evidence:
        """Record that a delivery reached the caller's node (or a person, ``read``)."""
        return await self.writer.submit(
            partial(self._acknowledge, caller, message_id, sequence, read, on_behalf_of),
            keys=(("delivery", sequence),),
        )

    def _acknowledge(
        self,
        caller: str,
        message_id: str,
        sequence: int,
        read: bool,
        on_behalf_of: str,
        batch: Batch,
    ) -> pb.Evidence:
        row: StoredDelivery | None = batch.lookup("delivery", sequence)
        if row is None or row.message_id != message_id or row.connection != caller:
            raise UnknownDelivery(f"{caller} has no delivery {sequence} of message {message_id}")
        addressee = row.addressee
        state = batch.claimed.get(("delivery", sequence), row.state)
        relayed = addressee != caller
        if relayed and on_behalf_of and on_behalf_of != addressee:
            raise UnknownDelivery(f"delivery {sequence} is for {addressee}, not {on_behalf_of}")
        # pending -> (relayed: relay has it) -> delivered -> read
        if read:
            kind, event, new_state = EvidenceKind.READ, LogEvent.ACKNOWLEDGED, "read"
        elif relayed and not on_behalf_of:
            kind, event, new_state = EvidenceKind.DELIVERED, LogEvent.RELAYED, "relayed"
        else:
            kind, event, new_state = EvidenceKind.DELIVERED, LogEvent.DELIVERED, "delivered"
        order = _STATE_ORDER
        if order[state] >= order[new_state]:
            stored = self._stored_evidence(batch, message_id, kind, addressee)
            if stored is not None:
                return stored
        hub_time = micros(self.clock)
        if not row.erased:
            entry = self._entry_for_delivery(
                event, row, hub_time, on_behalf_of=caller if relayed else ""
            )
        else:  # erased since: the entry still records the event, by id
            entry = LogEntry(
                event=event, hub_time_us=hub_time, message_id=message_id, unit=addressee
            )
        position = batch.append_log(entry)
        evidence = self._evidence(
            kind, message_id, addressee, hub_time, row.envelope_digest, position
        )
        self._stage_evidence(batch, evidence, kind, message_id, addressee, position.index, hub_time)
        batch.claimed[("evidence", message_id, kind, addressee)] = evidence
        if order[new_state] > order[state]:
            batch.execute(
                _MARK_READ if read else _MARK_DELIVERED,
                {"b_seq": sequence, "b_state": new_state, "b_at": hub_time},
            )
            batch.claimed[("delivery", sequence)] = new_state
        return evidence

    def _entry_for_delivery(
        self, event: LogEvent, row: StoredDelivery, hub_time: int, *, on_behalf_of: str
    ) -> LogEntry:
        """:func:`entry_for_header` for the delivered message, from its stored routing facts.

        The message row holds what the entry names of the header (stored from it when the
        message was accepted), so an acknowledgement need not parse the envelope again.
        """
        return LogEntry(
            event=event,
            hub_time_us=hub_time,
            message_id=row.message_id,
            kind=row.kind,
            sender=row.sender,
            recipients=tuple(row.recipients.split(",")) if row.recipients else (),
            channel=row.channel,
            crime_area=row.crime_area,
            priority=row.priority,
            in_reply_to=row.in_reply_to or "",
            case_id=row.case_id or "",
            individuals=row.individuals,
            legal_entities=row.legal_entities,
            unit=row.addressee,
            on_behalf_of=on_behalf_of,
            policy_hash=self.policy.hash,
        )

    @staticmethod
    def _stored_evidence(
        batch: Batch, message_id: str, kind: EvidenceKind, unit: str
    ) -> pb.Evidence | None:
        claimed = batch.claimed.get(("evidence", message_id, kind, unit))
        if claimed is not None:  # staged by earlier work of this batch
            return cast(pb.Evidence, claimed)
        row = batch.connection.execute(
            _STORED_EVIDENCE, {"message_id": message_id, "kind": kind.value, "unit": unit}
        ).first()
        return pb.Evidence.FromString(row[0]) if row else None

    # ---------------------------------------------------------------- status

    async def evidences(self, caller: str, message_id: str) -> list[bytes]:
        """Every evidence about ``message_id``, for its sender or one of its recipients."""
        return await asyncio.to_thread(self._evidences, caller, message_id)

    def _evidences(self, caller: str, message_id: str) -> list[bytes]:
        with self.engine.connect() as db:
            rows = db.execute(
                select(EVIDENCES.c.evidence, EVIDENCES.c.unit)
                .where(EVIDENCES.c.message_id == message_id)
                .order_by(EVIDENCES.c.log_index)
            ).all()
            message = db.execute(
                select(MESSAGES.c.sender, MESSAGES.c.recipients).where(MESSAGES.c.id == message_id)
            ).first()
        # the parties: sender and recipients of an accepted message; for a refused one,
        # the sender its refusal names. A relay stands for the units it relays.
        parties = (
            {message[0], *message[1].split(",")} if message is not None else {r[1] for r in rows}
        )
        if caller not in parties | {connection_for(self.registry, p) for p in parties}:
            raise UnknownDelivery(f"{caller} has no message {message_id}")
        return [bytes(r[0]) for r in rows]
