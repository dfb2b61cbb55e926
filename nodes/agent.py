"""The running national node: outbox sender, inbox subscriber, acknowledgement sender.

``exchange node run`` starts one :class:`NodeAgent` for one unit. Four tasks share
one channel to the hub and the node's SQLite store:

* **outbox**: submits every queued envelope until the hub answers with an evidence
  (accepted or refused). A hub or network away (UNAVAILABLE, DEADLINE_EXCEEDED, a
  transport error) is retried with exponential backoff and jitter, capped at a few
  seconds; a refusal of the call itself (INVALID_ARGUMENT, PERMISSION_DENIED,
  ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ...) closes the item as
  ``failed`` with the status and the hub's ``[RULE-ID] sentence``. The state is in the
  store, so a restart carries on where it stopped.
* **inbox**: a Subscribe stream, re-opened with backoff from cursor 0 (so anything
  not yet acknowledged comes again); each delivery is verified, opened (or kept for
  a relayed unit), stored and committed *before* it is acknowledged.
* **acks**: sends queued acknowledgements (delivered, handed on, read) in order.
* **directory**: fetches the hub's signed directory once, so user commands know
  which units this node relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from exchange.core.clock import Clock, SystemClock
from exchange.core.evidence import EvidenceKind
from exchange.core.keys import Directory, Keyring
from exchange.errors import ExchangeError
from exchange.logs import get_logger
from exchange.pki import load_directory, load_keyring, load_tls_material
from exchange.wire.v1 import exchange_pb2 as pb
from nodes.client import HubCallFailed, HubClient
from nodes.inbox import micros, receive
from nodes.log_watch import HeadCheck, check_newest_head
from nodes.store import NodeStore, OutboxRow, OutboxState
from nodes.verification import check_evidence, verify_signed_directory

__all__ = [
    "Backoff",
    "NodeAgent",
    "NodeConfig",
    "send_pending_acks",
    "submit_item",
]

log = get_logger("nodes.agent")

#: kinds of evidence the hub answers a submission or a forward with
OUTCOME_KINDS = frozenset({EvidenceKind.ACCEPTED, EvidenceKind.REFUSED})
ACK_KINDS = frozenset({EvidenceKind.DELIVERED, EvidenceKind.READ})


@dataclass
class Backoff:
    """Exponential backoff with jitter: ``base * 2**n``, capped, times a factor in [0.5, 1]."""

    base: float = 0.2
    cap: float = 5.0
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next(self) -> float:
        """The delay before the next attempt (and count this one)."""
        ceiling = min(self.cap, self.base * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return float(ceiling * (0.5 + self.rng.random() / 2))

    def reset(self) -> None:
        """Start again from the base delay (after a success)."""
        self.attempts = 0


@dataclass(frozen=True)
class NodeConfig:
    """What ``exchange node run`` needs."""

    unit: str
    hub: str
    certs: Path
    home: Path
    hub_name: str | None = None
    clock: Clock = field(default_factory=SystemClock)
    #: how often the store is looked at for work queued by other processes
    poll_seconds: float = 0.5
    backoff_base: float = 0.2
    backoff_cap: float = 5.0
    #: how often the hub's newest signed tree head is fetched and checked
    log_check_seconds: float = 30.0
    #: outbox items (and acknowledgements) on their way to the hub at once
    window: int = 64


async def submit_item(
    item: OutboxRow,
    client: HubClient,
    store: NodeStore,
    directory: Directory,
    clock: Clock,
) -> str:
    """Bring one outbox item to the hub; returns its state afterwards.

    Raises :class:`HubCallFailed` when trying again may help (the item stays queued,
    its attempt counted); any other failure closes the item as ``failed``.
    """
    bound = log.bind(message_id=item.message_id, sender=item.sender, operation=item.operation)
    try:
        if item.operation == "forward":
            evidence = await client.forward(item.envelope)
        else:
            evidence = await client.submit(item.envelope)
    except HubCallFailed as error:
        now_us = micros(clock.now())
        await asyncio.to_thread(
            store.record_failure,
            item.message_id,
            status=error.status.name,
            error=error.details,
            final=not error.retryable,
            now_us=now_us,
        )
        if error.retryable:
            bound.info("hub unavailable; will retry", status=error.status.name)
            raise
        bound.warning("submission failed", status=error.status.name, code=error.code)
        return OutboxState.FAILED
    now = clock.now()
    try:
        view = check_evidence(
            evidence,
            directory,
            now,
            message_id=item.message_id,
            envelope=item.envelope,
            kinds=OUTCOME_KINDS,
        )
    except ExchangeError as error:
        await asyncio.to_thread(
            store.record_failure,
            item.message_id,
            status=error.code,
            error=error.message,
            final=True,
            now_us=micros(now),
        )
        bound.error("hub evidence does not verify", code=error.code)
        return OutboxState.FAILED
    await asyncio.to_thread(store.record_outcome, item.message_id, view, micros(now))
    rules = sorted({v.rule for v in view.violations})
    bound.info("hub answered", outcome=view.kind.value, log_index=view.log_index, rules=rules)
    return OutboxState.ACCEPTED if view.kind is EvidenceKind.ACCEPTED else OutboxState.REFUSED


async def watch_log_once(
    client: HubClient, store: NodeStore, directory: Directory, now: datetime
) -> HeadCheck:
    """Fetch and check the hub's newest head; keep it, or keep the proof it contradicts ours."""
    checked = await check_newest_head(
        kept=await asyncio.to_thread(store.kept_tree_head),
        fetch_head=client.get_tree_head,
        fetch_consistency=client.consistency_proof,
        directory=directory,
        now=now,
    )
    if checked.misbehaviour is not None:
        await asyncio.to_thread(store.record_misbehaviour, checked.misbehaviour.to_json())
    else:
        await asyncio.to_thread(store.keep_tree_head, checked.kept)
    return checked


async def _acknowledged(client: HubClient, ack: Any) -> pb.Evidence | HubCallFailed:
    try:
        return await client.acknowledge(
            message_id=ack.message_id,
            sequence=ack.sequence,
            read=ack.read,
            on_behalf_of=ack.on_behalf_of,
        )
    except HubCallFailed as error:
        return error


async def send_pending_acks(
    client: HubClient, store: NodeStore, directory: Directory, clock: Clock, *, window: int = 1
) -> int:
    """Send queued acknowledgements in order; returns how many the hub answered.

    Stops at the first one the hub is unavailable for (raising :class:`HubCallFailed`),
    so the relay's own acknowledgement always precedes the one on the relayed unit's
    behalf. One the hub refuses for good is closed with its error and skipped.
    With a streamed client, up to ``window`` go out together: the stream carries them
    in order, and the hub records them in that order.
    """
    answered = 0
    pending = await asyncio.to_thread(store.pending_acks)
    for chunk in _chunks(pending, window if client.streamed else 1):
        outcomes = await asyncio.gather(*(_acknowledged(client, ack) for ack in chunk))
        for ack, outcome in zip(chunk, outcomes, strict=True):
            answered += await _record_ack(ack, outcome, store, directory, clock)
    return answered


def _chunks(acks: list[Any], window: int) -> Iterator[list[Any]]:
    """Acknowledgements in order, up to ``window`` together, one per delivery in each:
    a later one for the same delivery (on the relayed unit's behalf, or read) waits until
    the earlier one is answered, so a failed earlier one never lets the later one pass."""
    chunk: list[Any] = []
    sequences: set[int] = set()
    for ack in acks:
        if len(chunk) == window or ack.sequence in sequences:
            yield chunk
            chunk, sequences = [], set()
        chunk.append(ack)
        sequences.add(ack.sequence)
    if chunk:
        yield chunk


async def _record_ack(
    ack: Any,
    outcome: pb.Evidence | HubCallFailed,
    store: NodeStore,
    directory: Directory,
    clock: Clock,
) -> int:
    """Keep what the hub answered to one acknowledgement; 1 if it was answered.

    Raises the failure when trying again may help (the acknowledgement stays queued).
    """
    assert ack.id is not None
    if isinstance(outcome, HubCallFailed):
        if outcome.retryable:
            await asyncio.to_thread(store.ack_failed, ack.id, outcome.details, final=False)
            raise outcome
        await asyncio.to_thread(store.ack_failed, ack.id, outcome.details, final=True)
        log.warning(
            "acknowledgement refused",
            message_id=ack.message_id,
            sequence=ack.sequence,
            code=outcome.code,
        )
        return 0
    item = await asyncio.to_thread(store.inbox_item, ack.message_id, ack.addressee)
    try:
        view = check_evidence(
            outcome,
            directory,
            clock.now(),
            message_id=ack.message_id,
            envelope=item.envelope if item is not None else b"",
            kinds=ACK_KINDS,
        )
    except ExchangeError as error:
        failure: ExchangeError | None = error
    else:
        failure = None
    if failure is not None:
        await asyncio.to_thread(store.ack_failed, ack.id, failure.message, final=True)
        log.error("hub evidence does not verify", message_id=ack.message_id, code=failure.code)
        return 0
    await asyncio.to_thread(store.ack_sent, ack.id, view)
    log.info(
        "acknowledged",
        message_id=ack.message_id,
        addressee=ack.addressee,
        read=ack.read,
        on_behalf_of=ack.on_behalf_of or None,
        log_index=view.log_index,
    )
    return 1


class NodeAgent:
    """One unit's running node. ``await agent.run(stop)`` until ``stop`` is set."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.clock = config.clock
        # Load everything up front: a missing key or certificate fails at start, by name.
        self.directory: Directory = load_directory(config.certs)
        self.keyring: Keyring = load_keyring(config.certs, config.unit)
        self.tls = load_tls_material(config.certs, config.unit)
        self.store = NodeStore.open(config.home, unit=config.unit, create=True)
        #: set once the hub's directory is fetched and stored
        self.directory_ready = asyncio.Event()
        #: set whenever the subscribe stream is open (cleared when it drops)
        self.subscribed = asyncio.Event()
        self._wake_outbox = asyncio.Event()
        self._wake_acks = asyncio.Event()

    def _backoff(self) -> Backoff:
        return Backoff(base=self.config.backoff_base, cap=self.config.backoff_cap)

    async def run(self, stop: asyncio.Event) -> None:
        """Run the node's tasks until ``stop`` is set, then close cleanly."""
        # Every log line of this node's tasks (and their threads) names the unit.
        structlog.contextvars.bind_contextvars(unit=self.config.unit)
        # submissions and acknowledgements over long-lived streams, many at a time
        client = HubClient(
            self.config.hub, self.tls, server_name=self.config.hub_name, streamed=True
        )
        log.info("node started", hub=self.config.hub, home=str(self.config.home))
        tasks = [
            asyncio.create_task(self._guard("outbox", self._outbox_loop, client)),
            asyncio.create_task(self._guard("inbox", self._inbox_loop, client)),
            asyncio.create_task(self._guard("acks", self._ack_loop, client)),
            asyncio.create_task(self._guard("directory", self._directory_task, client)),
            asyncio.create_task(self._guard("log", self._log_task, client)),
        ]
        await asyncio.to_thread(self.store.save_hub_address, self.config.hub)
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            _done, stuck = await asyncio.wait(tasks, timeout=10)
            if stuck:
                log.warning("node tasks did not stop in time", tasks=len(stuck))
            await client.close()
            self.store.close()
            log.info("node stopped")

    async def _guard(
        self, name: str, loop: Callable[[HubClient], Awaitable[None]], client: HubClient
    ) -> None:
        """Keep a task alive through a bug: log it, pause, start the loop again."""
        while True:
            try:
                await loop(client)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node task failed; restarting it", task=name)
                await asyncio.sleep(self.config.backoff_cap)

    async def _pause(self, wake: asyncio.Event, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
        # cancellation that arrives as the wake-up does, and the node would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await wake.wait()
        wake.clear()

    # ---------------------------------------------------------------- outbox

    async def _outbox_loop(self, client: HubClient) -> None:
        retry_at: dict[str, float] = {}
        backoffs: dict[str, Backoff] = {}
        slots = asyncio.Semaphore(self.config.window)
        while True:
            queued = await asyncio.to_thread(self.store.outbox, states=[OutboxState.QUEUED])
            now = time.monotonic()
            due = [item for item in queued if retry_at.get(item.message_id, 0.0) <= now]

            async def send(item: OutboxRow) -> None:
                async with slots:
                    try:
                        await submit_item(item, client, self.store, self.directory, self.clock)
                    except HubCallFailed:
                        backoff = backoffs.setdefault(item.message_id, self._backoff())
                        retry_at[item.message_id] = time.monotonic() + backoff.next()
                        return
                retry_at.pop(item.message_id, None)
                backoffs.pop(item.message_id, None)

            # in queue order, up to `window` on their way at once (one stream carries them)
            await asyncio.gather(*(send(item) for item in due))
            pending = [t for m, t in retry_at.items() if any(q.message_id == m for q in queued)]
            delay = self.config.poll_seconds
            if pending:
                delay = max(0.01, min(delay, min(pending) - time.monotonic()))
            await self._pause(self._wake_outbox, delay)

    def wake(self) -> None:
        """Look at the outbox and the acknowledgements now (after queueing in-process)."""
        self._wake_outbox.set()
        self._wake_acks.set()

    # ---------------------------------------------------------------- inbox

    async def _inbox_loop(self, client: HubClient) -> None:
        backoff = self._backoff()
        while True:
            try:
                async for delivery in client.subscribe(cursor=0, on_open=self.subscribed.set):
                    backoff.reset()
                    await self._receive(delivery)
                log.info("subscription ended by the hub; reconnecting")
            except HubCallFailed as error:
                log.info("subscription dropped; reconnecting", status=error.status.name)
            finally:
                self.subscribed.clear()
            await asyncio.sleep(backoff.next())

    async def _receive(self, delivery: Any) -> None:
        try:
            received = await asyncio.to_thread(
                receive,
                delivery,
                store=self.store,
                keyring=self.keyring,
                directory=self.directory,
                now=self.clock.now(),
            )
        except ExchangeError as error:
            # Not stored, not acknowledged: the hub offers it again on the next stream.
            log.exception(
                "delivery not accepted by the node", sequence=delivery.sequence, code=error.code
            )
            return
        if received.notice_id is not None:
            self._wake_outbox.set()
        self._wake_acks.set()

    # ---------------------------------------------------------------- acks

    async def _ack_loop(self, client: HubClient) -> None:
        backoff = self._backoff()
        while True:
            delay = self.config.poll_seconds
            try:
                await send_pending_acks(
                    client, self.store, self.directory, self.clock, window=self.config.window
                )
                backoff.reset()
            except HubCallFailed:
                delay = backoff.next()
            await self._pause(self._wake_acks, delay)

    # ---------------------------------------------------------------- the hub's log

    async def _log_task(self, client: HubClient) -> None:
        """Keep the newest signed tree head; check every newer one for consistency."""
        while True:
            failure: ExchangeError | None = None
            try:
                await watch_log_once(client, self.store, self.directory, self.clock.now())
            except HubCallFailed:
                pass  # the hub is away; the next round asks again
            except ExchangeError as error:
                failure = error
            if failure is not None:
                log.error("the hub's tree head does not verify", code=failure.code)
            await asyncio.sleep(self.config.log_check_seconds)

    # ---------------------------------------------------------------- directory

    async def _directory_task(self, client: HubClient) -> None:
        backoff = self._backoff()
        while True:
            try:
                signed = await client.get_directory()
                verify_signed_directory(signed, self.directory, self.clock.now())
            except HubCallFailed:
                await asyncio.sleep(backoff.next())
                continue
            except ExchangeError as error:
                log.exception("hub directory does not verify", code=error.code)
                await asyncio.sleep(self.config.backoff_cap)
                continue
            await asyncio.to_thread(
                self.store.save_signed_directory, signed.SerializeToString(deterministic=True)
            )
            self.directory_ready.set()
            log.info("hub directory stored")
            return
