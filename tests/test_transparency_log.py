"""The running hub's log as a transparency log: proofs, audits, and tampering caught."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from exchange.cli.main import main
from exchange.core.body import Body
from exchange.core.clock import SystemClock
from exchange.core.envelope import seal
from exchange.core.evidence import verify_evidence
from exchange.core.header import Header
from exchange.core.merkle import verify_consistency, verify_inclusion
from exchange.core.tree_head import find_misbehaviour, verify_tree_head
from exchange.hub.background import BackgroundHub
from exchange.hub.server import HubConfig
from exchange.pki import load_directory, load_keyring, load_tls_material
from exchange.wire.v1 import exchange_pb2 as pb
from exchange.wire.v1 import exchange_pb2_grpc as pb_grpc

POLICIES = Path(__file__).resolve().parent.parent / "policies"
TIMEOUT = 15


def header(**overrides: Any) -> Header:
    data: dict[str, Any] = {
        "id": f"msg-{uuid.uuid4().hex[:12]}",
        "kind": "INFORMATION",
        "sender": "AL.CTD",
        "to": ["EU.EUROPOL"],
        "channel": "CT",
        "crime_area": "terrorism",
        "purpose": "information_exchange",
        "priority": "normal",
        "classification": "RESTREINT_UE",
        "handling": {"codes": ["H0"]},
        "evaluation": None,
        "subjects": {"individuals": [], "legal_entities": 0},
    }
    data.update(overrides)
    return Header.from_json(data)


class Running:
    def __init__(self, certs: Path, db_path: Path) -> None:
        self.certs = certs
        self.db_path = db_path
        self.hub = BackgroundHub(
            HubConfig(
                listen="127.0.0.1:0",
                certs=certs,
                db_url=f"sqlite:///{db_path}",
                policies=POLICIES,
                clock=SystemClock(),
            )
        )
        self.hub.start()

    def stub(self, unit: str) -> pb_grpc.HubStub:
        tls = load_tls_material(self.certs, unit)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.root_ca_pem,
            private_key=tls.private_key_pem,
            certificate_chain=tls.certificate_chain_pem,
        )
        return pb_grpc.HubStub(grpc.secure_channel(f"127.0.0.1:{self.hub.port}", credentials))

    def send(self, count: int) -> list[pb.Evidence]:
        directory = load_directory(self.certs)
        keyring = load_keyring(self.certs, "AL.CTD")
        stub = self.stub("AL.CTD")
        out = []
        for _ in range(count):
            envelope = seal(
                header(),
                Body(text="routine information"),
                keyring=keyring,
                directory=directory,
                now=datetime.now(UTC),
            )
            out.append(
                stub.Submit(pb.SubmitRequest(envelope=envelope.raw), timeout=TIMEOUT).evidence
            )
        return out

    def stop(self) -> None:
        self.hub.stop()


@pytest.fixture
def running(dev_pki: Path, tmp_path: Path) -> Iterator[Running]:
    hub = Running(dev_pki, tmp_path / "hub.db")
    try:
        yield hub
    finally:
        hub.stop()


def test_every_evidence_is_proven_in_the_signed_log(running: Running) -> None:
    evidences = running.send(5)
    directory = load_directory(running.certs)
    now = datetime.now(UTC)
    stub = running.stub("EU.EUROPOL")
    head = verify_tree_head(
        stub.GetTreeHead(pb.GetTreeHeadRequest(), timeout=TIMEOUT), directory, now
    )
    assert head.size == 6  # the policy entry and five acceptances
    for evidence in evidences:
        view = verify_evidence(evidence, directory, now)
        proof = stub.GetInclusionProof(
            pb.GetInclusionProofRequest(index=view.log_index, tree_size=head.size), timeout=TIMEOUT
        )
        assert verify_inclusion(
            view.log_leaf_hash, view.log_index, head.size, list(proof.hashes), head.root_hash
        )


def test_a_later_head_is_consistent_with_an_earlier_one(running: Running) -> None:
    directory = load_directory(running.certs)
    now = datetime.now(UTC)
    stub = running.stub("RS.CTU")
    running.send(3)
    old = verify_tree_head(
        stub.GetTreeHead(pb.GetTreeHeadRequest(), timeout=TIMEOUT), directory, now
    )
    running.send(4)
    new = verify_tree_head(
        stub.GetTreeHead(pb.GetTreeHeadRequest(), timeout=TIMEOUT), directory, now
    )
    proof = stub.GetConsistencyProof(
        pb.GetConsistencyProofRequest(old_size=old.size, new_size=new.size), timeout=TIMEOUT
    )
    assert verify_consistency(old.size, new.size, old.root_hash, new.root_hash, list(proof.hashes))


def test_proof_for_a_tree_larger_than_the_log_is_refused(running: Running) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        running.stub("RS.CTU").GetInclusionProof(
            pb.GetInclusionProofRequest(index=0, tree_size=10_000), timeout=TIMEOUT
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- audits


@pytest.fixture
def stored_log(dev_pki: Path, tmp_path: Path) -> Path:
    """A hub database with a few exchanges and a signed head, the hub stopped."""
    hub = Running(dev_pki, tmp_path / "hub.db")
    try:
        hub.send(6)
        hub.stub("EU.EUROPOL").GetTreeHead(pb.GetTreeHeadRequest(), timeout=TIMEOUT)
    finally:
        hub.stop()
    return tmp_path / "hub.db"


def verify_db(
    db: Path, certs: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(
        ["log", "verify", "--db", f"sqlite:///{db}", "--certs", str(certs), "--format", "json"]
    )
    return code, json.loads(capsys.readouterr().out)


def test_untouched_log_verifies(
    stored_log: Path, dev_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = verify_db(stored_log, dev_pki, capsys)
    assert code == 0 and report["ok"]
    assert report["size"] == 7 and report["heads_checked"] >= 1


def edit(db: Path, sql: str, *args: Any) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute(sql, args)


def entry(db: Path, index: int) -> bytes:
    with sqlite3.connect(db) as connection:
        return bytes(
            connection.execute("select entry from log_entries where idx=?", (index,)).fetchone()[0]
        )


def test_tampered_log_entry_is_named(
    stored_log: Path, dev_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forged = entry(stored_log, 3).replace(b"EU.EUROPOL", b"RS.CTU")
    edit(stored_log, "update log_entries set entry=? where idx=3", forged)
    code, report = verify_db(stored_log, dev_pki, capsys)
    assert code == 3 and report["first_bad_index"] == 3
    assert "differs from the one the hub signed" in report["problems"][0]["what"]


def test_deleted_log_entry_is_named(
    stored_log: Path, dev_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit(stored_log, "delete from log_entries where idx=2")
    code, report = verify_db(stored_log, dev_pki, capsys)
    assert code == 3 and report["first_bad_index"] == 2
    assert "missing" in report["problems"][0]["what"]


def test_reordered_log_entries_are_named(
    stored_log: Path, dev_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two, five = entry(stored_log, 2), entry(stored_log, 5)
    edit(stored_log, "update log_entries set entry=? where idx=2", five)
    edit(stored_log, "update log_entries set entry=? where idx=5", two)
    code, report = verify_db(stored_log, dev_pki, capsys)
    assert code == 3 and report["first_bad_index"] == 2


def test_inserted_log_entry_is_named(
    stored_log: Path, dev_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit(
        stored_log,
        "insert into log_entries (idx, kind, message_id, hub_time_us, entry) values (7, 'accepted', 'x', 1, ?)",
        entry(stored_log, 4),
    )
    code, report = verify_db(stored_log, dev_pki, capsys)
    assert code == 3 and report["first_bad_index"] == 7
    assert "attested by nothing" in report["problems"][0]["what"]


def test_export_verifies_offline_and_a_forged_line_does_not(
    stored_log: Path, dev_pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export.jsonl"
    today = datetime.now(UTC).date().isoformat()
    assert (
        main(
            [
                "log",
                "export",
                "--db",
                f"sqlite:///{stored_log}",
                "--from",
                today,
                "--to",
                today,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(["log", "verify", "--file", str(out), "--certs", str(dev_pki), "--format", "json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["entries_checked"] == 7
    lines = out.read_text().splitlines()
    record = json.loads(lines[4])
    record["entry"] = record["entry"].replace("AL.CTD", "RS.CTU")
    lines[4] = json.dumps(record)
    out.write_text("\n".join(lines) + "\n")
    assert main(["log", "verify", "--file", str(out), "--certs", str(dev_pki)]) == 3


def test_rewritten_history_is_caught_by_a_node_holding_an_older_head(
    dev_pki: Path, tmp_path: Path
) -> None:
    db = tmp_path / "hub.db"
    directory = load_directory(dev_pki)
    hub = Running(dev_pki, db)
    try:
        hub.send(4)
        seen = hub.stub("RS.CTU").GetTreeHead(pb.GetTreeHeadRequest(), timeout=TIMEOUT)
    finally:
        hub.stop()
    # the operator rewrites an entry the node's head already covers, and restarts
    forged = entry(db, 2).replace(b"EU.EUROPOL", b"AT.ENU")
    edit(db, "update log_entries set entry=? where idx=2", forged)
    hub = Running(dev_pki, db)
    try:
        assert not hub.hub.hub.service.log.consistent_at_start
        hub.send(2)
        stub = hub.stub("RS.CTU")
        newer = stub.GetTreeHead(pb.GetTreeHeadRequest(), timeout=TIMEOUT)
        old_head = verify_tree_head(seen, directory, datetime.now(UTC))
        new_head = verify_tree_head(newer, directory, datetime.now(UTC))
        proof = stub.GetConsistencyProof(
            pb.GetConsistencyProofRequest(old_size=old_head.size, new_size=new_head.size),
            timeout=TIMEOUT,
        )
        found = find_misbehaviour(
            seen, newer, directory, datetime.now(UTC), consistency_proof=list(proof.hashes)
        )
        assert found is not None and found.holds(directory, datetime.now(UTC))
    finally:
        hub.stop()
