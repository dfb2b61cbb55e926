"""The hub, without the network: submit, deliver, acknowledge, forward, directory.

Every step of a submission is a plain function (:mod:`exchange.core`): parse,
verify against the directory, check the sender against the caller's certificate,
decide policy. This class adds storage (one group-commit writer), the clock and
wake-ups for subscribers; the gRPC servicer is a thin shell over it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import cast

from sqlalchemy import Engine, and_, select, update

from exchange.core.clock import Clock
from exchange.core.envelope import SealedEnvelope, verify
from exchange.core.evidence import EvidenceKind, EvidenceSigner, make_statement
from exchange.core.header import Header
from exchange.core.keys import Directory
from exchange.core.log_entry import LogEntry, LogEvent, entry_for_header
from exchange.core.permission import verify_permission
from exchange.core.policy import Policy, Violation
from exchange.core.registry import Registry
from exchange.core.vocab import PartnerStatus
from exchange.errors import ExchangeError
from exchange.hub.errors import (
    EnvelopeTooLarge,
    ForwardRefused,
    ReplayConflict,
    SenderMismatch,
    UnknownDelivery,
)
from exchange.hub.transparency import HubLog
from exchange.hub.writer import Batch, GroupCommitWriter, LogPosition
from exchange.logs import get_logger
from exchange.store.tables import DELIVERIES, EVIDENCES, LOG_ENTRIES, MESSAGES
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
    accepted: bytes


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
        self.writer = GroupCommitWriter(engine, hooks=self.log)
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def registry(self) -> Registry:
        return self.policy.registry

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.writer.start()

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
        if not self.log.head_is_current() or self.log.latest is None:
            self.log.force_head = True
            await self.writer.submit(lambda _batch: None)
        assert self.log.latest is not None
        return self.log.latest

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        return await asyncio.to_thread(self.log.inclusion, index, tree_size)

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return await asyncio.to_thread(self.log.consistency, old_size, new_size)

    def stop(self) -> None:
        self.writer.stop()

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
        # Signature checks release the GIL: run them beside the event loop.
        suite = await asyncio.to_thread(verify, envelope, self.directory, now)
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
        evidence = await self.writer.submit(partial(self._accept, envelope, header, suite.id))
        log.info("submission accepted", message_id=header.id, sender=header.sender)
        return evidence

    def _existing(self, batch: Batch, envelope: SealedEnvelope) -> pb.Evidence | None:
        """Dedupe by message id: the same bytes get the original evidence back."""
        key = ("message", envelope.message_id)
        if key in batch.claimed:
            digest, evidence = batch.claimed[key]
        else:
            row = batch.connection.execute(
                select(MESSAGES.c.envelope_digest).where(MESSAGES.c.id == envelope.message_id)
            ).first()
            if row is None:
                return None
            digest = row[0]
            stored = batch.connection.execute(
                select(EVIDENCES.c.evidence).where(
                    and_(
                        EVIDENCES.c.message_id == envelope.message_id,
                        EVIDENCES.c.kind == EvidenceKind.ACCEPTED.value,
                    )
                )
            ).first()
            evidence = pb.Evidence.FromString(stored[0]) if stored else None
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
        self._stage_deliveries(batch, header.id, header.recipients, hub_time)
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
        self, batch: Batch, message_id: str, recipients: tuple[str, ...], hub_time: int
    ) -> None:
        connections = set()
        for recipient in recipients:
            connection = connection_for(self.registry, recipient)
            connections.add(connection)
            batch.add(
                DELIVERIES,
                {
                    "connection": connection,
                    "addressee": recipient,
                    "message_id": message_id,
                    "state": "pending",
                    "created_at_us": hub_time,
                    "delivered_at_us": None,
                    "read_at_us": None,
                },
            )
        batch.after_commit.append(partial(self._wake, tuple(connections)))

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
        suite = await asyncio.to_thread(verify, envelope, self.directory, now)
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
            partial(self._accept, envelope, header, suite.id, forwarded_from=provider.id)
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
        if not envelope.wire.forwarding.permission:
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
                envelope.wire.forwarding.permission,
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

    # ---------------------------------------------------------------- deliveries

    def subscribe(self, connection: str) -> asyncio.Event:
        """An event set whenever something new is committed for ``connection``."""
        event = asyncio.Event()
        self._waiters[connection].add(event)
        return event

    def unsubscribe(self, connection: str, event: asyncio.Event) -> None:
        self._waiters[connection].discard(event)

    def _wake(self, connections: tuple[str, ...]) -> None:
        loop = self._loop
        if loop is None:
            return
        for connection in connections:
            for event in list(self._waiters.get(connection, ())):
                loop.call_soon_threadsafe(event.set)

    def connected(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def pending(self, connection: str, after: int, limit: int = 256) -> list[PendingDelivery]:
        """Deliveries for ``connection`` not yet acknowledged, after sequence ``after``."""
        return await asyncio.to_thread(self._pending, connection, after, limit)

    def _pending(self, connection: str, after: int, limit: int) -> list[PendingDelivery]:
        query = (
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
                and_(
                    EVIDENCES.c.message_id == DELIVERIES.c.message_id,
                    EVIDENCES.c.kind == EvidenceKind.ACCEPTED.value,
                ),
            )
            .where(
                and_(
                    DELIVERIES.c.connection == connection,
                    DELIVERIES.c.state == "pending",
                    DELIVERIES.c.seq > after,
                    MESSAGES.c.envelope.is_not(None),
                )
            )
            .order_by(DELIVERIES.c.seq)
            .limit(limit)
        )
        with self.engine.connect() as db:
            return [
                PendingDelivery(seq, message_id, addressee, envelope, evidence)
                for seq, message_id, addressee, envelope, evidence in db.execute(query)
            ]

    # ---------------------------------------------------------------- acknowledge

    async def acknowledge(
        self, caller: str, *, message_id: str, sequence: int, read: bool, on_behalf_of: str = ""
    ) -> pb.Evidence:
        """Record that a delivery reached the caller's node (or a person, ``read``)."""
        return await self.writer.submit(
            partial(self._acknowledge, caller, message_id, sequence, read, on_behalf_of)
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
        row = batch.connection.execute(
            select(
                DELIVERIES.c.connection,
                DELIVERIES.c.addressee,
                DELIVERIES.c.state,
                MESSAGES.c.envelope_digest,
                MESSAGES.c.envelope,
            )
            .join(MESSAGES, MESSAGES.c.id == DELIVERIES.c.message_id)
            .where(and_(DELIVERIES.c.seq == sequence, DELIVERIES.c.message_id == message_id))
        ).first()
        if row is None or row[0] != caller:
            raise UnknownDelivery(f"{caller} has no delivery {sequence} of message {message_id}")
        _connection, addressee, state, digest, raw = row
        state = batch.claimed.get(("delivery", sequence), state)
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
        order = {"pending": 0, "relayed": 1, "delivered": 2, "read": 3}
        if order[state] >= order[new_state]:
            stored = self._stored_evidence(batch, message_id, kind, addressee)
            if stored is not None:
                return stored
        hub_time = micros(self.clock)
        header = SealedEnvelope.from_bytes(raw).header if raw else None
        if header is not None:
            entry = entry_for_header(
                event,
                header,
                hub_time_us=hub_time,
                policy_hash=self.policy.hash,
                unit=addressee,
                on_behalf_of=caller if relayed else "",
            )
        else:  # erased since: the entry still records the event, by id
            entry = LogEntry(
                event=event, hub_time_us=hub_time, message_id=message_id, unit=addressee
            )
        position = batch.append_log(entry)
        evidence = self._evidence(kind, message_id, addressee, hub_time, digest, position)
        self._stage_evidence(batch, evidence, kind, message_id, addressee, position.index, hub_time)
        if order[new_state] > order[state]:
            values: dict[str, object] = {"state": new_state}
            values["read_at_us" if read else "delivered_at_us"] = hub_time
            batch.execute(update(DELIVERIES).where(DELIVERIES.c.seq == sequence).values(**values))
            batch.claimed[("delivery", sequence)] = new_state
        return evidence

    @staticmethod
    def _stored_evidence(
        batch: Batch, message_id: str, kind: EvidenceKind, unit: str
    ) -> pb.Evidence | None:
        row = batch.connection.execute(
            select(EVIDENCES.c.evidence)
            .where(
                and_(
                    EVIDENCES.c.message_id == message_id,
                    EVIDENCES.c.kind == kind.value,
                    EVIDENCES.c.unit == unit,
                )
            )
            .order_by(EVIDENCES.c.id.desc())
        ).first()
        return pb.Evidence.FromString(row[0]) if row else None

    # ---------------------------------------------------------------- status

    async def evidences(self, caller: str, message_id: str) -> list[bytes]:
        """Every evidence about ``message_id``, for its sender or one of its recipients."""
        return await asyncio.to_thread(self._evidences, caller, message_id)

    def _evidences(self, caller: str, message_id: str) -> list[bytes]:
        with self.engine.connect() as db:
            message = db.execute(
                select(MESSAGES.c.sender, MESSAGES.c.recipients).where(MESSAGES.c.id == message_id)
            ).first()
            if message is None or (
                caller != message[0]
                and caller not in message[1].split(",")
                and caller != connection_for(self.registry, message[0])
            ):
                raise UnknownDelivery(f"{caller} has no message {message_id}")
            return [
                row[0]
                for row in db.execute(
                    select(EVIDENCES.c.evidence)
                    .where(EVIDENCES.c.message_id == message_id)
                    .order_by(EVIDENCES.c.log_index)
                )
            ]
