"""`exchange demo` (what `make demo` runs) plays the whole scripted exchange and cleans up."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from exchange.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


def test_demo_plays_the_scripted_exchange_and_leaves_nothing_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads_before = {t.name for t in threading.enumerate()}
    code = main(
        [
            "demo",
            "--certs", str(tmp_path / "certs"),
            "--workdir", str(tmp_path / "demo"),
            "--policies", str(ROOT / "policies"),
            "--examples", str(ROOT / "examples"),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "refused" in out and "CH-NOT-MEMBER" in out
    assert "HC-H2-FORWARD-WITHOUT-PERMISSION" in out
    assert "read through EU.EULEX" in out
    assert "each evidence proven in the hub's signed log" in out
    assert "log verified" in out
    assert "Traceback" not in out
    lingering = {t.name for t in threading.enumerate() if t.is_alive()} - threads_before
    assert not {name for name in lingering if name.startswith(("hub", "node"))}
