"""Figures computed from the exchange log: what each unit sent, received, had refused.

A message counts once for its sender (sent) and once for each recipient (received),
when the hub accepted it; a refused message counts only as a refusal, by rule. The
log holds ids and counts only, so these figures never need a message body.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from exchange.core.log_entry import LogEntry, LogEvent

#: events that put a message into the exchange (a forward is a new message)
_EXCHANGED = (LogEvent.ACCEPTED, LogEvent.FORWARDED)


@dataclass
class UnitFigures:
    """One unit's counts."""

    sent: int = 0
    received: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def exchanged(self) -> int:
        return self.sent + self.received

    def to_json(self) -> dict[str, object]:
        return {
            "exchanged": self.exchanged,
            "sent": self.sent,
            "received": self.received,
            "refused": dict(sorted(self.refused.items())),
        }


def unit_figures(entries: Iterable[LogEntry]) -> dict[str, UnitFigures]:
    """Sent, received and refusals by rule, per unit, from log entries."""
    figures: dict[str, UnitFigures] = {}

    def of(unit: str) -> UnitFigures:
        return figures.setdefault(unit, UnitFigures())

    for entry in entries:
        if entry.event in _EXCHANGED:
            of(entry.sender).sent += 1
            for recipient in entry.recipients:
                of(recipient).received += 1
        elif entry.event is LogEvent.REFUSED:
            for rule in entry.rules:
                of(entry.sender).refused[rule] += 1
    return dict(sorted(figures.items()))
