"""Property: for any header and body the contract allows, open(seal(x)) == x, in both suites."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import REFERENCE_UNITS, messages

from exchange.core.body import Body
from exchange.core.envelope import SealedEnvelope, open_envelope, seal, verify
from exchange.core.header import Header
from exchange.core.identities import Identities, make_identities
from exchange.core.suites import SUITES, Suite
from exchange.errors import ExchangeError

NOW = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)

IDS: Identities = make_identities(
    REFERENCE_UNITS, not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=1)
)


@pytest.mark.parametrize("suite", list(SUITES.values()), ids=list(SUITES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages())
def test_open_of_seal_is_the_identity(suite: Suite, message: tuple[Header, Body]) -> None:
    header, body = message
    envelope = seal(
        header,
        body,
        keyring=IDS.keyrings[header.sender],
        directory=IDS.directory,
        now=NOW,
        suite=suite,
    )
    received = SealedEnvelope.from_bytes(envelope.raw)
    assert verify(received, IDS.directory, NOW) is suite
    assert received.header == header
    for reader in header.recipients:
        opened = open_envelope(
            received, keyring=IDS.keyrings[reader], directory=IDS.directory, now=NOW
        )
        assert opened.header == header
        assert opened.body == body


@settings(max_examples=40, deadline=None)
@given(message=messages(), data=st.data())
def test_any_single_flipped_bit_is_refused(
    message: tuple[Header, Body], data: st.DataObject
) -> None:
    header, body = message
    raw = seal(
        header, body, keyring=IDS.keyrings[header.sender], directory=IDS.directory, now=NOW
    ).raw
    index = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = raw[:index] + bytes([raw[index] ^ (1 << bit)]) + raw[index + 1 :]
    reader = header.recipients[0]

    def receive() -> None:
        envelope = SealedEnvelope.from_bytes(flipped)
        open_envelope(envelope, keyring=IDS.keyrings[reader], directory=IDS.directory, now=NOW)

    with pytest.raises(ExchangeError):
        receive()
