"""Hub replicas sharing one PostgreSQL database (127.0.0.1:5432 on these machines).

Two real hubs with mutual TLS on one fresh schema: a node may submit to one and receive
from the other, the log stays one gap-free, verifiable sequence whichever replica
appends, and the same message sent to both is accepted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select
from test_hub import TIMEOUT, Hub, header_json, run_hub

from exchange.core.audit import audit_log
from exchange.core.evidence import EvidenceKind, verify_evidence
from exchange.core.merkle import leaf_hash, verify_consistency, verify_inclusion
from exchange.core.tree_head import verify_tree_head
from exchange.hub.background import BackgroundHub
from exchange.pki import load_directory
from exchange.store.database import make_engine
from exchange.store.tables import EVIDENCES, LOG_ENTRIES, TREE_HEADS, MessageRow
from exchange.wire.v1 import exchange_pb2 as pb


@pytest.fixture
def replicas(dev_pki: Path, pg_url: str) -> Iterator[tuple[Hub, Hub]]:
    first: BackgroundHub | None = None
    second: BackgroundHub | None = None
    try:
        first, second = run_hub(dev_pki, pg_url), run_hub(dev_pki, pg_url)
        yield Hub(dev_pki, first.port, pg_url), Hub(dev_pki, second.port, pg_url)
    finally:
        for hub in (first, second):
            if hub is not None:
                hub.stop()


def _wait_listening(*hubs: BackgroundHub) -> None:
    for hub in hubs:
        listener = hub.hub.service.listener
        assert listener is not None
        assert listener.listening.wait(10)


def test_message_submitted_to_one_replica_reaches_a_stream_open_on_the_other(
    dev_pki: Path, pg_url: str
) -> None:
    first, second = run_hub(dev_pki, pg_url), run_hub(dev_pki, pg_url)
    try:
        _wait_listening(first, second)
        a, b = Hub(dev_pki, first.port, pg_url), Hub(dev_pki, second.port, pg_url)
        # the recipient's stream is open on B before the message exists
        stream = b.stub("EU.EUROPOL").Subscribe(pb.SubscribeRequest(), timeout=TIMEOUT)
        assert stream.initial_metadata() is not None
        envelope = a.seal("AL.CTD", header_json())
        sent = time.monotonic()
        a.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
        delivery = next(iter(stream)).deliveries[0]
        waited = time.monotonic() - sent
        stream.cancel()
        assert delivery.envelope == envelope.raw
        # woken by A's notice, not by B's safety re-read of the store (every 30 s)
        assert waited < 10
        # acknowledged on B, the delivery evidence is logged once, in the shared log
        ack = b.stub("EU.EUROPOL").Acknowledge(
            pb.AcknowledgeRequest(message_id=envelope.message_id, sequence=delivery.sequence),
            timeout=TIMEOUT,
        )
        view = verify_evidence(ack.evidence, load_directory(dev_pki), datetime.now(UTC))
        assert view.kind is EvidenceKind.DELIVERED
    finally:
        first.stop()
        second.stop()


def test_concurrent_submissions_to_two_replicas_keep_one_gap_free_log(
    replicas: tuple[Hub, Hub],
) -> None:
    a, b = replicas
    per_replica = 25
    evidences: list[pb.Evidence] = []
    failures: list[BaseException] = []

    def load(hub: Hub, sender: str) -> None:
        try:
            stub = hub.stub(sender)
            for _ in range(per_replica):
                envelope = hub.seal(sender, header_json(sender=sender))
                response = stub.Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
                evidences.append(response.evidence)
        except BaseException as error:  # reported below, not lost in the thread
            failures.append(error)

    threads = [
        threading.Thread(target=load, args=(a, "AL.CTD")),
        threading.Thread(target=load, args=(b, "RS.CTU")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures
    directory = load_directory(a.certs)
    now = datetime.now(UTC)
    indexes = sorted(verify_evidence(e, directory, now).log_index for e in evidences)
    assert len(set(indexes)) == 2 * per_replica  # no index handed out twice
    assert a.rows(MessageRow) == 2 * per_replica

    # heads from both replicas: the same tree, each a prefix of the other's or equal
    heads = [
        verify_tree_head(hub.stub("AL.CTD").GetTreeHead(pb.GetTreeHeadRequest()), directory, now)
        for hub in (a, b)
    ]
    small, large = sorted(heads, key=lambda h: h.size)
    assert large.size >= 1 + 2 * per_replica  # the policy entries and every acceptance
    proof = b.stub("AL.CTD").GetConsistencyProof(
        pb.GetConsistencyProofRequest(old_size=small.size, new_size=large.size)
    )
    assert verify_consistency(
        small.size, large.size, small.root_hash, large.root_hash, proof.hashes
    )

    engine = make_engine(a.db_url)
    with engine.connect() as db:
        entries = [
            (int(i), bytes(e))
            for i, e in db.execute(
                select(LOG_ENTRIES.c.idx, LOG_ENTRIES.c.entry).order_by(LOG_ENTRIES.c.idx)
            )
        ]
        stored_evidences = [bytes(r[0]) for r in db.execute(select(EVIDENCES.c.evidence))]
        stored_heads = [bytes(r[0]) for r in db.execute(select(TREE_HEADS.c.signed))]
    assert [i for i, _ in entries] == list(range(len(entries)))
    report = audit_log(
        entries, evidences=stored_evidences, heads=stored_heads, directory=directory, now=now
    )
    assert report.ok, report.problems

    # an entry A appended, proven in the tree B signed
    index = min(indexes)
    proof_b = b.stub("AL.CTD").GetInclusionProof(
        pb.GetInclusionProofRequest(index=index, tree_size=large.size)
    )
    assert verify_inclusion(
        leaf_hash(entries[index][1]), index, large.size, proof_b.hashes, large.root_hash
    )


def test_same_message_sent_to_both_replicas_is_accepted_once(replicas: tuple[Hub, Hub]) -> None:
    a, b = replicas
    envelope = a.seal("AL.CTD", header_json())
    first = a.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
    again = b.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
    assert first.evidence == again.evidence
    other = a.seal("AL.CTD", header_json(id=envelope.message_id), text="other content")
    with pytest.raises(grpc.RpcError) as refused:
        b.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=other.raw), timeout=TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert a.rows(MessageRow) == 1


def test_node_client_fails_over_to_the_other_replica(dev_pki: Path, pg_url: str) -> None:
    """``--hub ipv4:A,B``: gRPC's own address list; when A stops, the node goes on with B."""
    import asyncio

    from exchange.pki import load_tls_material
    from nodes.client import HubCallFailed, HubClient

    first, second = run_hub(dev_pki, pg_url), run_hub(dev_pki, pg_url)
    hub = Hub(dev_pki, first.port, pg_url)
    before, after = hub.seal("AL.CTD", header_json()), hub.seal("AL.CTD", header_json())
    target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
    retried: list[bool] = []

    async def scenario() -> list[pb.Evidence]:
        tls = load_tls_material(dev_pki, "AL.CTD")
        async with HubClient(target, tls, server_name="localhost", streamed=True) as client:
            answers = [await client.submit(before.raw)]
            await asyncio.to_thread(first.stop)
            for _ in range(50):  # as the node's outbox does: again, with a pause
                try:
                    answers.append(await client.submit(after.raw))
                    break
                except HubCallFailed as error:
                    retried.append(error.retryable)
                    await asyncio.sleep(0.2)
            return answers

    try:
        answers = asyncio.run(scenario())
    finally:
        first.stop()
        second.stop()
    assert all(retried)
    directory = load_directory(dev_pki)
    kinds = [verify_evidence(e, directory, datetime.now(UTC)).kind for e in answers]
    assert kinds == [EvidenceKind.ACCEPTED, EvidenceKind.ACCEPTED]
    assert hub.rows(MessageRow) == 2


def test_delivery_from_the_other_replica_is_not_skipped_behind_a_later_local_one(
    dev_pki: Path, pg_url: str
) -> None:
    """M1 accepted by A, then M2 by B: B's open stream has sent M2 (a later sequence)
    when A's notice of M1 arrives; M1 must still come, without a reconnect."""
    first, second = run_hub(dev_pki, pg_url), run_hub(dev_pki, pg_url)
    try:
        _wait_listening(first, second)
        a, b = Hub(dev_pki, first.port, pg_url), Hub(dev_pki, second.port, pg_url)
        # B hears of A's deliveries late (a busy database): after its own later one
        listener = second.hub.service.listener
        assert listener is not None
        hear = listener.wake

        def hear_late(announced: tuple[str, int] | None) -> None:
            time.sleep(0.5)
            hear(announced)

        listener.wake = hear_late
        stream = b.stub("EU.EUROPOL").Subscribe(pb.SubscribeRequest(), timeout=TIMEOUT)
        assert stream.initial_metadata() is not None
        m1, m2 = a.seal("AL.CTD", header_json()), b.seal("RS.CTU", header_json(sender="RS.CTU"))
        a.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=m1.raw), timeout=TIMEOUT)
        b.stub("RS.CTU").Submit(pb.SubmitRequest(envelope=m2.raw), timeout=TIMEOUT)
        received: set[str] = set()
        for message in stream:
            received |= {d.message_id for d in message.deliveries}
            if {m1.message_id, m2.message_id} <= received:
                break
        stream.cancel()
        assert {m1.message_id, m2.message_id} <= received
    finally:
        first.stop()
        second.stop()


def test_replica_started_while_another_appends_signs_the_same_tree(
    dev_pki: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B reads the log, then A appends before B's writer starts: B must not lose it."""
    from exchange.hub import transparency

    first = run_hub(dev_pki, pg_url)
    second: BackgroundHub | None = None
    try:
        a = Hub(dev_pki, first.port, pg_url)
        submit = a.stub("AL.CTD").Submit
        submit(pb.SubmitRequest(envelope=a.seal("AL.CTD", header_json()).raw), timeout=TIMEOUT)
        load = transparency.HubLog.load

        def load_then_the_other_appends(log: transparency.HubLog) -> None:
            load(log)
            envelope = a.seal("AL.CTD", header_json())
            submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)

        monkeypatch.setattr(transparency.HubLog, "load", load_then_the_other_appends)
        second = run_hub(dev_pki, pg_url)
        monkeypatch.setattr(transparency.HubLog, "load", load)
        b = Hub(dev_pki, second.port, pg_url)
        envelope = b.seal("AL.CTD", header_json())
        b.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
        with make_engine(pg_url).connect() as db:
            stored = db.execute(select(LOG_ENTRIES.c.idx)).scalars().all()
        assert second.hub.service.log.size == len(stored)
        directory, now = load_directory(dev_pki), datetime.now(UTC)
        heads = [
            verify_tree_head(h.stub("AL.CTD").GetTreeHead(pb.GetTreeHeadRequest()), directory, now)
            for h in (a, b)
        ]
        assert heads[0].size == heads[1].size == len(stored)
        assert heads[0].root_hash == heads[1].root_hash
    finally:
        first.stop()
        if second is not None:
            second.stop()


def _collect(stream: Any, wanted: set[str], seconds: float) -> set[str]:
    """Message ids the stream delivers until all ``wanted`` came or ``seconds`` passed."""
    got: set[str] = set()

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for message in stream:
                got.update(d.message_id for d in message.deliveries)
                if wanted <= got:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    stream.cancel()
    return got


def test_announced_delivery_does_not_skip_the_rest_of_a_backlog(
    dev_pki: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's stream pages through a backlog (2 per page here) when A accepts one more for
    the same node: the announced one must not move the stream past the unread pages."""
    from exchange.hub import server as hub_server

    init = hub_server.HubServicer.__init__

    def small_pages(servicer: Any, *args: Any, **kwargs: Any) -> None:
        init(servicer, *args, **kwargs)
        servicer.page = 2

    monkeypatch.setattr(hub_server.HubServicer, "__init__", small_pages)
    first, second = run_hub(dev_pki, pg_url), run_hub(dev_pki, pg_url)
    try:
        _wait_listening(first, second)
        a, b = Hub(dev_pki, first.port, pg_url), Hub(dev_pki, second.port, pg_url)
        backlog = [b.seal("RS.CTU", header_json(sender="RS.CTU")) for _ in range(6)]
        for envelope in backlog:
            b.stub("RS.CTU").Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
        late = a.seal("AL.CTD", header_json())
        service = second.hub.service
        pending = service.pending
        pages = 0

        async def first_page_then_a_accepts(connection: str, after: int, limit: int = 256) -> Any:
            nonlocal pages
            pages += 1
            page = await pending(connection, after, limit)
            if pages == 1:
                submit = a.stub("AL.CTD").Submit
                await asyncio.to_thread(
                    submit, pb.SubmitRequest(envelope=late.raw), timeout=TIMEOUT
                )
                for _ in range(100):  # until B has heard of it
                    if any(s.announced for s in service._subscriptions.get("EU.EUROPOL", ())):
                        break
                    await asyncio.sleep(0.05)
            return page

        service.pending = first_page_then_a_accepts  # type: ignore[method-assign]
        stream = b.stub("EU.EUROPOL").Subscribe(pb.SubscribeRequest(), timeout=TIMEOUT)
        wanted = {e.message_id for e in backlog} | {late.message_id}
        assert wanted <= _collect(stream, wanted, 8)
    finally:
        first.stop()
        second.stop()


def test_own_delivery_woken_late_is_not_dropped_behind_an_announced_one(
    dev_pki: Path, pg_url: str
) -> None:
    """B commits L, A then commits R; B's own wake-up for L comes after A's notice:
    L must still be sent."""
    first, second = run_hub(dev_pki, pg_url), run_hub(dev_pki, pg_url)
    try:
        _wait_listening(first, second)
        a, b = Hub(dev_pki, first.port, pg_url), Hub(dev_pki, second.port, pg_url)
        service = second.hub.service
        publish = service._publish

        def late_publish(offers: Any) -> None:  # B's writer thread is late (a busy hub)
            time.sleep(1.5)
            publish(offers)

        service._publish = late_publish  # type: ignore[method-assign]
        stream = b.stub("EU.EUROPOL").Subscribe(pb.SubscribeRequest(), timeout=TIMEOUT)
        assert stream.initial_metadata() is not None
        mine = b.seal("RS.CTU", header_json(sender="RS.CTU"))
        theirs = a.seal("AL.CTD", header_json())
        sending = threading.Thread(
            target=b.stub("RS.CTU").Submit,
            args=(pb.SubmitRequest(envelope=mine.raw),),
            kwargs={"timeout": TIMEOUT},
        )
        sending.start()
        time.sleep(0.5)  # B committed; its wake-up is still to come
        a.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=theirs.raw), timeout=TIMEOUT)
        sending.join()
        wanted = {mine.message_id, theirs.message_id}
        assert wanted <= _collect(stream, wanted, 6)
    finally:
        first.stop()
        second.stop()


def test_a_flood_of_notices_for_a_slow_stream_falls_back_to_reading_the_store(
    dev_pki: Path, pg_url: str
) -> None:
    """Announced numbers are kept up to the mailbox's capacity, then forgotten for a
    read of the store from the start (bounded memory, nothing lost)."""
    running = run_hub(dev_pki, pg_url)
    try:
        service = running.hub.service

        async def flood() -> tuple[set[int], bool]:
            subscription = service.subscribe("EU.EUROPOL")
            subscription.capacity = 3
            for sequence in range(1, 6):
                service._announce(("EU.EUROPOL", sequence))
            service.unsubscribe(subscription)
            return subscription.announced, subscription.reread_all

        announced, reread_all = asyncio.run_coroutine_threadsafe(flood(), running.loop).result(10)
    finally:
        running.stop()
    assert reread_all
    assert len(announced) <= 3
