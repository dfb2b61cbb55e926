"""Permissions through the hub, and erasure: each is an event the log records."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select
from test_hub import TIMEOUT, Hub, header_json, run_hub

from exchange.cli.main import main
from exchange.core.envelope import SealedEnvelope, open_envelope, seal_forward
from exchange.core.evidence import EvidenceKind, verify_evidence
from exchange.core.log_entry import LogEntry, LogEvent
from exchange.core.permission import sign_permission
from exchange.core.suites import suite_by_id
from exchange.pki import load_directory, load_keyring
from exchange.store.database import make_engine
from exchange.store.tables import LOG_ENTRIES, MESSAGES
from exchange.wire.v1 import exchange_pb2 as pb


@pytest.fixture
def hub(dev_pki: Path, tmp_path: Path) -> Iterator[Hub]:
    db_url = f"sqlite:///{tmp_path / 'hub.db'}"
    running = run_hub(dev_pki, db_url)
    try:
        yield Hub(dev_pki, running.port, db_url)
    finally:
        running.stop()


def events(hub: Hub) -> list[LogEntry]:
    with make_engine(hub.db_url).connect() as db:
        return [
            LogEntry.decode(bytes(r[0]))
            for r in db.execute(select(LOG_ENTRIES.c.entry).order_by(LOG_ENTRIES.c.idx))
        ]


def h2_message_at_europol(hub: Hub) -> SealedEnvelope:
    envelope = hub.seal("AL.CTD", header_json(handling={"codes": ["H0", "H2"]}))
    hub.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
    return envelope


def forward(hub: Hub, envelope: SealedEnvelope, to: str) -> pb.Evidence:
    directory = load_directory(hub.certs)
    keyring = load_keyring(hub.certs, "EU.EUROPOL")
    now = datetime.now(UTC)
    opened = open_envelope(envelope, keyring=keyring, directory=directory, now=now)
    forwarded = seal_forward(
        opened, message_id=f"fwd-{envelope.message_id}", to=[to], keyring=keyring,
        directory=directory, now=now,
    )  # fmt: skip
    return (
        hub.stub("EU.EUROPOL")
        .Forward(pb.ForwardRequest(envelope=forwarded.raw), timeout=TIMEOUT)
        .evidence
    )


def kind(hub: Hub, evidence: pb.Evidence) -> EvidenceKind:
    return verify_evidence(evidence, load_directory(hub.certs), datetime.now(UTC)).kind


def test_permission_asked_granted_through_the_hub_allows_the_h2_forward(hub: Hub) -> None:
    envelope = h2_message_at_europol(hub)
    asked = hub.stub("EU.EUROPOL").RequestPermission(
        pb.PermissionRequest(
            message_id=envelope.message_id, recipients=["RS.CTU"], purpose="information_exchange",
            reason="Serbia's CT service holds the related case.",
        ),
        timeout=TIMEOUT,
    )  # fmt: skip
    assert kind(hub, asked.evidence) is EvidenceKind.PERMISSION_ASKED
    signed = sign_permission(
        message_id=envelope.message_id,
        grantee="EU.EUROPOL",
        recipients=["RS.CTU"],
        purpose="information_exchange",
        keyring=load_keyring(hub.certs, "AL.CTD"),
        directory=load_directory(hub.certs),
        suite=suite_by_id(envelope.suite_id),
        now=datetime.now(UTC),
    )
    granted = hub.stub("AL.CTD").GrantPermission(
        pb.GrantPermissionRequest(permission=pb.SignedPermission.FromString(signed)),
        timeout=TIMEOUT,
    )
    assert kind(hub, granted.evidence) is EvidenceKind.PERMISSION_GRANTED
    assert kind(hub, forward(hub, envelope, "RS.CTU")) is EvidenceKind.ACCEPTED
    logged = [e.event for e in events(hub)]
    assert logged.index(LogEvent.PERMISSION_ASKED) < logged.index(LogEvent.PERMISSION_GRANTED)
    assert LogEvent.FORWARDED in logged


def test_h2_forward_after_a_refused_permission_is_refused(hub: Hub) -> None:
    envelope = h2_message_at_europol(hub)
    denied = hub.stub("AL.CTD").GrantPermission(
        pb.GrantPermissionRequest(
            deny=True, message_id=envelope.message_id, grantee="EU.EUROPOL",
            reason="The source must not be exposed.",
        ),
        timeout=TIMEOUT,
    )  # fmt: skip
    assert kind(hub, denied.evidence) is EvidenceKind.PERMISSION_DENIED
    refused = verify_evidence(
        forward(hub, envelope, "RS.CTU"), load_directory(hub.certs), datetime.now(UTC)
    )
    assert [v.rule for v in refused.violations] == ["HC-H2-FORWARD-WITHOUT-PERMISSION"]
    assert LogEvent.PERMISSION_DENIED in [e.event for e in events(hub)]


def test_only_the_provider_may_grant_a_permission(hub: Hub) -> None:
    envelope = h2_message_at_europol(hub)
    with pytest.raises(grpc.RpcError) as refused:
        hub.stub("RS.CTU").GrantPermission(
            pb.GrantPermissionRequest(
                deny=True, message_id=envelope.message_id, grantee="EU.EUROPOL", reason="x"
            ),
            timeout=TIMEOUT,
        )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "PERM-NOT-PROVIDER" in refused.value.details()


def test_erasure_removes_the_body_and_keeps_the_log(
    hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = hub.seal("AL.CTD", header_json())
    hub.stub("AL.CTD").Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as refused:
        hub.stub("EU.EUROPOL").Erase(
            pb.EraseRequest(message_id=envelope.message_id, reason="review"), timeout=TIMEOUT
        )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    erased = hub.stub("HUB").Erase(
        pb.EraseRequest(message_id=envelope.message_id, reason="retention review: not kept"),
        timeout=TIMEOUT,
    )
    assert kind(hub, erased.evidence) is EvidenceKind.ERASED
    with make_engine(hub.db_url).connect() as db:
        stored = db.execute(
            select(MESSAGES.c.envelope, MESSAGES.c.erased_at_us).where(
                MESSAGES.c.id == envelope.message_id
            )
        ).one()
    assert stored[0] is None and stored[1]
    # the erased message is no longer delivered
    stream = hub.stub("EU.EUROPOL").Subscribe(pb.SubscribeRequest(), timeout=2)
    with pytest.raises(grpc.RpcError) as waited:
        next(iter(stream)).deliveries[0]
    assert waited.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # the log still records the exchange, and its erasure, and still verifies
    logged = [(e.event, e.message_id) for e in events(hub)]
    assert (LogEvent.ACCEPTED, envelope.message_id) in logged
    assert (LogEvent.ERASED, envelope.message_id) in logged
    capsys.readouterr()
    assert (
        main(["log", "verify", "--db", hub.db_url, "--certs", str(hub.certs), "--format", "json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["ok"]


def test_commands_deny_a_permission_and_erase_a_message(
    hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = h2_message_at_europol(hub)
    address = f"127.0.0.1:{hub.port}"
    common = ["--hub", address, "--certs", str(hub.certs), "--format", "json"]
    capsys.readouterr()
    code = main(
        ["permission", "deny", envelope.message_id, "--as", "AL.CTD", "--grantee",
         "EU.EUROPOL", "--reason", "source protection", *common]
    )  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "permission_denied"
    code = main(["hub", "erase", envelope.message_id, "--reason", "review: not kept", *common])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "erased"
    code = main(
        ["permission", "deny", envelope.message_id, "--as", "RS.CTU", "--grantee", "EU.EUROPOL",
         *common]
    )  # fmt: skip
    assert code == 3
    assert "PERM-NOT-PROVIDER" in capsys.readouterr().err
