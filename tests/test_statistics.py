"""Figures from the log: sent once per message, received once per recipient."""

from __future__ import annotations

from exchange.core.log_entry import LogEntry, LogEvent
from exchange.core.statistics import unit_figures


def entry(
    event: LogEvent, sender: str, recipients: tuple[str, ...], rules: tuple[str, ...] = ()
) -> LogEntry:
    return LogEntry(
        event=event,
        hub_time_us=1,
        message_id="m",
        sender=sender,
        recipients=recipients,
        rules=rules,
    )


def test_sent_once_received_per_recipient_refusals_by_rule() -> None:
    figures = unit_figures(
        [
            entry(LogEvent.ACCEPTED, "RS.CTU", ("EU.EUROPOL", "AT.ENU")),
            entry(LogEvent.ACCEPTED, "EU.EUROPOL", ("RS.CTU",)),
            entry(LogEvent.DELIVERED, "RS.CTU", ("EU.EUROPOL",)),  # not a new message
            entry(LogEvent.FORWARDED, "EU.EUROPOL", ("MK.CTS",)),
            entry(LogEvent.REFUSED, "BA.DKPT", ("EU.EUROPOL",), ("CH-NOT-MEMBER",)),
        ]
    )
    assert figures["RS.CTU"].to_json() == {"exchanged": 2, "sent": 1, "received": 1, "refused": {}}
    assert figures["EU.EUROPOL"].sent == 2 and figures["EU.EUROPOL"].received == 1
    assert figures["MK.CTS"].received == 1
    assert figures["BA.DKPT"].refused == {"CH-NOT-MEMBER": 1}
    assert figures["BA.DKPT"].sent == 0 and "EU.EUROPOL" in figures
