"""The hub's tables, declared once with SQLModel.

The accept path writes these same tables with SQLAlchemy Core statements (group
commit); everything else may use the ORM. Times are microseconds since the epoch
(UTC) in BIGINT columns, so SQLite and PostgreSQL agree to the microsecond.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, LargeBinary, Table
from sqlmodel import Field, SQLModel


class MessageRow(SQLModel, table=True):
    """An accepted message: routing facts from its header and the sealed envelope."""

    __tablename__ = "messages"

    id: str = Field(primary_key=True, max_length=200)
    sender: str = Field(index=True, max_length=40)
    kind: str = Field(max_length=20)
    channel: str = Field(max_length=10)
    crime_area: str = Field(max_length=60)
    classification: str = Field(max_length=20)
    priority: str = Field(max_length=20)
    case_id: str | None = Field(default=None, max_length=200)
    in_reply_to: str | None = Field(default=None, max_length=200)
    suite: str = Field(max_length=40)
    individuals: int = 0
    legal_entities: int = 0
    recipients: str = Field(max_length=2000)  # comma-separated unit ids, as addressed
    #: the sealed envelope; NULL once erased (the log entries stay)
    envelope: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    envelope_digest: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    size: int = 0
    accepted_at_us: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    forwarded_from: str | None = Field(default=None, max_length=200)
    forwarded_by: str | None = Field(default=None, max_length=40)
    log_index: int = Field(sa_column=Column(BigInteger, nullable=False))
    erased_at_us: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class DeliveryRow(SQLModel, table=True):
    """One message for one recipient connection; ``seq`` is the Subscribe cursor."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_connection_state_seq", "connection", "state", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)
    #: the unit whose node receives it (the relay, for a relayed unit)
    connection: str = Field(max_length=40)
    #: the unit the message is addressed to
    addressee: str = Field(max_length=40)
    message_id: str = Field(index=True, max_length=200)
    state: str = Field(default="pending", max_length=12)  # pending | delivered | read
    created_at_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    delivered_at_us: int | None = Field(default=None, sa_column=Column(BigInteger))
    read_at_us: int | None = Field(default=None, sa_column=Column(BigInteger))


class EvidenceRow(SQLModel, table=True):
    """A hub-signed evidence, as sent (so a resubmission gets the very same bytes)."""

    __tablename__ = "evidences"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(index=True, max_length=200)
    kind: str = Field(max_length=12)
    unit: str = Field(max_length=40)
    evidence: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    log_index: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class LogEntryRow(SQLModel, table=True):
    """One event of the exchange log; ``idx`` is its leaf index, from 0, without gaps."""

    __tablename__ = "log_entries"

    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    kind: str = Field(max_length=20, index=True)
    message_id: str | None = Field(default=None, max_length=200, index=True)
    hub_time_us: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    #: the canonical entry bytes (README "Exchange log"); the leaf is SHA-256(0x00 || entry)
    entry: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class PermissionRow(SQLModel, table=True):
    """A permission a provider signed (e.g. to forward H2 content)."""

    __tablename__ = "permissions"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(index=True, max_length=200)
    provider: str = Field(max_length=40)
    grantee: str = Field(max_length=40)
    recipients: str = Field(max_length=2000)
    permission: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    granted_at_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class TreeHeadRow(SQLModel, table=True):
    """A tree head the hub signed: the log's size and root hash at a hub time."""

    __tablename__ = "tree_heads"

    id: int | None = Field(default=None, primary_key=True)
    size: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    root_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    hub_time_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: the serialized SignedTreeHead, as served to nodes
    signed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


# The Core tables behind the models, for SQLAlchemy Core statements on the hot path.
MESSAGES: Table = MessageRow.__table__  # type: ignore[attr-defined]
DELIVERIES: Table = DeliveryRow.__table__  # type: ignore[attr-defined]
EVIDENCES: Table = EvidenceRow.__table__  # type: ignore[attr-defined]
LOG_ENTRIES: Table = LogEntryRow.__table__  # type: ignore[attr-defined]
PERMISSIONS: Table = PermissionRow.__table__  # type: ignore[attr-defined]
TREE_HEADS: Table = TreeHeadRow.__table__  # type: ignore[attr-defined]
