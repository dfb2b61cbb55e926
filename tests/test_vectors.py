"""The committed envelope test vectors still hold for the current code (drift test)."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = sorted((ROOT / "tests" / "vectors").glob("envelope-*.json"))


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_vectors", ROOT / "scripts" / "gen_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return generator()


def test_a_vector_exists_for_every_suite(gen: ModuleType) -> None:
    from exchange.core.suites import SUITES

    assert {p.name for p in VECTORS} == {f"envelope-{s}.json" for s in SUITES}


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector_has_not_drifted(gen: ModuleType, path: Path) -> None:
    vector = json.loads(path.read_text())
    assert gen.check_vector(vector, gen.identities()) == [], (
        "run `make vectors` and review the diff"
    )


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("header_bytes", "the header encoding changed"),
        ("body_bytes", "the body encoding changed"),
    ],
)
def test_drift_in_an_encoding_is_reported(gen: ModuleType, field: str, expected: str) -> None:
    vector: dict[str, Any] = json.loads(VECTORS[0].read_text())
    changed = copy.deepcopy(vector)
    changed[field] = changed[field][:-2] + ("00" if changed[field][-2:] != "00" else "01")
    assert any(expected in problem for problem in gen.check_vector(changed, gen.identities()))


def test_a_tampered_vector_envelope_is_reported(gen: ModuleType) -> None:
    vector: dict[str, Any] = json.loads(VECTORS[0].read_text())
    vector["negative"][0]["error"] = "ENV-SOMETHING-ELSE"
    problems = gen.check_vector(vector, gen.identities())
    assert any("recorded ENV-SOMETHING-ELSE" in p for p in problems)
