"""End to end: a real hub (gRPC, mutual TLS, SQLite) and real nodes, driven by the CLI.

One hub serves the whole module (:class:`nodes.testing.ExchangeSimulator`); each test
starts the nodes it needs in its own folders and uses its own message ids. The user
commands run in-process through :func:`exchange.cli.main.main`, exactly as typed.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exchange.cli.main import main
from exchange.core.body import Body, Person
from exchange.core.envelope import seal
from exchange.core.header import DataSubject, Evaluation, Handling, Header, Subjects
from exchange.core.vocab import (
    Channel,
    Classification,
    CrimeArea,
    HandlingCode,
    InformationAccuracy,
    Kind,
    Priority,
    Purpose,
    SourceReliability,
    SubjectCategory,
)
from exchange.pki import load_directory, load_keyring, load_tls_material
from nodes.client import HubCallFailed, HubClient
from nodes.store import OutboxRow, OutboxState
from nodes.testing import ExchangeSimulator, NodeThread, wait_for

UNITS = ["AL.CTD", "EU.EUROPOL", "AT.ENU", "BA.DKPT", "RS.CTU", "XK.KP", "EU.EULEX"]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExchangeSimulator]:
    with ExchangeSimulator.create(tmp_path_factory.mktemp("exchange"), units=UNITS) as simulator:
        yield simulator


StartNode = Callable[..., NodeThread]


@pytest.fixture
def start_node(sim: ExchangeSimulator, tmp_path: Path) -> Iterator[StartNode]:
    started: list[NodeThread] = []

    def start(unit: str, home: Path | None = None) -> NodeThread:
        node = sim.start_node(unit, home or tmp_path / unit)
        node.wait_subscribed()
        started.append(node)
        return node

    yield start
    for node in started:
        sim.stop_node(node)


class Cli:
    """Runs ``exchange ...`` in-process and returns (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], sim: ExchangeSimulator) -> None:
        self.capsys = capsys
        self.sim = sim

    def __call__(self, *args: object) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([str(a) for a in args] + ["--certs", str(self.sim.certs)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: object) -> tuple[int, Any]:
        code, out, err = self(*args, "--format", "json")
        assert out.strip(), f"no output (exit {code}): {err}"
        return code, json.loads(out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], sim: ExchangeSimulator) -> Cli:
    return Cli(capsys, sim)


def _unique(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def _outbox(node: NodeThread, message_id: str) -> OutboxRow:
    item = node.store.outbox_item(message_id)
    assert item is not None, f"{message_id} is not in the outbox"
    return item


def _evidence_kinds(node: NodeThread, message_id: str) -> list[tuple[str, str]]:
    return [(r.kind, r.unit) for r in node.store.evidences(message_id)]


def _hub_log(sim: ExchangeSimulator, message_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(sim.root / "hub.db") as db:
        rows = db.execute(
            "SELECT entry FROM log_entries WHERE message_id = ? ORDER BY idx", (message_id,)
        ).fetchall()
    return [json.loads(row[0]) for row in rows]


def _header(message_id: str, sender: str, to: tuple[str, ...], **changes: Any) -> Header:
    values: dict[str, Any] = {
        "id": message_id,
        "kind": Kind.REQUEST,
        "sender": sender,
        "to": to,
        "cc": (),
        "channel": Channel.CT,
        "crime_area": CrimeArea.TERRORISM,
        "purpose": Purpose.CROSS_CHECKING,
        "priority": Priority.NORMAL,
        "case": None,
        "in_reply_to": None,
        "classification": Classification.RESTREINT_UE,
        "handling": Handling(codes=frozenset({HandlingCode.H0})),
        "evaluation": None,
        "subjects": Subjects(),
    }
    values.update(changes)
    return Header(**values)


async def _submit(sim: ExchangeSimulator, as_unit: str, envelope: bytes) -> Any:
    async with HubClient(sim.hub_address, load_tls_material(sim.certs, as_unit)) as client:
        return await client.submit(envelope)


# --------------------------------------------------------------------------- the happy path


def test_message_is_delivered_read_and_every_evidence_verifies(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli
) -> None:
    albania = start_node("AL.CTD")
    europol = start_node("EU.EUROPOL")
    code, sent = cli.json(
        "send", "--as", "AL.CTD", "--home", albania.config.home,
        "--to", "EU.EUROPOL", "--channel", "CT", "--crime-area", "terrorism",
        "--kind", "REQUEST", "--purpose", "cross_checking", "--codes", "H0,H1",
        "--text", "Please check the attached travel pattern.",
    )  # fmt: skip
    assert code == 0, sent
    message_id = sent["message_id"]
    assert sent["state"] == "queued"

    wait_for(lambda: europol.store.inbox_item(message_id, "EU.EUROPOL"), what="delivery")
    wait_for(lambda: ("delivered", "EU.EUROPOL") in _evidence_kinds(europol, message_id))
    code, inbox = cli.json("inbox", "--as", "EU.EUROPOL", "--home", europol.config.home)
    assert code == 0
    (row,) = [m for m in inbox["messages"] if m["message_id"] == message_id]
    assert (row["from"], row["kind"], row["channel"], row["crime_area"], row["read"]) == (
        "AL.CTD", "REQUEST", "CT", "terrorism", False,
    )  # fmt: skip

    code, opened = cli.json("read", message_id, "--as", "EU.EUROPOL", "--home", europol.config.home)
    assert code == 0
    assert opened["body"]["text"] == "Please check the attached travel pattern."
    assert opened["header"]["handling"]["codes"] == ["H0", "H1"]
    wait_for(lambda: ("read", "EU.EUROPOL") in _evidence_kinds(europol, message_id))

    code, status = cli.json(
        "status", message_id, "--as", "EU.EUROPOL", "--home", europol.config.home
    )
    assert code == 0
    kinds = [e["kind"] for e in status["evidences"]]
    assert kinds == ["accepted", "delivered", "read"]
    assert all(e["verified"] for e in status["evidences"])
    assert status["inbox"]["read_at"] is not None

    wait_for(lambda: _outbox(albania, message_id).state == OutboxState.ACCEPTED)
    code, status = cli.json("status", message_id, "--as", "AL.CTD", "--home", albania.config.home)
    assert code == 0
    assert status["outbox"]["state"] == "accepted"
    # the sender fetches the whole chain from the hub, each evidence proven in the log
    assert [(e["kind"], e["verified"], e["in_log"]) for e in status["evidences"]] == [
        ("accepted", True, True),
        ("delivered", True, True),
        ("read", True, True),
    ]

    # the text form shows the same chain
    code, out, _ = cli("status", message_id, "--as", "EU.EUROPOL", "--home", europol.config.home)
    assert code == 0
    assert "verified" in out
    assert "read" in out


def test_direct_submission_prints_the_evidence(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli
) -> None:
    code, result = cli.json(
        "send", "--as", "RS.CTU", "--hub", sim.hub_address,
        "--to", "EU.EUROPOL", "--channel", "CT", "--crime-area", "terrorism", "--text", "FYI",
    )  # fmt: skip
    assert code == 0
    assert result["outcome"] == "accepted"
    assert result["evidence"]["unit"] == "RS.CTU"


def test_refused_message_names_its_rule(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli
) -> None:
    bosnia = start_node("BA.DKPT")
    # Bosnia and Herzegovina is not on CT SIENA (DESIGN.md section 7): refused by the hub.
    code, sent = cli.json(
        "send", "--as", "BA.DKPT", "--home", bosnia.config.home,
        "--to", "EU.EUROPOL", "--channel", "CT", "--crime-area", "terrorism", "--text", "x",
    )  # fmt: skip
    assert code == 0
    message_id = sent["message_id"]
    wait_for(lambda: _outbox(bosnia, message_id).state == OutboxState.REFUSED)
    code, status = cli.json("status", message_id, "--as", "BA.DKPT", "--home", bosnia.config.home)
    (refusal,) = status["evidences"]
    assert refusal["kind"] == "refused"
    assert refusal["verified"]
    assert [(v["rule"], v["recipient"]) for v in refusal["violations"]] == [
        ("CH-NOT-MEMBER", "BA.DKPT")
    ]

    # submitted directly, the refusal is exit 3 with rule, recipient and sentence
    code, out, _ = cli(
        "send", "--as", "BA.DKPT", "--hub", sim.hub_address,
        "--to", "EU.EUROPOL", "--channel", "CT", "--crime-area", "terrorism", "--text", "x",
    )  # fmt: skip
    assert code == 3
    assert "refused" in out
    assert "CH-NOT-MEMBER" in out
    assert "BA.DKPT" in out
    assert "not a member of the CT channel" in out


def test_reply_answers_the_request_in_its_case(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli
) -> None:
    albania = start_node("AL.CTD")
    europol = start_node("EU.EUROPOL")
    request_id = _unique("req")
    code, _ = cli.json(
        "send", "--as", "AL.CTD", "--home", albania.config.home, "--id", request_id,
        "--to", "EU.EUROPOL", "--channel", "CT", "--crime-area", "terrorism",
        "--kind", "REQUEST", "--case", "CASE-2019-17", "--text", "Any hits?",
    )  # fmt: skip
    assert code == 0
    wait_for(lambda: europol.store.inbox_item(request_id, "EU.EUROPOL"), what="request")
    code, reply = cli.json(
        "reply", request_id, "--as", "EU.EUROPOL", "--home", europol.config.home,
        "--text", "No hits in our systems.",
    )  # fmt: skip
    assert code == 0
    reply_id = reply["message_id"]
    item = wait_for(lambda: albania.store.inbox_item(reply_id, "AL.CTD"), what="reply")
    assert (item.kind, item.in_reply_to, item.case_id, item.channel) == (
        "REPLY", request_id, "CASE-2019-17", "CT",
    )  # fmt: skip
    code, opened = cli.json("read", reply_id, "--as", "AL.CTD", "--home", albania.config.home)
    assert opened["body"]["text"] == "No hits in our systems."


# --------------------------------------------------------------------------- forwarding


def _send_h2(cli: Cli, albania: NodeThread, europol: NodeThread) -> str:
    message_id = _unique("h2")
    code, _ = cli.json(
        "send", "--as", "AL.CTD", "--home", albania.config.home, "--id", message_id,
        "--to", "EU.EUROPOL", "--channel", "CT", "--crime-area", "terrorism",
        "--codes", "H0,H2", "--text", "Not to be disseminated without permission.",
    )  # fmt: skip
    assert code == 0
    wait_for(lambda: europol.store.inbox_item(message_id, "EU.EUROPOL"), what="H2 delivery")
    return message_id


def test_h2_forward_without_permission_is_refused(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli
) -> None:
    albania = start_node("AL.CTD")
    europol = start_node("EU.EUROPOL")
    message_id = _send_h2(cli, albania, europol)
    code, forwarded = cli.json(
        "forward", message_id, "--as", "EU.EUROPOL", "--to", "AT.ENU",
        "--home", europol.config.home, "--hub", sim.hub_address,
    )  # fmt: skip
    assert code == 3
    assert forwarded["state"] == "refused"
    rules = [v["rule"] for v in forwarded["evidence"]["violations"]]
    assert rules == ["HC-H2-FORWARD-WITHOUT-PERMISSION"]


def test_h2_forward_with_the_providers_permission_is_accepted(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli, tmp_path: Path
) -> None:
    albania = start_node("AL.CTD")
    europol = start_node("EU.EUROPOL")
    austria = start_node("AT.ENU")
    message_id = _send_h2(cli, albania, europol)
    permission = tmp_path / "permission.bin"
    code, permitted = cli.json(
        "permit", message_id, "--as", "AL.CTD", "--home", albania.config.home,
        "--grantee", "EU.EUROPOL", "--to", "AT.ENU", "--purpose", "cross_checking",
        "--out", permission,
    )  # fmt: skip
    assert code == 0
    assert permitted["grantee"] == "EU.EUROPOL"
    code, forwarded = cli.json(
        "forward", message_id, "--as", "EU.EUROPOL", "--to", "AT.ENU",
        "--permission", permission, "--home", europol.config.home,
    )  # fmt: skip
    assert code == 0
    forward_id = forwarded["message_id"]
    wait_for(lambda: austria.store.inbox_item(forward_id, "AT.ENU"), what="forward delivery")
    code, opened = cli.json("read", forward_id, "--as", "AT.ENU", "--home", austria.config.home)
    assert code == 0
    assert opened["provider"] == "AL.CTD"
    assert opened["body"]["text"] == "Not to be disseminated without permission."
    assert "H2" in opened["header"]["handling"]["codes"]


# --------------------------------------------------------------------------- relayed unit


def test_relayed_unit_exchanges_through_its_relay(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli
) -> None:
    albania = start_node("AL.CTD")
    eulex = start_node("EU.EULEX")
    eulex.wait_directory()
    home = eulex.config.home
    code, sent = cli.json(
        "send", "--as", "AL.CTD", "--home", albania.config.home,
        "--to", "XK.KP", "--channel", "SIENA", "--crime-area", "drug_trafficking",
        "--kind", "REQUEST", "--text", "Request for Kosovo Police",
    )  # fmt: skip
    assert code == 0
    message_id = sent["message_id"]
    # the relay has it, but cannot open it: it is stored for XK.KP, sealed
    item = wait_for(lambda: eulex.store.inbox_item(message_id, "XK.KP"), what="relayed delivery")
    assert item.handed_on_at_us is None
    wait_for(lambda: ("delivered", "XK.KP") in _evidence_kinds(eulex, message_id))
    code, inbox = cli.json("inbox", "--as", "EU.EULEX", "--home", home)
    assert message_id not in [m["message_id"] for m in inbox["messages"]]

    # Kosovo Police reads through the relay's node with its own key
    code, inbox = cli.json("inbox", "--as", "XK.KP", "--home", home)
    assert code == 0
    assert message_id in [m["message_id"] for m in inbox["messages"]]
    code, opened = cli.json("read", message_id, "--as", "XK.KP", "--home", home)
    assert code == 0
    assert opened["body"]["text"] == "Request for Kosovo Police"
    wait_for(lambda: ("read", "XK.KP") in _evidence_kinds(eulex, message_id), what="read ack")

    # the log records both legs: to the relay, then to the relayed unit, then read
    events = [(e["event"], e.get("unit"), e.get("on_behalf_of")) for e in _hub_log(sim, message_id)]
    assert events == [
        ("accepted", None, None),
        ("relayed", "XK.KP", "EU.EULEX"),
        ("delivered", "XK.KP", "EU.EULEX"),
        ("acknowledged", "XK.KP", "EU.EULEX"),
    ]

    # and it answers through the relay: sealed with XK.KP's keys, submitted by EULEX's node
    code, reply = cli.json(
        "reply", message_id, "--as", "XK.KP", "--home", home, "--text", "Answer from Pristina"
    )
    assert code == 0
    reply_id = reply["message_id"]
    got = wait_for(lambda: albania.store.inbox_item(reply_id, "AL.CTD"), what="reply from XK.KP")
    assert got.sender == "XK.KP"
    code, opened = cli.json("read", reply_id, "--as", "AL.CTD", "--home", albania.config.home)
    assert opened["body"]["text"] == "Answer from Pristina"


def test_node_refuses_to_send_for_a_unit_it_does_not_relay(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli
) -> None:
    albania = start_node("AL.CTD")
    albania.wait_directory()
    code, _out, err = cli(
        "send", "--as", "RS.CTU", "--home", albania.config.home,
        "--to", "EU.EUROPOL", "--crime-area", "terrorism", "--text", "x",
    )  # fmt: skip
    assert code == 2
    assert "AL.CTD's" in err
    assert "not for RS.CTU" in err


# --------------------------------------------------------------------------- durability


def test_outbox_survives_a_node_restart(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli, tmp_path: Path
) -> None:
    home = tmp_path / "AL.CTD"
    assert main(["node", "init", "--unit", "AL.CTD", "--home", str(home)]) == 0
    europol = start_node("EU.EUROPOL")
    code, sent = cli.json(
        "send", "--as", "AL.CTD", "--home", home,
        "--to", "EU.EUROPOL", "--channel", "CT", "--crime-area", "terrorism", "--text", "queued",
    )  # fmt: skip
    assert code == 0
    message_id = sent["message_id"]
    time.sleep(0.3)
    assert europol.store.inbox_item(message_id, "EU.EUROPOL") is None  # nobody sent it yet
    start_node("AL.CTD", home)
    wait_for(lambda: europol.store.inbox_item(message_id, "EU.EUROPOL"), what="delivery")


def test_outbox_retries_until_the_hub_is_back(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli, tmp_path: Path
) -> None:
    """The node keeps the message queued while the hub is away and sends it when it is back."""
    albania = start_node("AL.CTD")
    europol = start_node("EU.EUROPOL")
    assert sim.hub is not None
    port = sim.hub.port
    sim.hub.stop(grace=0.5)
    try:
        code, sent = cli.json(
            "send", "--as", "AL.CTD", "--home", albania.config.home,
            "--to", "EU.EUROPOL", "--channel", "CT", "--crime-area", "terrorism", "--text", "x",
        )  # fmt: skip
        assert code == 0
        message_id = sent["message_id"]
        wait_for(lambda: _outbox(albania, message_id).attempts >= 2, what="retries")
        item = _outbox(albania, message_id)
        assert item.state == OutboxState.QUEUED
        assert item.status == "UNAVAILABLE"
    finally:
        sim.hub = None
        hub = sim.start_hub_on(port)
    assert hub.port == port
    wait_for(lambda: _outbox(albania, message_id).state == OutboxState.ACCEPTED)
    wait_for(lambda: europol.store.inbox_item(message_id, "EU.EUROPOL"), what="delivery")


def test_replayed_message_is_delivered_once(sim: ExchangeSimulator, start_node: StartNode) -> None:
    """Submitting the same envelope again gets the same evidence and no second delivery."""
    import asyncio

    europol = start_node("EU.EUROPOL")
    directory = load_directory(sim.certs)
    message_id = _unique("replay")
    envelope = seal(
        _header(message_id, "AL.CTD", ("EU.EUROPOL",)),
        Body(text="once"),
        keyring=load_keyring(sim.certs, "AL.CTD"),
        directory=directory,
        now=datetime.now(UTC),
    )
    first = asyncio.run(_submit(sim, "AL.CTD", envelope.raw))
    second = asyncio.run(_submit(sim, "AL.CTD", envelope.raw))
    assert first == second
    wait_for(lambda: europol.store.inbox_item(message_id, "EU.EUROPOL"), what="delivery")
    wait_for(lambda: ("delivered", "EU.EUROPOL") in _evidence_kinds(europol, message_id))
    assert [m.message_id for m in europol.store.inbox("EU.EUROPOL")].count(message_id) == 1
    assert [e["event"] for e in _hub_log(sim, message_id)] == ["accepted", "delivered"]


def test_redelivery_after_a_node_restart_is_stored_once(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli, tmp_path: Path
) -> None:
    """A node that stored a message but crashed before its ack gets it again: stored once."""
    albania = start_node("AL.CTD")
    europol = start_node("EU.EUROPOL")
    _code, sent = cli.json(
        "send", "--as", "AL.CTD", "--home", albania.config.home,
        "--to", "EU.EUROPOL", "--channel", "CT", "--crime-area", "terrorism", "--text", "x",
    )  # fmt: skip
    message_id = sent["message_id"]
    wait_for(lambda: ("delivered", "EU.EUROPOL") in _evidence_kinds(europol, message_id))
    sim.stop_node(europol)
    # The hub forgets the acknowledgement (as if the node had crashed before sending it).
    with sqlite3.connect(sim.root / "hub.db") as db:
        db.execute("UPDATE deliveries SET state = 'pending' WHERE message_id = ?", (message_id,))
    europol = start_node("EU.EUROPOL", europol.config.home)
    wait_for(lambda: _hub_state(sim, message_id) == "delivered", what="acknowledged again")
    assert [m.message_id for m in europol.store.inbox("EU.EUROPOL")].count(message_id) == 1


def _hub_state(sim: ExchangeSimulator, message_id: str) -> str:
    with sqlite3.connect(sim.root / "hub.db") as db:
        (state,) = db.execute(
            "SELECT state FROM deliveries WHERE message_id = ?", (message_id,)
        ).fetchone()
    return str(state)


# --------------------------------------------------------------------------- attacks


def test_forged_sender_is_refused(sim: ExchangeSimulator, start_node: StartNode) -> None:
    """AL.CTD's connection submits a header naming RS.CTU as sender: PERMISSION_DENIED."""
    import asyncio

    directory = load_directory(sim.certs)
    envelope = seal(
        _header(_unique("forged"), "RS.CTU", ("EU.EUROPOL",)),
        Body(text="I am RS.CTU, trust me"),
        keyring=load_keyring(sim.certs, "RS.CTU"),
        directory=directory,
        now=datetime.now(UTC),
    )
    with pytest.raises(HubCallFailed) as refused:
        asyncio.run(_submit(sim, "AL.CTD", envelope.raw))
    assert refused.value.status.name == "PERMISSION_DENIED"
    assert refused.value.code == "AUTH-SENDER-MISMATCH"
    assert not refused.value.retryable

    # the same envelope queued in AL.CTD's node fails for good, with the hub's reason
    albania = start_node("AL.CTD")
    albania.store.enqueue(envelope, operation="submit", now_us=0)
    wait_for(lambda: _outbox(albania, envelope.message_id).state == "failed", what="failed")
    item = _outbox(albania, envelope.message_id)
    assert item.status == "PERMISSION_DENIED"
    assert (item.error or "").startswith("[AUTH-SENDER-MISMATCH]")


def test_header_body_mismatch_is_rejected_and_reported_to_the_sender(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli
) -> None:
    """A body naming fewer persons than the header declares: rejected, and a signed notice."""
    import asyncio

    albania = start_node("AL.CTD")
    europol = start_node("EU.EUROPOL")
    message_id = _unique("mismatch")
    header = _header(
        message_id,
        "AL.CTD",
        ("EU.EUROPOL",),
        subjects=Subjects(
            individuals=(
                DataSubject(SubjectCategory.SUSPECT, minor=False),
                DataSubject(SubjectCategory.SUSPECT, minor=False),
            )
        ),
        evaluation=Evaluation(SourceReliability.B, InformationAccuracy.KNOWN_PERSONALLY_TO_SOURCE),
    )
    body = Body(
        text="one person only",
        persons=(Person("DOE", "John", None, "AL", SubjectCategory.SUSPECT, False),),
    )
    envelope = seal(
        header,
        body,
        keyring=load_keyring(sim.certs, "AL.CTD"),
        directory=load_directory(sim.certs),
        now=datetime.now(UTC),
    )
    asyncio.run(_submit(sim, "AL.CTD", envelope.raw))
    item = wait_for(lambda: europol.store.inbox_item(message_id, "EU.EUROPOL"), what="delivery")
    assert item.state == "rejected"
    assert item.reject_code == "ENV-HEADER-BODY-MISMATCH"
    code, _out, err = cli("read", message_id, "--as", "EU.EUROPOL", "--home", europol.config.home)
    assert code == 2
    assert "rejected" in err

    notice = wait_for(
        lambda: [m for m in albania.store.inbox("AL.CTD") if m.kind == "NOTICE"], what="notice"
    )[-1]
    assert notice.sender == "EU.EUROPOL"
    code, opened = cli.json(
        "read", notice.message_id, "--as", "AL.CTD", "--home", albania.config.home
    )
    assert opened["body"]["text"].startswith(f"header/body mismatch in {message_id}: ")
    assert "2 individuals" in opened["body"]["text"]
    assert "DOE" not in opened["body"]["text"]


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_exit_2_with_a_sentence(
    sim: ExchangeSimulator, start_node: StartNode, cli: Cli, tmp_path: Path
) -> None:
    europol = start_node("EU.EUROPOL")
    home = europol.config.home

    code, out, err = cli("read", "no-such-id", "--as", "EU.EUROPOL", "--home", home)
    assert code == 2
    assert "no message no-such-id" in err
    assert "Traceback" not in err + out

    code, _, err = cli("status", "no-such-id", "--as", "EU.EUROPOL", "--home", home)
    assert code == 2
    assert "no message no-such-id" in err

    header = tmp_path / "h.json"
    header.write_text(json.dumps({"kind": "REQUEST", "sender": "EU.EUROPOL"}))
    body = tmp_path / "b.json"
    body.write_text("{}")
    code, _, err = cli(
        "send", "--as", "EU.EUROPOL", "--home", home, "--header", header, "--body", body
    )
    assert code == 2
    assert str(header) in err
    assert "'to'" in err

    code, _, err = cli(
        "send", "--as", "EU.EUROPOL", "--to", "AT.ENU", "--crime-area", "x", "--text", "t"
    )
    assert code == 2
    assert "--home" in err

    code, _, err = cli(
        "send", "--as", "EU.EUROPOL", "--home", home, "--to", "AT.ENU",
        "--crime-area", "poaching", "--text", "t",
    )  # fmt: skip
    assert code == 2
    assert "--crime-area" in err
    assert "poaching" in err

    code, _, err = cli("inbox", "--as", "EU.EUROPOL", "--home", tmp_path / "nowhere")
    assert code == 2
    assert "no node store" in err


# --------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_hub_and_node_run_as_processes(tmp_path: Path) -> None:
    """`exchange hub serve` and `exchange node run` as real processes, stopped by SIGTERM."""
    from exchange.pki import init_pki
    from nodes.testing import write_policies

    policies = write_policies(tmp_path / "policies", ["AL.CTD", "EU.EUROPOL"])
    certs = tmp_path / "certs"
    init_pki(certs, ["AL.CTD", "EU.EUROPOL"], suites=("classic-2026",))
    exe = [str(Path(sys.executable).parent / "exchange")]
    port_file = tmp_path / "hub.port"
    hub = subprocess.Popen(
        [*exe, "hub", "serve", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
         "--certs", str(certs), "--policies", str(policies), "--db", f"sqlite:///{tmp_path}/hub.db"],
        stderr=(tmp_path / "hub.log").open("w"),
    )  # fmt: skip
    processes = [hub]
    try:
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), timeout=30)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        for unit in ("AL.CTD", "EU.EUROPOL"):
            processes.append(
                subprocess.Popen(
                    [
                        *exe,
                        "node",
                        "run",
                        "--unit",
                        unit,
                        "--hub",
                        address,
                        "--certs",
                        str(certs),
                        "--home",
                        str(tmp_path / unit),
                    ],
                    stderr=(tmp_path / f"{unit}.log").open("w"),
                )
            )
        for unit in ("AL.CTD", "EU.EUROPOL"):  # the store exists once SIGTERM is handled
            wait_for((tmp_path / unit / "node.db").exists, timeout=60)
        code = main(
            ["send", "--as", "AL.CTD", "--home", str(tmp_path / "AL.CTD"), "--to", "EU.EUROPOL",
             "--crime-area", "terrorism", "--text", "hi", "--id", "proc-1", "--certs", str(certs)]
        )  # fmt: skip
        assert code == 0

        def delivered() -> bool:
            db = tmp_path / "EU.EUROPOL" / "node.db"
            if not db.exists():
                return False
            with sqlite3.connect(db) as conn:
                return bool(
                    conn.execute("SELECT 1 FROM inbox WHERE message_id='proc-1'").fetchone()
                )

        wait_for(delivered, timeout=60)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            assert process.wait(timeout=30) == 0
