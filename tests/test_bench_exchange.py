"""``exchange bench exchange`` end to end, small: every message accepted, delivered, acknowledged.

The figures themselves are for the README (rates move with the machine); what a test can
hold is that the benchmark really moves every message through a real hub, over the
nodes' streams and over unary calls, and names its figures as documented.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exchange.bench.exchange import run
from exchange.errors import InputError


@pytest.mark.parametrize("streamed", [True, False], ids=["streams", "unary"])
def test_every_benchmark_message_is_accepted_delivered_and_acknowledged(streamed: bool) -> None:
    result = run(
        nodes=3, messages=60, concurrency=8, db_url=None, streamed=streamed, half_rate_seconds=1
    )
    assert result["calls"] == ("streams" if streamed else "unary")
    assert (result["accepted"], result["delivered"], result["acknowledged"]) == (60, 60, 60)
    for rate in ("accepted_per_s", "delivered_per_s", "echo_per_s", "half_rate_per_s"):
        assert result[rate] > 0, rate
    assert result["ratio_accepted_to_echo"] == round(
        result["accepted_per_s"] / result["echo_per_s"], 3
    )
    assert result["submit_p50_ms"] <= result["submit_p99_ms"]
    assert result["hub_rss_mb"] > 0


def test_benchmark_on_postgresql_runs_in_a_fresh_schema_and_leaves_none_behind() -> None:
    """Two runs on one database: each starts empty (nothing deduped), nothing is left."""
    from conftest import PG_DSN, postgres_unreachable

    reason = postgres_unreachable()
    if reason:
        pytest.skip(reason)
    import psycopg

    url = PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1)
    for _ in range(2):
        result = run(nodes=3, messages=30, concurrency=4, db_url=url, half_rate_seconds=0.5)
        assert result["db"] == "postgresql"
        assert (result["accepted"], result["delivered"]) == (30, 30)
    with psycopg.connect(PG_DSN) as connection:
        left = connection.execute(
            "select count(*) from information_schema.schemata"
            " where schema_name like 'exchange_bench_%'"
        ).fetchone()
    assert left == (0,)


def test_benchmark_refuses_an_existing_sqlite_file(tmp_path: Path) -> None:
    existing = tmp_path / "hub.db"
    existing.write_bytes(b"")
    with pytest.raises(InputError, match="needs a new database"):
        run(nodes=2, messages=2, concurrency=1, db_url=f"sqlite:///{existing}")
