"""Entries of the exchange log: one per event, holding ids and counts, never names or bodies.

Encoding (what the log's leaf hash is computed over): UTF-8 JSON with keys sorted,
no insignificant white space, no floats, fields with empty values left out, and a
version field ``v``. The same entry always gives the same bytes, and erasing a
message's body never changes an entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from exchange.core.header import Header
from exchange.errors import MalformedEnvelope

ENTRY_VERSION = 1


class LogEvent(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    ACKNOWLEDGED = "acknowledged"
    FORWARDED = "forwarded"
    PERMISSION_ASKED = "permission_asked"
    PERMISSION_GRANTED = "permission_granted"
    PERMISSION_DENIED = "permission_denied"
    NOTICE = "notice"
    ERASED = "erased"
    POLICY_LOADED = "policy_loaded"


@dataclass(frozen=True)
class LogEntry:
    """One event. ``unit`` is who it concerns beyond the sender (the recipient, the relay)."""

    event: LogEvent
    hub_time_us: int
    message_id: str = ""
    kind: str = ""
    sender: str = ""
    recipients: tuple[str, ...] = ()
    channel: str = ""
    crime_area: str = ""
    priority: str = ""
    in_reply_to: str = ""
    case_id: str = ""
    individuals: int = 0
    legal_entities: int = 0
    unit: str = ""
    on_behalf_of: str = ""
    rules: tuple[str, ...] = ()
    policy_hash: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The canonical bytes of this entry."""
        fields: dict[str, Any] = {
            "v": ENTRY_VERSION,
            "event": self.event.value,
            "hub_time_us": self.hub_time_us,
            "message_id": self.message_id,
            "kind": self.kind,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "channel": self.channel,
            "crime_area": self.crime_area,
            "priority": self.priority,
            "in_reply_to": self.in_reply_to,
            "case_id": self.case_id,
            "individuals": self.individuals,
            "legal_entities": self.legal_entities,
            "unit": self.unit,
            "on_behalf_of": self.on_behalf_of,
            "rules": list(self.rules),
            "policy_hash": self.policy_hash,
            "extra": dict(self.extra),
        }
        kept = {k: v for k, v in fields.items() if v not in ("", [], {}) and v is not None}
        kept["individuals"] = self.individuals
        kept["legal_entities"] = self.legal_entities
        return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> LogEntry:
        """Parse entry bytes; refuses bytes that are not in canonical form."""
        try:
            raw = json.loads(data)
            entry = cls(
                event=LogEvent(raw["event"]),
                hub_time_us=int(raw["hub_time_us"]),
                message_id=raw.get("message_id", ""),
                kind=raw.get("kind", ""),
                sender=raw.get("sender", ""),
                recipients=tuple(raw.get("recipients", ())),
                channel=raw.get("channel", ""),
                crime_area=raw.get("crime_area", ""),
                priority=raw.get("priority", ""),
                in_reply_to=raw.get("in_reply_to", ""),
                case_id=raw.get("case_id", ""),
                individuals=int(raw.get("individuals", 0)),
                legal_entities=int(raw.get("legal_entities", 0)),
                unit=raw.get("unit", ""),
                on_behalf_of=raw.get("on_behalf_of", ""),
                rules=tuple(raw.get("rules", ())),
                policy_hash=raw.get("policy_hash", ""),
                extra=dict(raw.get("extra", {})),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise MalformedEnvelope(f"not a log entry: {error}") from None
        if raw.get("v") != ENTRY_VERSION or entry.encode() != data:
            raise MalformedEnvelope("the log entry is not in canonical form")
        return entry


def entry_for_header(
    event: LogEvent,
    header: Header,
    *,
    hub_time_us: int,
    policy_hash: str,
    rules: tuple[str, ...] = (),
    unit: str = "",
    on_behalf_of: str = "",
) -> LogEntry:
    """An entry about a message, with what the statistics need from its header."""
    return LogEntry(
        event=event,
        hub_time_us=hub_time_us,
        message_id=header.id,
        kind=header.kind.value,
        sender=header.sender,
        recipients=header.recipients,
        channel=header.channel.value,
        crime_area=header.crime_area.value,
        priority=header.priority.value,
        in_reply_to=header.in_reply_to or "",
        case_id=header.case or "",
        individuals=len(header.subjects.individuals),
        legal_entities=header.subjects.legal_entities,
        unit=unit,
        on_behalf_of=on_behalf_of,
        rules=rules,
        policy_hash=policy_hash,
    )
