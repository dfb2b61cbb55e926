"""The committed generated protobuf code is what `make proto` generates from proto/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "exchange" / "wire"


def test_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (dev extra)")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {
        p.relative_to(tmp_path / "exchange" / "wire"): p.read_bytes()
        for p in (tmp_path / "exchange" / "wire").rglob("*")
        if p.is_file()
    }
    committed = {
        p.relative_to(GENERATED): p.read_bytes()
        for p in GENERATED.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(map(str, fresh)) == sorted(map(str, committed)), "generated file set differs"
    stale = [str(name) for name, data in fresh.items() if committed[name] != data]
    assert not stale, f"run `make proto`: committed generated code is stale: {stale}"


def test_every_header_field_of_the_json_contract_is_on_the_wire() -> None:
    from exchange.wire.v1 import exchange_pb2 as pb

    wire_fields = set(pb.Header.DESCRIPTOR.fields_by_name)
    contract = {
        "id",
        "kind",
        "sender",
        "to",
        "cc",
        "channel",
        "crime_area",
        "purpose",
        "priority",
        "in_reply_to",
        "classification",
        "handling",
        "evaluation",
        "subjects",
    }
    renamed = {"case": "case_id"}
    assert contract <= wire_fields
    assert set(renamed.values()) <= wire_fields


def test_hub_service_offers_every_rpc_the_design_names() -> None:
    from exchange.wire.v1 import exchange_pb2 as pb

    methods = set(pb.DESCRIPTOR.services_by_name["Hub"].methods_by_name)
    assert {
        "Submit",
        "Subscribe",
        "Acknowledge",
        "Forward",
        "RequestPermission",
        "GrantPermission",
        "GetDirectory",
        "GetStatistics",
    } <= methods
