"""The hub over real gRPC with mutual TLS, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import queue
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import func, select, text

from exchange.core.body import Body
from exchange.core.clock import SystemClock
from exchange.core.envelope import SealedEnvelope, open_envelope, seal
from exchange.core.evidence import EvidenceKind, verify_evidence
from exchange.core.header import Header
from exchange.core.suites import CLASSIC
from exchange.hub.background import BackgroundHub
from exchange.hub.server import HubConfig
from exchange.pki import init_pki, load_directory, load_keyring, load_tls_material, revoke_subject
from exchange.store.database import make_engine
from exchange.store.tables import LOG_ENTRIES, DeliveryRow, LogEntryRow, MessageRow
from exchange.wire.v1 import exchange_pb2 as pb
from exchange.wire.v1 import exchange_pb2_grpc as pb_grpc

POLICIES = Path(__file__).resolve().parent.parent / "policies"

TIMEOUT = 15


def header_json(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": f"msg-{uuid.uuid4().hex[:12]}",
        "kind": "REQUEST",
        "sender": "AL.CTD",
        "to": ["EU.EUROPOL"],
        "cc": [],
        "channel": "CT",
        "crime_area": "terrorism",
        "purpose": "cross_checking",
        "priority": "normal",
        "case": None,
        "in_reply_to": None,
        "classification": "RESTREINT_UE",
        "handling": {
            "codes": ["H0"],
            "h3": {"no_third_party": False, "only_units": [], "use_until": None, "text": ""},
        },
        "evaluation": None,
        "subjects": {
            "individuals": [],
            "legal_entities": 0,
            "special_categories": [],
            "justification": "",
        },
    }
    base.update(overrides)
    return base


def body(text: str = "Checks requested.") -> Body:
    return Body.from_json({"text": text}, base_dir=Path("."), source="test body")


@dataclass
class Hub:
    certs: Path
    port: int
    db_url: str

    def channel(self, unit: str, certs: Path | None = None) -> grpc.Channel:
        tls = load_tls_material(certs or self.certs, unit)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.root_ca_pem,
            private_key=tls.private_key_pem,
            certificate_chain=tls.certificate_chain_pem,
        )
        return grpc.secure_channel(
            f"127.0.0.1:{self.port}",
            credentials,
            options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
        )

    def stub(self, unit: str, certs: Path | None = None) -> pb_grpc.HubStub:
        return pb_grpc.HubStub(self.channel(unit, certs))

    def seal(
        self, sender: str, header: dict[str, Any], text: str = "Checks requested."
    ) -> SealedEnvelope:
        directory = load_directory(self.certs)
        return seal(
            Header.from_json(header),
            body(text),
            keyring=load_keyring(self.certs, sender),
            directory=directory,
            now=datetime.now(UTC),
        )

    def first_delivery(self, unit: str) -> pb.Delivery:
        """The first pending delivery of ``unit``'s subscription (the stream then closes)."""
        stream = self.stub(unit).Subscribe(pb.SubscribeRequest(cursor=0), timeout=TIMEOUT)
        delivery: pb.Delivery = next(iter(stream)).deliveries[0]
        stream.cancel()
        return delivery

    def submitted_and_delivered(self, sender: str, recipient: str) -> tuple[SealedEnvelope, Any]:
        """A message from ``sender`` to ``recipient``, accepted, and its delivery."""
        envelope = self.seal(sender, header_json(sender=sender, to=[recipient]))
        self.stub(sender).Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
        return envelope, self.first_delivery(recipient)

    def rows(self, table: Any) -> int:
        engine = make_engine(self.db_url)
        with engine.connect() as db:
            return int(db.execute(select(func.count()).select_from(table.__table__)).scalar_one())


def run_hub(certs: Path, db_url: str, policies: Path = POLICIES) -> BackgroundHub:
    hub = BackgroundHub(
        HubConfig(
            listen="127.0.0.1:0", certs=certs, db_url=db_url, policies=policies, clock=SystemClock()
        )
    )
    hub.start()
    return hub


def run_hub_with_small_limit(dev_pki: Path, tmp_path: Path) -> tuple[BackgroundHub, str]:
    """A hub on SQLite whose policy allows envelopes of 20 kB at most."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    (policies / "policy.yaml").write_text("limits:\n  max_envelope_bytes: 20000\n")
    db_url = f"sqlite:///{tmp_path / 'hub.db'}"
    return run_hub(dev_pki, db_url, policies), db_url


@pytest.fixture
def hub(dev_pki: Path, db_url: str) -> Iterator[Hub]:
    running = run_hub(dev_pki, db_url)
    try:
        yield Hub(dev_pki, running.port, db_url)
    finally:
        running.stop()


def test_accepted_message_is_delivered_and_acknowledged(hub: Hub) -> None:
    envelope = hub.seal("AL.CTD", header_json())
    sender = hub.stub("AL.CTD")
    evidence = sender.Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT).evidence
    directory = load_directory(hub.certs)
    accepted = verify_evidence(evidence, directory, datetime.now(UTC))
    assert accepted.kind is EvidenceKind.ACCEPTED
    assert accepted.envelope_digest == envelope.digest

    receiver = hub.stub("EU.EUROPOL")
    delivery = hub.first_delivery("EU.EUROPOL")
    assert delivery.envelope == envelope.raw
    opened = open_envelope(
        SealedEnvelope.from_bytes(delivery.envelope),
        keyring=load_keyring(hub.certs, "EU.EUROPOL"),
        directory=directory,
        now=datetime.now(UTC),
    )
    assert opened.body.text == "Checks requested."
    ack = receiver.Acknowledge(
        pb.AcknowledgeRequest(message_id=envelope.message_id, sequence=delivery.sequence),
        timeout=TIMEOUT,
    ).evidence
    assert verify_evidence(ack, directory, datetime.now(UTC)).kind is EvidenceKind.DELIVERED
    # acknowledged: a new subscription has nothing pending for this message
    again = receiver.Subscribe(pb.SubscribeRequest(cursor=0), timeout=2)
    with pytest.raises(grpc.RpcError) as waited:
        next(iter(again)).deliveries[0]
    assert waited.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert hub.rows(LogEntryRow) == 3  # policy loaded, accepted, delivered


def test_unacknowledged_delivery_comes_again_after_reconnect(hub: Hub) -> None:
    envelope = hub.seal("AL.CTD", header_json())
    hub.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
    for _ in range(2):
        assert hub.first_delivery("EU.EUROPOL").envelope == envelope.raw


def test_replayed_message_is_accepted_once(hub: Hub) -> None:
    envelope = hub.seal("AL.CTD", header_json())
    stub = hub.stub("AL.CTD")
    first = stub.Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT).evidence
    second = stub.Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT).evidence
    assert first == second
    assert hub.rows(MessageRow) == 1
    assert hub.rows(DeliveryRow) == 1


def test_same_id_with_other_content_is_a_replay_conflict(hub: Hub) -> None:
    header = header_json()
    stub = hub.stub("AL.CTD")
    stub.Submit(pb.SubmitRequest(envelope=hub.seal("AL.CTD", header).raw), timeout=TIMEOUT)
    other = hub.seal("AL.CTD", header, text="different content")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Submit(pb.SubmitRequest(envelope=other.raw), timeout=TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert "REPLAY-CONFLICT" in refused.value.details()
    assert hub.rows(MessageRow) == 1


def test_forged_sender_is_refused(hub: Hub) -> None:
    forged = hub.seal("RS.CTU", header_json(sender="RS.CTU"))
    with pytest.raises(grpc.RpcError) as refused:
        hub.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=forged.raw), timeout=TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "AUTH-SENDER-MISMATCH" in refused.value.details()
    assert hub.rows(MessageRow) == 0


def test_random_bytes_are_invalid_and_the_hub_keeps_serving(hub: Hub) -> None:
    stub = hub.stub("AL.CTD")
    for size in (0, 1, 17, 4096):
        with pytest.raises(grpc.RpcError) as refused:
            stub.Submit(pb.SubmitRequest(envelope=os.urandom(size)), timeout=TIMEOUT)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    good = hub.seal("AL.CTD", header_json())
    assert stub.Submit(pb.SubmitRequest(envelope=good.raw), timeout=TIMEOUT).evidence.statement
    assert hub.rows(MessageRow) == 1
    assert hub.rows(LogEntryRow) == 2  # policy loaded, accepted


def test_policy_refusal_names_rule_recipient_and_reason(hub: Hub) -> None:
    envelope = hub.seal("AL.CTD", header_json(to=["ME.ARO"]))  # ME.ARO is not on CT
    evidence = (
        hub.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT).evidence
    )
    refused = verify_evidence(evidence, load_directory(hub.certs), datetime.now(UTC))
    assert refused.kind is EvidenceKind.REFUSED
    assert [(v.rule, v.recipient) for v in refused.violations] == [("CH-NOT-MEMBER", "ME.ARO")]
    assert "CT" in refused.violations[0].reason
    assert hub.rows(MessageRow) == 0
    assert hub.rows(DeliveryRow) == 0
    assert hub.rows(LogEntryRow) == 2  # policy loaded, and the refusal


def test_confidential_message_sealed_classic_is_refused(hub: Hub) -> None:
    header = Header.from_json(header_json(classification="CONFIDENTIEL_UE"))
    envelope = seal(
        header,
        body(),
        keyring=load_keyring(hub.certs, "AL.CTD"),
        directory=load_directory(hub.certs),
        now=datetime.now(UTC),
        suite=CLASSIC,
    )
    evidence = (
        hub.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT).evidence
    )
    refused = verify_evidence(evidence, load_directory(hub.certs), datetime.now(UTC))
    assert [v.rule for v in refused.violations] == ["CR-SUITE-TOO-WEAK"]


def test_health_checking_and_reflection_are_served(hub: Hub) -> None:
    channel = hub.channel("AL.CTD")
    status = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="exchange.v1.Hub"), timeout=TIMEOUT
    )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
    )
    names = {s.name for s in next(iter(responses)).list_services_response.service}
    assert "exchange.v1.Hub" in names


def test_directory_is_signed_by_the_hub(hub: Hub) -> None:
    signed = hub.stub("AL.CTD").GetDirectory(pb.GetDirectoryRequest(), timeout=TIMEOUT)
    evidence = pb.Evidence(statement=signed.directory, signatures=signed.signatures)
    directory_keys = load_directory(hub.certs)
    from exchange.core.evidence import DIRECTORY_PREFIX
    from exchange.core.suites import verify_signature

    key = directory_keys.key("HUB", evidence.signatures[0].key_id, datetime.now(UTC))
    assert verify_signature(
        key.public_key, evidence.signatures[0].value, DIRECTORY_PREFIX + signed.directory
    )  # type: ignore[arg-type]
    listing = pb.Directory.FromString(signed.directory)
    units = {u.id: u for u in listing.units}
    assert units["XK.KP"].relay == "EU.EULEX"
    assert "hybrid-pq-2026" in units["AL.CTD"].suites
    assert all(k.certificate_der for k in units["AL.CTD"].keys)


def test_foreign_ca_certificate_is_refused_at_the_handshake(hub: Hub, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    init_pki(foreign, ["AL.CTD"])
    stub = hub.stub("AL.CTD", certs=foreign)
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetDirectory(pb.GetDirectoryRequest(), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_revoked_unit_gets_permission_denied(dev_pki: Path, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    shutil.copytree(dev_pki, certs)
    revoke_subject(certs, "RS.CTU", reason="certificate lost")
    db_url = f"sqlite:///{tmp_path / 'hub.db'}"
    running = run_hub(certs, db_url)
    try:
        hub = Hub(certs, running.port, db_url)
        with pytest.raises(grpc.RpcError) as refused:
            hub.stub("RS.CTU").GetDirectory(pb.GetDirectoryRequest(), timeout=TIMEOUT)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "certificate lost" in refused.value.details()
    finally:
        running.stop()


def test_oversized_message_is_resource_exhausted(dev_pki: Path, tmp_path: Path) -> None:
    running, db_url = run_hub_with_small_limit(dev_pki, tmp_path)
    try:
        hub = Hub(dev_pki, running.port, db_url)
        big = hub.seal("AL.CTD", header_json(), text="x" * 50_000)
        with pytest.raises(grpc.RpcError) as refused:
            hub.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=big.raw), timeout=TIMEOUT)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert hub.rows(MessageRow) == 0
    finally:
        running.stop()


def test_relayed_unit_cannot_connect_directly(hub: Hub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        hub.stub("XK.KP").GetDirectory(pb.GetDirectoryRequest(), timeout=TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "EU.EULEX" in refused.value.details()


def test_sender_fetches_the_evidence_chain_and_strangers_cannot(hub: Hub) -> None:
    envelope, delivery = hub.submitted_and_delivered("AL.CTD", "EU.EUROPOL")
    receiver = hub.stub("EU.EUROPOL")
    for read in (False, True):
        receiver.Acknowledge(
            pb.AcknowledgeRequest(
                message_id=envelope.message_id, sequence=delivery.sequence, read=read
            ),
            timeout=TIMEOUT,
        )
    chain = hub.stub("AL.CTD").GetEvidences(
        pb.GetEvidencesRequest(message_id=envelope.message_id), timeout=TIMEOUT
    )
    directory = load_directory(hub.certs)
    kinds = [verify_evidence(e, directory, datetime.now(UTC)).kind for e in chain.evidences]
    assert kinds == [EvidenceKind.ACCEPTED, EvidenceKind.DELIVERED, EvidenceKind.READ]
    with pytest.raises(grpc.RpcError) as refused:
        hub.stub("RS.CTU").GetEvidences(
            pb.GetEvidencesRequest(message_id=envelope.message_id), timeout=TIMEOUT
        )
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION


# ---------------------------------------------------------------- request streams


def _answers_by_tag(messages: Iterator[Any], count: int) -> dict[int, Any]:
    """The answers of a request stream's first messages, by tag, until ``count`` came."""
    answers: dict[int, Any] = {}
    for message in messages:
        for response in message.responses:
            answers[response.tag] = response
        if len(answers) >= count:
            break
    return answers


def test_forged_and_garbled_requests_on_a_submit_stream_fail_alone(hub: Hub) -> None:
    """One stream, five requests: each answered by its tag, failures as the unary status."""
    good = hub.seal("AL.CTD", header_json())
    forged = hub.seal("RS.CTU", header_json(sender="RS.CTU"))
    off_channel = hub.seal("AL.CTD", header_json(to=["ME.ARO"]))  # ME.ARO is not on CT
    later = hub.seal("AL.CTD", header_json())
    requests = [
        pb.SubmitRequest(envelope=good.raw, tag=1),
        pb.SubmitRequest(envelope=forged.raw, tag=2),
        pb.SubmitRequest(envelope=os.urandom(300), tag=3),
        pb.SubmitRequest(envelope=off_channel.raw, tag=4),
        pb.SubmitRequest(envelope=later.raw, tag=5),
    ]
    # sent as two stream messages: the answers come by tag, whatever the batching
    batches = [pb.SubmitRequests(requests=requests[:2]), pb.SubmitRequests(requests=requests[2:])]
    call = hub.stub("AL.CTD").SubmitStream(iter(batches), timeout=TIMEOUT)
    answers = _answers_by_tag(call, len(requests))
    call.cancel()
    directory = load_directory(hub.certs)
    now = datetime.now(UTC)
    for tag, envelope in ((1, good), (5, later)):
        accepted = verify_evidence(answers[tag].evidence, directory, now)
        assert (accepted.kind, accepted.message_id) == (EvidenceKind.ACCEPTED, envelope.message_id)
        assert not answers[tag].HasField("failure")
    assert (answers[2].failure.status, answers[2].failure.code) == (
        "PERMISSION_DENIED",
        "AUTH-SENDER-MISMATCH",
    )
    assert "RS.CTU" in answers[2].failure.message
    assert answers[3].failure.status == "INVALID_ARGUMENT"
    refused = verify_evidence(answers[4].evidence, directory, now)
    assert refused.kind is EvidenceKind.REFUSED
    assert [v.rule for v in refused.violations] == ["CH-NOT-MEMBER"]
    assert hub.rows(MessageRow) == 2
    assert hub.rows(LogEntryRow) == 4  # policy loaded, two accepted, one refused


def test_replay_on_a_submit_stream_returns_the_original_evidence(hub: Hub) -> None:
    envelope = hub.seal("AL.CTD", header_json())
    stub = hub.stub("AL.CTD")
    first = stub.Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT).evidence
    request = pb.SubmitRequests(requests=[pb.SubmitRequest(envelope=envelope.raw, tag=9)])
    (answered,) = list(stub.SubmitStream(iter([request]), timeout=TIMEOUT))
    (again,) = answered.responses
    assert (again.tag, again.evidence) == (9, first)
    assert hub.rows(MessageRow) == 1


def test_acknowledge_stream_records_in_order_and_refuses_foreign_deliveries(hub: Hub) -> None:
    envelope, delivery = hub.submitted_and_delivered("AL.CTD", "EU.EUROPOL")
    receiver = hub.stub("EU.EUROPOL")
    requests = [
        pb.AcknowledgeRequest(message_id=envelope.message_id, sequence=delivery.sequence, tag=1),
        pb.AcknowledgeRequest(
            message_id=envelope.message_id, sequence=delivery.sequence, read=True, tag=2
        ),
        # the sender may not acknowledge the recipient's delivery
        pb.AcknowledgeRequest(message_id=envelope.message_id, sequence=delivery.sequence, tag=3),
    ]
    acks = pb.AcknowledgeRequests(requests=requests[:2])
    answers = _answers_by_tag(receiver.AcknowledgeStream(iter([acks]), timeout=TIMEOUT), 2)
    directory = load_directory(hub.certs)
    kinds = [
        verify_evidence(answers[t].evidence, directory, datetime.now(UTC)).kind for t in (1, 2)
    ]
    assert kinds == [EvidenceKind.DELIVERED, EvidenceKind.READ]
    foreign_ack = pb.AcknowledgeRequests(requests=requests[2:])
    (answered,) = list(hub.stub("AL.CTD").AcknowledgeStream(iter([foreign_ack]), timeout=TIMEOUT))
    (foreign,) = answered.responses
    assert (foreign.failure.status, foreign.failure.code) == (
        "FAILED_PRECONDITION",
        "NO-SUCH-DELIVERY",
    )
    engine = make_engine(hub.db_url)
    with engine.connect() as db:
        events = db.execute(select(LOG_ENTRIES.c.kind).order_by(LOG_ENTRIES.c.idx)).scalars().all()
    assert events[-3:] == ["accepted", "delivered", "acknowledged"]


def test_relayed_unit_cannot_open_a_submit_stream(hub: Hub) -> None:
    envelope = hub.seal("AL.CTD", header_json())
    call = hub.stub("XK.KP").SubmitStream(
        iter([pb.SubmitRequests(requests=[pb.SubmitRequest(envelope=envelope.raw, tag=1)])]),
        timeout=TIMEOUT,
    )
    with pytest.raises(grpc.RpcError) as refused:
        list(call)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert hub.rows(MessageRow) == 0


def test_stopping_hub_answers_in_flight_and_ends_open_streams(
    dev_pki: Path, tmp_path: Path
) -> None:
    running = run_hub(dev_pki, f"sqlite:///{tmp_path / 'hub.db'}")
    hub = Hub(dev_pki, running.port, f"sqlite:///{tmp_path / 'hub.db'}")
    envelope = hub.seal("AL.CTD", header_json())
    outgoing: queue.SimpleQueue[pb.SubmitRequests | None] = queue.SimpleQueue()

    def requests() -> Iterator[pb.SubmitRequests]:
        while (request := outgoing.get()) is not None:
            yield request

    call = hub.stub("AL.CTD").SubmitStream(requests(), timeout=60)
    outgoing.put(pb.SubmitRequests(requests=[pb.SubmitRequest(envelope=envelope.raw, tag=1)]))
    (first,) = next(call).responses
    assert first.evidence.statement
    running.stop(grace=30)  # the open stream ends at once, not after the grace period
    assert list(call) == []
    assert call.code() is grpc.StatusCode.OK
    outgoing.put(None)


def test_streamed_client_fails_waiting_calls_retryably_and_reopens_after_restart(
    dev_pki: Path, tmp_path: Path
) -> None:
    """A node's stream dies with the hub: its calls fail retryable, the next one reconnects."""
    import asyncio

    from nodes.client import HubCallFailed, HubClient

    url = f"sqlite:///{tmp_path / 'hub.db'}"
    running = run_hub(dev_pki, url)
    port = running.port
    hub = Hub(dev_pki, port, url)
    first, second = hub.seal("AL.CTD", header_json()), hub.seal("AL.CTD", header_json())

    retried: list[bool] = []

    async def scenario() -> tuple[pb.Evidence, HubCallFailed, pb.Evidence | None]:
        tls = load_tls_material(dev_pki, "AL.CTD")
        async with HubClient(f"127.0.0.1:{port}", tls, streamed=True, timeout=10) as client:
            accepted = await client.submit(first.raw)
            await asyncio.to_thread(running.stop)
            try:
                await client.submit(second.raw)
            except HubCallFailed as error:
                away = error
            restarted = BackgroundHub(
                HubConfig(
                    listen=f"127.0.0.1:{port}",
                    certs=dev_pki,
                    db_url=url,
                    policies=POLICIES,
                    clock=SystemClock(),
                )
            )
            await asyncio.to_thread(restarted.start)
            try:
                # as a node's outbox does: try again until the channel is back
                again = None
                for _ in range(50):
                    try:
                        again = await client.submit(second.raw)
                        break
                    except HubCallFailed as error:
                        retried.append(error.retryable)
                        await asyncio.sleep(0.2)
            finally:
                await asyncio.to_thread(restarted.stop)
            return accepted, away, again

    accepted, away, again = asyncio.run(scenario())
    assert away.retryable
    assert all(retried)
    assert again is not None
    directory = load_directory(dev_pki)
    for evidence, envelope in ((accepted, first), (again, second)):
        view = verify_evidence(evidence, directory, datetime.now(UTC))
        assert (view.kind, view.message_id) == (EvidenceKind.ACCEPTED, envelope.message_id)
    assert hub.rows(MessageRow) == 2


def test_store_failure_is_unavailable_and_leaves_nothing_half_written(
    dev_pki: Path, pg_url: str
) -> None:
    """The evidences table is gone: the whole transaction is refused, the caller may retry."""
    running = run_hub(dev_pki, pg_url)
    try:
        hub = Hub(dev_pki, running.port, pg_url)
        engine = make_engine(pg_url)
        with engine.begin() as db:
            db.execute(text("DROP TABLE evidences"))
        envelope = hub.seal("AL.CTD", header_json())
        with pytest.raises(grpc.RpcError) as refused:
            hub.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "STORE-UNAVAILABLE" in refused.value.details()
        # on a stream: the same answer for that request, and the stream goes on
        request = pb.SubmitRequests(requests=[pb.SubmitRequest(envelope=envelope.raw, tag=4)])
        (answered,) = list(hub.stub("AL.CTD").SubmitStream(iter([request]), timeout=TIMEOUT))
        (failed,) = answered.responses
        assert (failed.failure.status, failed.failure.code) == ("UNAVAILABLE", "STORE-UNAVAILABLE")
        assert hub.rows(MessageRow) == 0
        assert hub.rows(DeliveryRow) == 0
        assert hub.rows(LogEntryRow) == 1  # the policy entry from before
    finally:
        running.stop()


def test_oversized_message_from_a_streaming_node_fails_alone(dev_pki: Path, tmp_path: Path) -> None:
    """Too large for the hub's messages: refused for itself, the message beside it accepted."""
    import asyncio

    from nodes.client import HubCallFailed, HubClient

    running, db_url = run_hub_with_small_limit(dev_pki, tmp_path)
    try:
        hub = Hub(dev_pki, running.port, db_url)
        big = hub.seal("AL.CTD", header_json(), text="x" * 1_500_000)  # over 20 kB + 1 MB
        small = hub.seal("AL.CTD", header_json())

        async def scenario() -> list[pb.Evidence | BaseException]:
            tls = load_tls_material(dev_pki, "AL.CTD")
            target = f"127.0.0.1:{running.port}"
            async with HubClient(target, tls, streamed=True) as client:
                return await asyncio.gather(
                    client.submit(big.raw), client.submit(small.raw), return_exceptions=True
                )

        refused, accepted = asyncio.run(scenario())
    finally:
        running.stop()
    assert isinstance(refused, HubCallFailed)
    assert refused.status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not refused.retryable
    assert isinstance(accepted, pb.Evidence)
    view = verify_evidence(accepted, load_directory(dev_pki), datetime.now(UTC))
    assert (view.kind, view.message_id) == (EvidenceKind.ACCEPTED, small.message_id)


def test_a_hub_bug_on_one_stream_request_fails_that_request_alone(
    dev_pki: Path, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'hub.db'}"
    running = run_hub(dev_pki, db_url)
    try:
        hub = Hub(dev_pki, running.port, db_url)
        poisoned, good = hub.seal("AL.CTD", header_json()), hub.seal("AL.CTD", header_json())
        service = running.hub.service
        submit = service.submit

        async def buggy_submit(caller: str, raw: bytes) -> pb.Evidence:
            if raw == poisoned.raw:
                raise RuntimeError("a bug in the hub")
            return await submit(caller, raw)

        service.submit = buggy_submit  # type: ignore[method-assign]
        request = pb.SubmitRequests(
            requests=[
                pb.SubmitRequest(envelope=poisoned.raw, tag=1),
                pb.SubmitRequest(envelope=good.raw, tag=2),
            ]
        )
        call = hub.stub("AL.CTD").SubmitStream(iter([request]), timeout=TIMEOUT)
        answers = _answers_by_tag(call, 2)
        call.cancel()
    finally:
        running.stop()
    assert (answers[1].failure.status, answers[1].failure.code) == ("INTERNAL", "HUB-INTERNAL")
    assert answers[2].evidence.statement


def test_store_outage_answers_unavailable_and_the_hub_keeps_serving(
    dev_pki: Path, tmp_path: Path
) -> None:
    """The database cannot even be reached: callers are told so, nothing else stops."""
    db_url = f"sqlite:///{tmp_path / 'hub.db'}"
    running = run_hub(dev_pki, db_url)
    try:
        hub = Hub(dev_pki, running.port, db_url)
        writer = running.hub.service.writer
        reachable = writer.engine
        writer.engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
        envelope = hub.seal("AL.CTD", header_json())
        stub = hub.stub("AL.CTD")
        with pytest.raises(grpc.RpcError) as refused:
            stub.Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "STORE-UNAVAILABLE" in refused.value.details()
        assert stub.GetDirectory(pb.GetDirectoryRequest(), timeout=TIMEOUT).directory
        writer.engine = reachable  # back: the retry is accepted
        assert stub.Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT).evidence
        assert hub.rows(MessageRow) == 1
    finally:
        running.stop()


def test_many_pending_deliveries_fit_the_hubs_message_limit(dev_pki: Path, tmp_path: Path) -> None:
    """A small envelope limit makes the hub's messages small too: a full batch of
    deliveries (envelopes, evidences, framing) must still fit in one."""
    running, db_url = run_hub_with_small_limit(dev_pki, tmp_path)
    try:
        hub = Hub(dev_pki, running.port, db_url)
        stub = hub.stub("AL.CTD")
        count = 220
        for _ in range(count):  # about 5 kB each: 1.1 MB pending for EU.EUROPOL
            envelope = hub.seal("AL.CTD", header_json(), text="y" * 4000)
            stub.Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
        stream = hub.stub("EU.EUROPOL").Subscribe(pb.SubscribeRequest(), timeout=TIMEOUT)
        received = 0
        for message in stream:
            received += len(message.deliveries)
            if received >= count:
                break
        stream.cancel()
    finally:
        running.stop()
    assert received == count
