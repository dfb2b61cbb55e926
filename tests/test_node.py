"""The national node's parts without a hub: store, composing, backoff, checks, queues.

A small PKI (the hub and three units) is made once per module; hub evidences are
signed here with the hub's key, and a fake hub client stands in for the network.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlmodel import SQLModel

from exchange.cli.main import main
from exchange.core.body import Body, Organisation, Person, check_body_against_header
from exchange.core.clock import FixedClock
from exchange.core.envelope import SealedEnvelope, seal
from exchange.core.evidence import EvidenceKind, EvidenceSigner, make_statement
from exchange.core.header import Header
from exchange.core.keys import Directory
from exchange.core.policy import Violation
from exchange.core.vocab import Classification, HandlingCode, Kind, SubjectCategory
from exchange.errors import InputError, UnknownSigner
from exchange.pki import init_pki, load_directory, load_hub_keyring, load_keyring
from exchange.wire.v1 import exchange_pb2 as pb
from nodes.agent import Backoff, send_pending_acks, submit_item
from nodes.client import HubCallFailed
from nodes.compose import HeaderFlags, header_from_flags, mismatch_notice, reply_header
from nodes.inbox import receive
from nodes.store import NODE_METADATA, NodeStore, OutboxState
from nodes.verification import EvidenceMismatch, check_evidence

UNITS = ["AL.CTD", "EU.EUROPOL", "AT.ENU"]
NOW = datetime.now(UTC)


@dataclass(frozen=True)
class Pki:
    certs: Path
    directory: Directory
    signer: EvidenceSigner


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    certs = tmp_path_factory.mktemp("pki") / "certs"
    init_pki(certs, UNITS, suites=("classic-2026",))
    directory = load_directory(certs)
    return Pki(certs, directory, EvidenceSigner(load_hub_keyring(certs), directory))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[NodeStore]:
    opened = NodeStore.open(tmp_path / "node", unit="EU.EUROPOL", create=True)
    yield opened
    opened.close()


def _flags(**changes: Any) -> HeaderFlags:
    values: dict[str, Any] = {"to": ["EU.EUROPOL"], "channel": "CT", "crime_area": "terrorism"}
    values.update(changes)
    return HeaderFlags(**values)


def _sealed(pki: Pki, message_id: str = "m-1", body: Body | None = None) -> SealedEnvelope:
    chosen = body or Body(text="hello")
    header = header_from_flags("AL.CTD", _flags(message_id=message_id), chosen)
    return seal(
        header,
        chosen,
        keyring=load_keyring(pki.certs, "AL.CTD"),
        directory=pki.directory,
        now=NOW,
    )


def _evidence(
    pki: Pki,
    envelope: SealedEnvelope,
    kind: EvidenceKind = EvidenceKind.ACCEPTED,
    *,
    unit: str = "AL.CTD",
    message_id: str | None = None,
    index: int = 0,
    violations: tuple[Violation, ...] = (),
) -> pb.Evidence:
    statement = make_statement(
        kind,
        message_id=message_id or envelope.message_id,
        unit=unit,
        hub_time_us=int(NOW.timestamp() * 1_000_000),
        envelope_digest=envelope.digest,
        log_index=index,
        policy_hash="p",
        violations=violations,
    )
    return pki.signer.sign(statement, NOW)


# --------------------------------------------------------------------------- store


def test_node_tables_stay_off_the_hubs_migrated_metadata() -> None:
    assert {"outbox", "inbox", "acks", "evidences", "node_settings"} <= set(NODE_METADATA.tables)
    assert "outbox" not in SQLModel.metadata.tables
    assert "messages" not in NODE_METADATA.tables


def test_store_is_durable_sqlite_owned_by_one_unit(tmp_path: Path) -> None:
    home = tmp_path / "node"
    with pytest.raises(InputError, match="no node store"):
        NodeStore.open(home)
    store = NodeStore.open(home, unit="AL.CTD", create=True)
    with store.engine.connect() as db:
        assert db.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert db.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()
    assert NodeStore.open(home).unit == "AL.CTD"
    with pytest.raises(InputError, match=r"belongs to AL\.CTD, not RS\.CTU"):
        NodeStore.open(home, unit="RS.CTU", create=True)


def test_the_same_message_is_queued_once(pki: Pki, store: NodeStore) -> None:
    envelope = _sealed(pki, "dup-1")
    store.enqueue(envelope, operation="submit", now_us=1)
    with pytest.raises(InputError, match="already in this node's outbox"):
        store.enqueue(envelope, operation="submit", now_us=2)
    assert [i.message_id for i in store.outbox()] == ["dup-1"]


# --------------------------------------------------------------------------- composing


def test_flags_make_a_header_whose_declaration_matches_the_body() -> None:
    body = Body(
        text="t",
        persons=(Person("DOE", "J", None, "AL", SubjectCategory.SUSPECT, False),),
        organisations=(Organisation("X Ltd", "AT", "FN 1"),),
    )
    header = header_from_flags(
        "AL.CTD", _flags(codes="h2", evaluation="b2", kind="request"), body, new_id=lambda: "id-1"
    )
    assert header.id == "id-1"
    assert header.kind is Kind.REQUEST
    assert header.handling.codes == {HandlingCode.H0, HandlingCode.H2}
    assert header.evaluation is not None
    assert header.evaluation.code == "B2"
    assert header.classification is Classification.RESTREINT_UE
    assert check_body_against_header(body, header.subjects) == []


@pytest.mark.parametrize(
    ("changes", "body", "flag", "words"),
    [
        ({"to": []}, Body(), "--to", "at least one recipient"),
        ({"to": ["AL.CTD"]}, Body(), "--to", "cannot also be a recipient"),
        ({"to": ["albania"]}, Body(), "--to", "is not a unit id"),
        ({"crime_area": "poaching"}, Body(), "--crime-area", "'poaching' is not one of"),
        ({"crime_area": None}, Body(), "--crime-area", "is required"),
        ({"channel": "NET"}, Body(), "--channel", "'NET' is not one of SIENA, CT, ARO"),
        ({"codes": "H0,H3"}, Body(), "--codes", "--h3-text"),
        ({"kind": "REPLY"}, Body(), "--kind", "exchange reply"),
        (
            {},
            Body(persons=(Person("D", "J", None, "AL", SubjectCategory.SUSPECT, False),)),
            "--evaluation",
            "evaluation codes are required",
        ),
        ({"evaluation": "Z9"}, Body(), "--evaluation", "'Z' is not one of"),
    ],
)
def test_bad_flags_name_the_flag(
    changes: dict[str, Any], body: Body, flag: str, words: str
) -> None:
    with pytest.raises(InputError) as error:
        header_from_flags("AL.CTD", _flags(**changes), body)
    assert error.value.location.source == flag
    assert words in error.value.reason


def test_reply_goes_to_the_sender_in_the_same_case() -> None:
    request = header_from_flags(
        "AL.CTD", _flags(kind="REQUEST", case="CASE-1", classification="UNCLASSIFIED"), Body()
    )
    reply = reply_header(request, "EU.EUROPOL", Body(text="no hits"), new_id=lambda: "r-1")
    assert (reply.kind, reply.to, reply.in_reply_to, reply.case) == (
        Kind.REPLY, ("AL.CTD",), request.id, "CASE-1",
    )  # fmt: skip
    assert (reply.channel, reply.crime_area) == (request.channel, request.crime_area)
    assert reply.classification is Classification.UNCLASSIFIED
    with pytest.raises(InputError, match=r"sent by AL\.CTD itself"):
        reply_header(request, "AL.CTD", Body(text="x"))


def test_mismatch_notice_declares_no_one_and_names_the_message() -> None:
    original = header_from_flags("AL.CTD", _flags(message_id="m-9"), Body())
    header, body = mismatch_notice(original, "EU.EUROPOL", "the header declares 2 individuals")
    assert isinstance(header, Header)
    assert (header.kind, header.sender, header.to) == (Kind.NOTICE, "EU.EUROPOL", ("AL.CTD",))
    assert header.subjects.individuals == ()
    assert header.evaluation is None
    assert (header.channel, header.crime_area) == (original.channel, original.crime_area)
    assert body.text == "header/body mismatch in m-9: the header declares 2 individuals"


# --------------------------------------------------------------------------- retries


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    backoff = Backoff(base=0.1, cap=5.0)
    delays = [backoff.next() for _ in range(12)]
    assert 0.05 <= delays[0] <= 0.1
    assert 0.1 <= delays[1] <= 0.2
    assert all(2.5 <= d <= 5.0 for d in delays[7:])
    backoff.reset()
    assert backoff.next() <= 0.1


def test_hub_errors_say_whether_to_try_again() -> None:
    refused = HubCallFailed(
        grpc.StatusCode.PERMISSION_DENIED,
        "[AUTH-SENDER-MISMATCH] the header names RS.CTU as sender",
    )
    assert (refused.code, refused.retryable, refused.exit_code) == (
        "AUTH-SENDER-MISMATCH", False, 3,
    )  # fmt: skip
    assert refused.reason == "the header names RS.CTU as sender"
    away = HubCallFailed(grpc.StatusCode.UNAVAILABLE, "failed to connect")
    assert (away.code, away.retryable, away.exit_code) == ("GRPC-UNAVAILABLE", True, 1)
    for status in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        assert not HubCallFailed(status, "").retryable
    assert HubCallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "").retryable


@dataclass
class FakeHub:
    """Answers like the hub client, from a script of results (evidence or error)."""

    answers: list[Any] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    streamed: bool = False

    def _next(self, call: str, value: Any) -> Any:
        self.calls.append((call, value))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def submit(self, envelope: bytes) -> Any:
        return self._next("submit", envelope)

    async def forward(self, envelope: bytes) -> Any:
        return self._next("forward", envelope)

    async def acknowledge(self, **request: Any) -> Any:
        return self._next("ack", request)


def test_outbox_item_is_retried_then_closed_with_the_hubs_evidence(
    pki: Pki, store: NodeStore
) -> None:
    envelope = _sealed(pki, "retry-1")
    item = store.enqueue(envelope, operation="submit", now_us=1)
    hub = FakeHub([HubCallFailed(grpc.StatusCode.UNAVAILABLE, "connection refused")])
    clock = FixedClock(NOW)
    with pytest.raises(HubCallFailed):
        asyncio.run(submit_item(item, hub, store, pki.directory, clock))  # type: ignore[arg-type]
    queued = store.outbox_item("retry-1")
    assert queued is not None
    assert (queued.state, queued.attempts, queued.status) == ("queued", 1, "UNAVAILABLE")

    hub.answers.append(_evidence(pki, envelope))
    state = asyncio.run(submit_item(item, hub, store, pki.directory, clock))  # type: ignore[arg-type]
    assert state == OutboxState.ACCEPTED
    assert [r.kind for r in store.evidences("retry-1")] == ["accepted"]


def test_outbox_item_refused_by_the_hub_keeps_status_and_rule(pki: Pki, store: NodeStore) -> None:
    envelope = _sealed(pki, "perm-1")
    item = store.enqueue(envelope, operation="submit", now_us=1)
    hub = FakeHub(
        [HubCallFailed(grpc.StatusCode.PERMISSION_DENIED, "[AUTH-SENDER-MISMATCH] not yours")]
    )
    state = asyncio.run(submit_item(item, hub, store, pki.directory, FixedClock(NOW)))  # type: ignore[arg-type]
    assert state == OutboxState.FAILED
    failed = store.outbox_item("perm-1")
    assert failed is not None
    assert (failed.status, failed.error) == (
        "PERMISSION_DENIED",
        "[AUTH-SENDER-MISMATCH] not yours",
    )


def test_policy_refusal_is_stored_with_its_rules(pki: Pki, store: NodeStore) -> None:
    envelope = _sealed(pki, "ref-1")
    item = store.enqueue(envelope, operation="submit", now_us=1)
    violation = Violation("CH-NOT-MEMBER", "ref-1", "AL.CTD", "not a member")
    hub = FakeHub([_evidence(pki, envelope, EvidenceKind.REFUSED, violations=(violation,))])
    state = asyncio.run(submit_item(item, hub, store, pki.directory, FixedClock(NOW)))  # type: ignore[arg-type]
    assert state == OutboxState.REFUSED


def test_evidence_about_another_message_is_not_taken(pki: Pki, store: NodeStore) -> None:
    envelope = _sealed(pki, "swap-1")
    other = _sealed(pki, "swap-2")
    item = store.enqueue(envelope, operation="submit", now_us=1)
    hub = FakeHub([_evidence(pki, other)])
    state = asyncio.run(submit_item(item, hub, store, pki.directory, FixedClock(NOW)))  # type: ignore[arg-type]
    assert state == OutboxState.FAILED
    failed = store.outbox_item("swap-1")
    assert failed is not None
    assert failed.status == "NODE-EVIDENCE-MISMATCH"
    assert store.evidences("swap-1") == []


def test_check_evidence_refuses_wrong_message_digest_or_kind(pki: Pki) -> None:
    envelope = _sealed(pki, "chk-1")
    good = _evidence(pki, envelope)
    kinds = {EvidenceKind.ACCEPTED}
    view = check_evidence(
        good, pki.directory, NOW, message_id="chk-1", envelope=envelope.raw, kinds=kinds
    )
    assert view.kind is EvidenceKind.ACCEPTED
    with pytest.raises(EvidenceMismatch, match="names message chk-1, not chk-2"):
        check_evidence(
            good, pki.directory, NOW, message_id="chk-2", envelope=envelope.raw, kinds=kinds
        )
    with pytest.raises(EvidenceMismatch, match="another envelope"):
        check_evidence(good, pki.directory, NOW, message_id="chk-1", envelope=b"x", kinds=kinds)
    with pytest.raises(EvidenceMismatch, match="expected read"):
        check_evidence(
            good, pki.directory, NOW, message_id="chk-1", envelope=envelope.raw,
            kinds={EvidenceKind.READ},
        )  # fmt: skip


# --------------------------------------------------------------------------- inbox


def _delivery(envelope: SealedEnvelope, evidence: pb.Evidence, sequence: int = 1) -> pb.Delivery:
    return pb.Delivery(sequence=sequence, envelope=envelope.raw, accepted=evidence)


def test_redelivered_message_is_stored_once(pki: Pki, store: NodeStore) -> None:
    envelope = _sealed(pki, "in-1")
    keyring = load_keyring(pki.certs, "EU.EUROPOL")
    delivery = _delivery(envelope, _evidence(pki, envelope))
    first = receive(delivery, store=store, keyring=keyring, directory=pki.directory, now=NOW)
    again = receive(delivery, store=store, keyring=keyring, directory=pki.directory, now=NOW)
    assert (first.new, again.new) == (True, False)
    assert [i.message_id for i in store.inbox("EU.EUROPOL")] == ["in-1"]
    assert [(a.message_id, a.read, a.sequence) for a in store.pending_acks()] == [
        ("in-1", False, 1)
    ]


def test_forged_acceptance_evidence_is_not_stored(pki: Pki, store: NodeStore) -> None:
    """An acceptance not signed by the hub (here by a unit's key) is refused."""
    envelope = _sealed(pki, "forged-ev")
    unit_signer = EvidenceSigner(load_keyring(pki.certs, "AL.CTD"), pki.directory)
    statement = pb.Evidence.FromString(_evidence(pki, envelope).SerializeToString()).statement
    forged = unit_signer.sign(statement, NOW)
    keyring = load_keyring(pki.certs, "EU.EUROPOL")
    with pytest.raises(UnknownSigner, match="HUB has no certified key"):
        receive(
            _delivery(envelope, forged), store=store, keyring=keyring,
            directory=pki.directory, now=NOW,
        )  # fmt: skip
    assert store.inbox("EU.EUROPOL") == []
    assert store.pending_acks() == []


def test_delivery_swapped_under_a_genuine_evidence_is_not_stored(
    pki: Pki, store: NodeStore
) -> None:
    """The hub's evidence for one envelope cannot vouch for another with the same id."""
    genuine = _sealed(pki, "swap-in")
    substitute = _sealed(pki, "swap-in", Body(text="something else"))
    keyring = load_keyring(pki.certs, "EU.EUROPOL")
    with pytest.raises(EvidenceMismatch):
        receive(
            _delivery(substitute, _evidence(pki, genuine)), store=store, keyring=keyring,
            directory=pki.directory, now=NOW,
        )  # fmt: skip
    assert store.inbox("EU.EUROPOL") == []


def test_acks_are_sent_in_order_and_stop_while_the_hub_is_away(pki: Pki, store: NodeStore) -> None:
    keyring = load_keyring(pki.certs, "EU.EUROPOL")
    envelopes = [_sealed(pki, f"ack-{n}") for n in range(2)]
    for n, envelope in enumerate(envelopes, start=1):
        receive(
            _delivery(envelope, _evidence(pki, envelope), n), store=store, keyring=keyring,
            directory=pki.directory, now=NOW,
        )  # fmt: skip
    hub = FakeHub([HubCallFailed(grpc.StatusCode.UNAVAILABLE, "down")])
    with pytest.raises(HubCallFailed):
        asyncio.run(send_pending_acks(hub, store, pki.directory, FixedClock(NOW)))  # type: ignore[arg-type]
    assert len(hub.calls) == 1  # the second waits behind the first
    hub.answers.extend(
        _evidence(pki, e, EvidenceKind.DELIVERED, unit="EU.EUROPOL", index=i)
        for i, e in enumerate(envelopes)
    )
    sent = asyncio.run(send_pending_acks(hub, store, pki.directory, FixedClock(NOW)))  # type: ignore[arg-type]
    assert sent == 2
    assert [c[1]["message_id"] for c in hub.calls[1:]] == ["ack-0", "ack-1"]
    assert store.pending_acks() == []
    assert [r.kind for r in store.evidences("ack-0")] == ["accepted", "delivered"]


# --------------------------------------------------------------------------- commands


def test_node_status_lists_the_outbox(pki: Pki, tmp_path: Path, capsys: Any) -> None:
    home = tmp_path / "node"
    assert main(["node", "init", "--unit", "AL.CTD", "--home", str(home)]) == 0
    code = main(
        [
            "send", "--as", "AL.CTD", "--home", str(home), "--certs", str(pki.certs),
            "--to", "EU.EUROPOL", "--crime-area", "terrorism", "--text", "x", "--id", "st-1",
        ]
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    assert main(["node", "status", "--home", str(home), "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["unit"] == "AL.CTD"
    assert status["counts"]["outbox_queued"] == 1
    assert status["outbox"][0]["message_id"] == "st-1"


def test_send_refuses_a_body_that_disagrees_with_its_header(
    pki: Pki, tmp_path: Path, capsys: Any
) -> None:
    home = tmp_path / "node"
    assert main(["node", "init", "--unit", "AL.CTD", "--home", str(home)]) == 0
    header = tmp_path / "h.json"
    header.write_text(
        json.dumps(
            {
                "kind": "REQUEST", "sender": "AL.CTD", "to": ["EU.EUROPOL"], "channel": "CT",
                "crime_area": "terrorism", "purpose": "cross_checking",
                "classification": "RESTREINT_UE", "handling": {"codes": ["H0"]},
                "evaluation": {"source": "B", "information": "2"},
                "subjects": {"individuals": [{"category": "suspect", "minor": False}],
                             "legal_entities": 0},
            }
        )
    )  # fmt: skip
    body = tmp_path / "b.json"
    body.write_text(json.dumps({"text": "nobody named"}))
    capsys.readouterr()
    code = main(
        [
            "send", "--as", "AL.CTD", "--home", str(home), "--certs", str(pki.certs),
            "--header", str(header), "--body", str(body),
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert str(body) in err
    assert "declares 1 individual" in err
    code = main(
        [
            "send", "--as", "AL.CTD", "--home", str(home), "--certs", str(pki.certs),
            "--header", str(header), "--body", str(body), "--to", "AT.ENU",
        ]
    )  # fmt: skip
    assert code == 2
    assert "drop --to" in capsys.readouterr().err
    with sqlite3.connect(home / "node.db") as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def test_a_later_ack_for_the_same_delivery_waits_for_the_earlier_one(
    pki: Pki, store: NodeStore
) -> None:
    """Streamed acks go out together, but never two for one delivery: should the earlier
    fail, the later (read, or on a relayed unit's behalf) must not be recorded first."""
    keyring = load_keyring(pki.certs, "EU.EUROPOL")
    envelope = _sealed(pki, "ack-order")
    receive(
        _delivery(envelope, _evidence(pki, envelope), 7), store=store, keyring=keyring,
        directory=pki.directory, now=NOW,
    )  # fmt: skip
    (item,) = store.inbox("EU.EUROPOL")
    store.mark_read(item, relayed=False, now_us=2)
    assert [a.read for a in store.pending_acks()] == [False, True]
    hub = FakeHub([HubCallFailed(grpc.StatusCode.UNAVAILABLE, "down")], streamed=True)
    with pytest.raises(HubCallFailed):
        asyncio.run(send_pending_acks(hub, store, pki.directory, FixedClock(NOW), window=64))  # type: ignore[arg-type]
    assert [c[1]["read"] for c in hub.calls] == [False]  # the read ack was not sent
