"""``exchange bench exchange`` end to end, small: every message accepted, delivered, acknowledged.

The figures themselves are for the README (rates move with the machine); what a test can
hold is that the benchmark really moves every message through a real hub, over the
nodes' streams and over unary calls, and names its figures as documented.
"""

from __future__ import annotations

import pytest

from exchange.bench.exchange import run


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
