"""Nodes watch the hub's log on their own: a rewritten history is caught, and shown."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exchange.cli.main import main
from exchange.core.body import Body
from exchange.core.envelope import seal
from exchange.core.header import Header
from exchange.core.tree_head import Misbehaviour, TreeHead
from exchange.pki import load_directory, load_keyring
from exchange.wire.v1 import exchange_pb2 as pb
from nodes.store import NodeStore, OutboxState
from nodes.testing import ExchangeSimulator, wait_for

UNITS = ["AL.CTD", "EU.EUROPOL", "EU.EULEX", "XK.KP"]


def queue(sim: ExchangeSimulator, store: NodeStore, count: int) -> list[str]:
    directory = load_directory(sim.certs)
    keyring = load_keyring(sim.certs, "AL.CTD")
    ids = []
    for _ in range(count):
        header = Header.from_json(
            {
                "kind": "INFORMATION",
                "sender": "AL.CTD",
                "to": ["EU.EUROPOL"],
                "channel": "SIENA",
                "crime_area": "terrorism",
                "purpose": "information_exchange",
                "priority": "normal",
                "classification": "RESTREINT_UE",
                "handling": {"codes": ["H0"]},
                "evaluation": None,
                "subjects": {"individuals": [], "legal_entities": 0},
            }
        )
        envelope = seal(
            header,
            Body(text="routine"),
            keyring=keyring,
            directory=directory,
            now=datetime.now(UTC),
        )
        store.enqueue(envelope, operation="submit", now_us=1)
        ids.append(envelope.message_id)
    return ids


def kept_size(store: NodeStore) -> int:
    kept = store.kept_tree_head()
    if kept is None:
        return 0
    return TreeHead.decode(pb.SignedTreeHead.FromString(kept).tree_head).size


def test_rewritten_log_entry_is_caught_by_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ExchangeSimulator.create(tmp_path, units=UNITS) as sim:
        sender = sim.start_node("AL.CTD", log_check_seconds=0.2)
        sim.start_node("EU.EUROPOL", log_check_seconds=0.2)
        ids = queue(sim, sender.store, 3)
        wait_for(
            lambda: all(
                (i := sender.store.outbox_item(m)) and i.state == OutboxState.ACCEPTED for m in ids
            ),
            what="the first messages accepted",
        )
        wait_for(lambda: kept_size(sender.store) >= 4, what="the node to keep a head of them")
        assert sender.store.misbehaviours() == []

        # the operator rewrites an accepted message's entry and restarts the hub
        assert sim.hub is not None
        port = sim.hub.port
        sim.hub.stop()
        with sqlite3.connect(tmp_path / "hub.db") as db:
            (entry,) = db.execute("select entry from log_entries where idx=1").fetchone()
            db.execute(
                "update log_entries set entry=? where idx=1",
                (bytes(entry).replace(b"EU.EUROPOL", b"EU.EULEX"),),
            )
        sim.start_hub_on(port)
        queue(sim, sender.store, 1)

        alarms = wait_for(sender.store.misbehaviours, timeout=20, what="the node's alarm")
        evidence = Misbehaviour.from_json(alarms[0])
        assert evidence.holds(load_directory(sim.certs), datetime.now(UTC))
        first, second = evidence.heads
        assert first.size >= 4 and second.size > first.size

        # the status output raises the alarm too, and exits 3
        capsys.readouterr()
        code = main(
            [
                "status",
                ids[0],
                "--as",
                "AL.CTD",
                "--home",
                str(sim.home("AL.CTD")),
                "--certs",
                str(sim.certs),
                "--offline",
            ]
        )
        out = capsys.readouterr().out
        assert code == 3
        assert "ALARM" in out and "contradicts itself" in out


def test_status_proves_each_evidence_in_the_signed_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ExchangeSimulator.create(tmp_path, units=UNITS) as sim:
        sender = sim.start_node("AL.CTD")
        sim.start_node("EU.EUROPOL")
        (message_id,) = queue(sim, sender.store, 1)
        wait_for(
            lambda: (i := sender.store.outbox_item(message_id)) and i.state == OutboxState.ACCEPTED,
            what="acceptance",
        )
        capsys.readouterr()
        code = main(
            [
                "status",
                message_id,
                "--as",
                "AL.CTD",
                "--home",
                str(sim.home("AL.CTD")),
                "--certs",
                str(sim.certs),
                "--format",
                "json",
            ]
        )
        import json

        result = json.loads(capsys.readouterr().out)
        assert code == 0
        assert result["evidences"] and all(e["in_log"] for e in result["evidences"])
        assert result["log"]["tree_size"] >= 2
