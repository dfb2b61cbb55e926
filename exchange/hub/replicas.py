"""Hub replicas sharing one PostgreSQL database: how they hear of each other's deliveries.

Nodes may connect to any replica. A message accepted by one replica is stored for its
recipients, whose streams may be open on another. Each replica's writer tells the others
in the same transaction, with ``pg_notify`` on :data:`DELIVERIES_CHANNEL` (PostgreSQL
sends it when, and only if, the transaction commits): ``"<replica> <connection> <seq>"``.
Every replica listens on a connection of its own, and on a notice from another replica
hands that delivery's sequence number to the connection's open streams, which read it
from the store: by number, not "after my cursor", because a stream may already have
sent a later delivery committed here. After the listening connection dropped (notices
may have been missed) every stream reads the store from its start once.

The writers themselves take turns on the log through an advisory lock (see
:mod:`exchange.hub.writer`), so the log stays one sequence whoever appends to it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from sqlalchemy import Engine

from exchange.logs import get_logger

log = get_logger("exchange.hub.replicas")

#: the PostgreSQL notification channel of new deliveries
DELIVERIES_CHANNEL = "exchange_deliveries"

#: called with (connection, delivery sequence) announced by another replica, or ``None``:
#: notices may have been missed, every stream reads the store from its start
Wake = Callable[[tuple[str, int] | None], None]


class ReplicaListener:
    """Listens for the other replicas' deliveries, in a thread with its own connection."""

    def __init__(self, engine: Engine, wake: Wake, *, poll_seconds: float = 1.0) -> None:
        self.url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.wake = wake
        self.poll_seconds = poll_seconds
        #: this replica's name in notices (its own are skipped)
        self.replica = uuid.uuid4().hex[:12]
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replica-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.poll_seconds + 5)

    def _run(self) -> None:
        import psycopg

        missed = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(f"LISTEN {DELIVERIES_CHANNEL}")
                    self.listening.set()
                    if missed:  # notices may have come while we were away
                        self.wake(None)
                    while not self._stop.is_set():
                        self._deliver(connection.notifies(timeout=self.poll_seconds))
            except psycopg.Error as error:
                self.listening.clear()
                missed = True
                log.warning("replica notices unavailable; retrying", error=str(error)[:200])
                self._stop.wait(self.poll_seconds)

    def _deliver(self, notices: object) -> None:
        for notice in notices:  # type: ignore[attr-defined]  # each as it comes
            replica, connection, sequence = [*str(notice.payload).split(" "), "", ""][:3]
            if replica != self.replica and connection and sequence.isdigit():
                self.wake((connection, int(sequence)))
