"""The node's local store: outbox, inbox, acknowledgements to send, evidences.

One SQLite file per node (``<home>/node.db``, WAL, ``synchronous=FULL`` through
:func:`exchange.store.database.make_engine`), shared by the running node and the user
commands (``exchange send``, ``inbox``, ``read`` ...), which may run in other processes.

What is kept, and why:

* **outbox**: each envelope the node must bring to the hub, with its state (``queued``
  until the hub answered; then ``accepted``, ``refused`` or ``failed``). The state is
  committed before the command returns, so a queued message survives any restart.
* **inbox**: each delivery, once per message and addressee, with the envelope as
  received. Bodies are never stored in clear: a reader opens the envelope again with
  the unit's key (``exchange read``), so the database holds nothing a unit key does
  not protect already.
* **acks**: acknowledgements to send (delivered, read, handed on to a relayed unit),
  committed with what they acknowledge and sent by the running node.
* **evidences**: every hub-signed evidence the node received, verified on arrival.

The node tables live on their own :class:`~sqlalchemy.MetaData` (not SQLModel's
default one, which the hub's Alembic migrations own) and are created with
``create_all`` when a store is opened. Node-store migrations are not needed yet; when a
column changes, they will get their own Alembic environment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    LargeBinary,
    UniqueConstraint,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from exchange.core.envelope import SealedEnvelope
from exchange.core.evidence import EvidenceView
from exchange.errors import InputError
from exchange.store.database import make_engine
from exchange.wire.v1 import exchange_pb2 as pb

__all__ = [
    "NODE_DB",
    "NODE_METADATA",
    "AckRow",
    "EvidenceRecord",
    "InboxRow",
    "NodeSettingRow",
    "NodeStore",
    "OutboxRow",
    "OutboxState",
]

#: the file name of the node's store inside its home folder
NODE_DB = "node.db"

_node_registry = registry()


class NodeModel(SQLModel, registry=_node_registry):
    """Base of the node's tables: their own registry and metadata, apart from the hub's."""


#: the node tables' metadata (``create_all`` on open; never the hub's migrations)
NODE_METADATA = _node_registry.metadata


class OutboxState:
    """States of an outbox item (plain strings in the table)."""

    QUEUED = "queued"  # waiting for the hub's evidence (retried until one comes)
    ACCEPTED = "accepted"  # the hub accepted it (evidence stored)
    REFUSED = "refused"  # the hub refused it by policy (evidence names the rules)
    FAILED = "failed"  # the hub refused the call itself (status and message kept)

    FINAL = frozenset({ACCEPTED, REFUSED, FAILED})


class NodeSettingRow(NodeModel, table=True):
    """Facts about the node: its unit, the hub's signed directory last fetched."""

    __tablename__ = "node_settings"

    name: str = Field(primary_key=True, max_length=40)
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class OutboxRow(NodeModel, table=True):
    """An envelope to bring to the hub (a new message or a forward)."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_state_seq", "state", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(unique=True, max_length=200)
    #: the unit that sealed it (the node's unit, or a unit it relays)
    sender: str = Field(max_length=40)
    #: ``submit`` (Submit) or ``forward`` (Forward)
    operation: str = Field(default="submit", max_length=10)
    kind: str = Field(max_length=20)
    channel: str = Field(max_length=10)
    crime_area: str = Field(max_length=60)
    recipients: str = Field(max_length=2000)  # comma-separated, as addressed
    envelope: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    envelope_digest: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    state: str = Field(default=OutboxState.QUEUED, max_length=10)
    attempts: int = 0
    #: for ``failed``: the gRPC status name; for retries: the last transport error
    status: str | None = Field(default=None, max_length=40)
    error: str | None = Field(default=None, max_length=2000)
    created_at_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class InboxRow(NodeModel, table=True):
    """A delivery as received: once per message and addressee."""

    __tablename__ = "inbox"
    __table_args__ = (UniqueConstraint("message_id", "addressee", name="uq_inbox_message"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=200)
    #: the unit addressed: the node's unit, or a unit it relays (``on_behalf_of``)
    addressee: str = Field(index=True, max_length=40)
    sender: str = Field(max_length=40)
    kind: str = Field(max_length=20)
    channel: str = Field(max_length=10)
    crime_area: str = Field(max_length=60)
    case_id: str | None = Field(default=None, max_length=200)
    in_reply_to: str | None = Field(default=None, max_length=200)
    #: the hub's delivery sequence (what acknowledgements name)
    sequence: int = Field(sa_column=Column(BigInteger, nullable=False))
    envelope: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    #: ``received`` (verified, and opened unless relayed), ``rejected`` (a check failed)
    state: str = Field(default="received", max_length=10)
    #: for ``rejected``: the check's code and sentence (never body content)
    reject_code: str | None = Field(default=None, max_length=60)
    reject_reason: str | None = Field(default=None, max_length=2000)
    accepted_at_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    received_at_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: for a relayed addressee: when its user took it from the relay's node
    handed_on_at_us: int | None = Field(default=None, sa_column=Column(BigInteger))
    read_at_us: int | None = Field(default=None, sa_column=Column(BigInteger))


class AckRow(NodeModel, table=True):
    """An acknowledgement to send to the hub (sent by the running node, retried)."""

    __tablename__ = "acks"
    __table_args__ = (
        UniqueConstraint("message_id", "addressee", "read", "on_behalf_of", name="uq_acks"),
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=200)
    addressee: str = Field(max_length=40)
    sequence: int = Field(sa_column=Column(BigInteger, nullable=False))
    read: bool = False
    on_behalf_of: str = Field(default="", max_length=40)
    sent: bool = Field(default=False, index=True)
    attempts: int = 0
    error: str | None = Field(default=None, max_length=2000)
    created_at_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class EvidenceRecord(NodeModel, table=True):
    """A hub-signed evidence about a message, verified when it arrived."""

    __tablename__ = "evidences"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(index=True, max_length=200)
    kind: str = Field(max_length=12)
    unit: str = Field(max_length=40)
    hub_time_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    log_index: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: SHA-256 of the evidence bytes: the same evidence is stored once
    digest: bytes = Field(sa_column=Column(LargeBinary, nullable=False, unique=True))
    evidence: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


OUTBOX = OutboxRow.__table__  # type: ignore[attr-defined]
INBOX = InboxRow.__table__  # type: ignore[attr-defined]
ACKS = AckRow.__table__  # type: ignore[attr-defined]
EVIDENCES = EvidenceRecord.__table__  # type: ignore[attr-defined]
SETTINGS = NodeSettingRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Delivered:
    """What the inbox keeps of one delivery (converted from the wire by the agent)."""

    envelope: SealedEnvelope
    addressee: str
    sequence: int
    accepted: EvidenceView
    received_at_us: int
    reject_code: str | None = None
    reject_reason: str | None = None


def _evidence_values(view: EvidenceView) -> dict[str, Any]:
    return {
        "message_id": view.message_id,
        "kind": view.kind.value,
        "unit": view.unit,
        "hub_time_us": view.hub_time_us,
        "log_index": view.log_index,
        "digest": hashlib.sha256(view.raw).digest(),
        "evidence": view.raw,
    }


def _row(table_row: Any, model: type[Any]) -> Any:
    return model.model_validate(dict(table_row._mapping))


class NodeStore:
    """Queries over one node's SQLite store; every method is one short transaction."""

    def __init__(self, engine: Engine, home: Path) -> None:
        self.engine = engine
        self.home = home

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, home: Path, *, unit: str | None = None, create: bool = False) -> NodeStore:
        """Open the store in ``home``; with ``create``, make it (and record ``unit``).

        A store belongs to one unit: opening it for another is an :class:`InputError`.
        Without ``create``, a home without a store is an :class:`InputError` too.
        """
        path = home / NODE_DB
        if not path.exists() and not create:
            raise InputError(
                f"{home}: no node store here ({NODE_DB} is missing); start the node with "
                "`exchange node run --home ...` or create it with `exchange node init`"
            )
        if home.exists() and not home.is_dir():
            raise InputError(f"{home}: is not a folder (--home names the node's folder)")
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"{home}: cannot create the node folder ({error.strerror})") from None
        store = cls(make_engine(f"sqlite:///{path}"), home)
        try:
            NODE_METADATA.create_all(store.engine)
        except DatabaseError as error:  # not SQLite, unreadable, locked for too long
            raise InputError(f"{path}: cannot open the node store ({error.orig})") from None
        recorded = store.unit
        if recorded is None:
            if unit is None:
                raise InputError(f"{path}: the node store names no unit; run `exchange node init`")
            store._set("unit", unit.encode())
        elif unit is not None and create and recorded != unit:
            raise InputError(
                f"{home}: this node belongs to {recorded}, not {unit} (one home per node)"
            )
        return store

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    # ---------------------------------------------------------------- settings

    def _get(self, name: str) -> bytes | None:
        with self.engine.connect() as db:
            value = db.execute(select(SETTINGS.c.value).where(SETTINGS.c.name == name)).scalar()
        return bytes(value) if value is not None else None

    def _set(self, name: str, value: bytes) -> None:
        with self.engine.begin() as db:
            db.execute(delete(SETTINGS).where(SETTINGS.c.name == name))
            db.execute(insert(SETTINGS).values(name=name, value=value))

    @property
    def unit(self) -> str | None:
        """The unit whose node this is."""
        value = self._get("unit")
        return value.decode() if value is not None else None

    def signed_directory(self) -> bytes | None:
        """The hub's signed directory as last fetched (verified before it was stored)."""
        return self._get("directory")

    def save_signed_directory(self, data: bytes) -> None:
        """Keep the hub's signed directory (verify it first)."""
        self._set("directory", data)

    def hub_address(self) -> str | None:
        """The hub the node last ran against."""
        value = self._get("hub")
        return value.decode() if value is not None else None

    def save_hub_address(self, address: str) -> None:
        self._set("hub", address.encode())

    def kept_tree_head(self) -> bytes | None:
        """The newest signed tree head of the hub's log this node has checked."""
        return self._get("tree_head")

    def keep_tree_head(self, signed: bytes) -> None:
        self._set("tree_head", signed)

    def misbehaviours(self) -> list[dict[str, Any]]:
        """Proofs that the hub's log contradicted itself, as JSON records (never dropped)."""
        value = self._get("misbehaviour")
        return list(json.loads(value)) if value is not None else []

    def record_misbehaviour(self, record: dict[str, Any]) -> None:
        self._set("misbehaviour", json.dumps([*self.misbehaviours(), record]).encode())

    # ---------------------------------------------------------------- outbox

    def enqueue(self, envelope: SealedEnvelope, *, operation: str, now_us: int) -> OutboxRow:
        """Queue ``envelope`` for the hub; committed when this returns.

        The same message id twice is an :class:`InputError` (a message is sent once;
        the running node retries it on its own).
        """
        header = envelope.header
        values = {
            "message_id": envelope.message_id,
            "sender": envelope.sender,
            "operation": operation,
            "kind": header.kind.value,
            "channel": header.channel.value,
            "crime_area": header.crime_area.value,
            "recipients": ",".join(envelope.recipients),
            "envelope": envelope.raw,
            "envelope_digest": envelope.digest,
            "state": OutboxState.QUEUED,
            "attempts": 0,
            "created_at_us": now_us,
            "updated_at_us": now_us,
        }
        try:
            with self.engine.begin() as db:
                db.execute(insert(OUTBOX).values(**values))
        except IntegrityError:
            raise InputError(
                f"message {envelope.message_id} is already in this node's outbox"
            ) from None
        item = self.outbox_item(envelope.message_id)
        assert item is not None
        return item

    def outbox_item(self, message_id: str) -> OutboxRow | None:
        """The outbox item of ``message_id``, if this node queued it."""
        with self.engine.connect() as db:
            found = db.execute(select(OUTBOX).where(OUTBOX.c.message_id == message_id)).first()
        return _row(found, OutboxRow) if found is not None else None

    def outbox(self, *, states: Iterable[str] | None = None, limit: int = 1000) -> list[OutboxRow]:
        """Outbox items in the order they were queued (optionally only some states)."""
        query = select(OUTBOX).order_by(OUTBOX.c.seq).limit(limit)
        if states is not None:
            query = query.where(OUTBOX.c.state.in_(list(states)))
        with self.engine.connect() as db:
            return [_row(r, OutboxRow) for r in db.execute(query)]

    def record_outcome(self, message_id: str, view: EvidenceView, now_us: int) -> None:
        """The hub answered with an evidence: store it and close the item."""
        state = OutboxState.ACCEPTED if view.kind.value == "accepted" else OutboxState.REFUSED
        with self.engine.begin() as db:
            self._insert_evidence(db, view)
            db.execute(
                update(OUTBOX)
                .where(OUTBOX.c.message_id == message_id)
                .values(
                    state=state,
                    attempts=OUTBOX.c.attempts + 1,
                    status=None,
                    error=None,
                    updated_at_us=now_us,
                )
            )

    def record_failure(
        self, message_id: str, *, status: str, error: str, final: bool, now_us: int
    ) -> None:
        """A call failed: ``final`` closes the item as failed, otherwise it stays queued."""
        values: dict[str, Any] = {
            "attempts": OUTBOX.c.attempts + 1,
            "status": status,
            "error": error[:2000],
            "updated_at_us": now_us,
        }
        if final:
            values["state"] = OutboxState.FAILED
        with self.engine.begin() as db:
            db.execute(update(OUTBOX).where(OUTBOX.c.message_id == message_id).values(**values))

    # ---------------------------------------------------------------- inbox

    def store_delivery(
        self,
        delivered: Delivered,
        *,
        notice: SealedEnvelope | None = None,
    ) -> bool:
        """Store a delivery, its acceptance evidence and the delivered-ack, in one commit.

        Returns False when this message was already stored for this addressee (a
        re-delivery): nothing is stored twice, but the acknowledgement is queued
        again if it had not been sent, so the hub learns the node has it. ``notice``
        (a mismatch report to the sender) is queued in the outbox in the same commit.
        """
        envelope = delivered.envelope
        header = envelope.wire_header
        rejected = delivered.reject_code is not None
        with self.engine.begin() as db:
            self._insert_evidence(db, delivered.accepted)
            existing = db.execute(
                select(INBOX.c.id).where(
                    and_(
                        INBOX.c.message_id == envelope.message_id,
                        INBOX.c.addressee == delivered.addressee,
                    )
                )
            ).first()
            new = existing is None
            if new:
                db.execute(
                    insert(INBOX).values(
                        message_id=envelope.message_id,
                        addressee=delivered.addressee,
                        sender=envelope.sender,
                        kind=_kind_name(header.kind),
                        channel=_channel_name(header.channel),
                        crime_area=header.crime_area,
                        case_id=header.case_id or None,
                        in_reply_to=header.in_reply_to or None,
                        sequence=delivered.sequence,
                        envelope=envelope.raw,
                        state="rejected" if rejected else "received",
                        reject_code=delivered.reject_code,
                        reject_reason=delivered.reject_reason,
                        accepted_at_us=delivered.accepted.hub_time_us,
                        received_at_us=delivered.received_at_us,
                    )
                )
                if notice is not None:
                    self._insert_outbox(db, notice, delivered.received_at_us)
            else:
                # The hub offers it again, so it has no acknowledgement: send it again.
                db.execute(
                    update(ACKS)
                    .where(
                        and_(
                            ACKS.c.message_id == envelope.message_id,
                            ACKS.c.addressee == delivered.addressee,
                            ACKS.c.read.is_(False),
                            ACKS.c.on_behalf_of == "",
                        )
                    )
                    .values(sent=False, sequence=delivered.sequence)
                )
            self._insert_ack(
                db,
                message_id=envelope.message_id,
                addressee=delivered.addressee,
                sequence=delivered.sequence,
                read=False,
                on_behalf_of="",
                now_us=delivered.received_at_us,
            )
        return new

    def inbox(self, addressee: str) -> list[InboxRow]:
        """What ``addressee`` received through this node, oldest first."""
        with self.engine.connect() as db:
            rows = db.execute(
                select(INBOX).where(INBOX.c.addressee == addressee).order_by(INBOX.c.id)
            )
            return [_row(r, InboxRow) for r in rows]

    def inbox_item(self, message_id: str, addressee: str) -> InboxRow | None:
        """What ``addressee`` received as ``message_id`` through this node, if anything."""
        with self.engine.connect() as db:
            found = db.execute(
                select(INBOX).where(
                    and_(INBOX.c.message_id == message_id, INBOX.c.addressee == addressee)
                )
            ).first()
        return _row(found, InboxRow) if found is not None else None

    def mark_handed_on(
        self,
        item: InboxRow,
        *,
        now_us: int,
        reject_code: str | None = None,
        reject_reason: str | None = None,
        notice: SealedEnvelope | None = None,
    ) -> None:
        """A relayed unit's user took the message from this (relay) node: ack on its behalf.

        When opening it with the relayed unit's key failed, the item becomes rejected
        and ``notice`` (the mismatch report) is queued, in the same commit.
        """
        with self.engine.begin() as db:
            values: dict[str, Any] = {"handed_on_at_us": now_us}
            if reject_code is not None:
                values.update(
                    state="rejected", reject_code=reject_code, reject_reason=reject_reason
                )
            db.execute(update(INBOX).where(INBOX.c.id == item.id).values(**values))
            if notice is not None:
                self._insert_outbox(db, notice, now_us)
            self._insert_ack(
                db,
                message_id=item.message_id,
                addressee=item.addressee,
                sequence=item.sequence,
                read=False,
                on_behalf_of=item.addressee,
                now_us=now_us,
            )

    def mark_read(self, item: InboxRow, *, relayed: bool, now_us: int) -> None:
        """A person read it: note the time and queue the read acknowledgement."""
        with self.engine.begin() as db:
            db.execute(
                update(INBOX)
                .where(and_(INBOX.c.id == item.id, INBOX.c.read_at_us.is_(None)))
                .values(read_at_us=now_us)
            )
            self._insert_ack(
                db,
                message_id=item.message_id,
                addressee=item.addressee,
                sequence=item.sequence,
                read=True,
                on_behalf_of=item.addressee if relayed else "",
                now_us=now_us,
            )

    # ---------------------------------------------------------------- acks

    def pending_acks(self, limit: int = 256) -> list[AckRow]:
        """Acknowledgements not yet answered by the hub, in the order they were queued."""
        with self.engine.connect() as db:
            rows = db.execute(
                select(ACKS).where(ACKS.c.sent.is_(False)).order_by(ACKS.c.id).limit(limit)
            )
            return [_row(r, AckRow) for r in rows]

    def ack_sent(self, ack_id: int, view: EvidenceView) -> None:
        """The hub answered an acknowledgement: keep its evidence, close the ack."""
        with self.engine.begin() as db:
            self._insert_evidence(db, view)
            db.execute(
                update(ACKS)
                .where(ACKS.c.id == ack_id)
                .values(sent=True, attempts=ACKS.c.attempts + 1, error=None)
            )

    def ack_failed(self, ack_id: int, error: str, *, final: bool) -> None:
        """An acknowledgement failed (``final``: the hub will never take it; stop trying)."""
        values: dict[str, Any] = {"attempts": ACKS.c.attempts + 1, "error": error[:2000]}
        if final:
            values["sent"] = True
        with self.engine.begin() as db:
            db.execute(update(ACKS).where(ACKS.c.id == ack_id).values(**values))

    # ---------------------------------------------------------------- evidences

    def add_evidence(self, view: EvidenceView) -> None:
        """Keep a verified evidence (once, however often it is added)."""
        with self.engine.begin() as db:
            self._insert_evidence(db, view)

    def evidences(self, message_id: str) -> list[EvidenceRecord]:
        """Every evidence stored about ``message_id``, in log order."""
        with self.engine.connect() as db:
            rows = db.execute(
                select(EVIDENCES)
                .where(EVIDENCES.c.message_id == message_id)
                .order_by(EVIDENCES.c.log_index, EVIDENCES.c.id)
            )
            return [_row(r, EvidenceRecord) for r in rows]

    def counts(self) -> dict[str, int]:
        """Numbers for ``exchange node status``: outbox by state, inbox, acks to send."""
        with self.engine.connect() as db:
            out = {
                f"outbox_{state}": int(count)
                for state, count in db.execute(
                    select(OUTBOX.c.state, func.count()).group_by(OUTBOX.c.state)
                )
            }
            out["inbox"] = int(db.execute(select(func.count()).select_from(INBOX)).scalar() or 0)
            out["acks_pending"] = int(
                db.execute(
                    select(func.count()).select_from(ACKS).where(ACKS.c.sent.is_(False))
                ).scalar()
                or 0
            )
        return out

    # ---------------------------------------------------------------- helpers

    @staticmethod
    def _insert_evidence(db: Any, view: EvidenceView) -> None:
        values = _evidence_values(view)
        known = db.execute(
            select(EVIDENCES.c.id).where(EVIDENCES.c.digest == values["digest"])
        ).first()
        if known is None:
            db.execute(insert(EVIDENCES).values(**values))

    @staticmethod
    def _insert_ack(
        db: Any,
        *,
        message_id: str,
        addressee: str,
        sequence: int,
        read: bool,
        on_behalf_of: str,
        now_us: int,
    ) -> None:
        known = db.execute(
            select(ACKS.c.id).where(
                and_(
                    ACKS.c.message_id == message_id,
                    ACKS.c.addressee == addressee,
                    ACKS.c.read.is_(read),
                    ACKS.c.on_behalf_of == on_behalf_of,
                )
            )
        ).first()
        if known is None:
            db.execute(
                insert(ACKS).values(
                    message_id=message_id,
                    addressee=addressee,
                    sequence=sequence,
                    read=read,
                    on_behalf_of=on_behalf_of,
                    sent=False,
                    attempts=0,
                    created_at_us=now_us,
                )
            )

    @staticmethod
    def _insert_outbox(db: Any, envelope: SealedEnvelope, now_us: int) -> None:
        header = envelope.header
        known = db.execute(
            select(OUTBOX.c.seq).where(OUTBOX.c.message_id == envelope.message_id)
        ).first()
        if known is not None:
            return
        db.execute(
            insert(OUTBOX).values(
                message_id=envelope.message_id,
                sender=envelope.sender,
                operation="submit",
                kind=header.kind.value,
                channel=header.channel.value,
                crime_area=header.crime_area.value,
                recipients=",".join(envelope.recipients),
                envelope=envelope.raw,
                envelope_digest=envelope.digest,
                state=OutboxState.QUEUED,
                attempts=0,
                created_at_us=now_us,
                updated_at_us=now_us,
            )
        )


def _kind_name(number: int) -> str:
    return str(pb.Kind.Name(number)).removeprefix("KIND_")  # type: ignore[arg-type]


def _channel_name(number: int) -> str:
    return str(pb.Channel.Name(number)).removeprefix("CHANNEL_")  # type: ignore[arg-type]
