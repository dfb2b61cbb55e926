"""Make the envelope test vectors in tests/vectors (run by `make vectors`).

One file per suite. Keys are derived from a fixed seed; sealing is randomised (fresh
content key, salt, nonce, HPKE ephemeral keys), so a vector records its envelope
together with every deterministic encoding that went into it: the key ids, the
signed header bytes and the body bytes. ``--check`` (and tests/test_vectors.py)
recomputes those encodings from the inputs and opens the recorded envelopes with
the current code, so a format change shows up as a failing diff, not a silent
fixture. Regenerating keeps a recorded envelope when nothing it depends on drifted.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from exchange.core.body import Body
from exchange.core.codec import body_to_wire, header_to_wire
from exchange.core.envelope import SealedEnvelope, open_envelope, seal, verify
from exchange.core.header import Header
from exchange.core.identities import Identities, make_identities
from exchange.core.suites import SUITES, Suite, suite_by_id
from exchange.errors import EnvelopeError
from exchange.wire.v1 import exchange_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
SEED = b"exchange test vectors v1"
NOW = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
SENDER, RECIPIENT, OUTSIDER = "AL.CTD", "EU.EUROPOL", "RS.CTU"

HEADER: dict[str, Any] = {
    "id": "vector-0001",
    "kind": "REQUEST",
    "sender": SENDER,
    "to": [RECIPIENT],
    "cc": [],
    "channel": "CT",
    "crime_area": "terrorism",
    "purpose": "cross_checking",
    "priority": "normal",
    "case": None,
    "in_reply_to": None,
    "classification": "RESTREINT_UE",
    "handling": {
        "codes": ["H0", "H2"],
        "h3": {"no_third_party": False, "only_units": [], "use_until": None, "text": ""},
    },
    "evaluation": {"source": "B", "information": "2"},
    "subjects": {
        "individuals": [{"category": "suspect", "minor": False}],
        "legal_entities": 1,
        "special_categories": [],
        "justification": "",
    },
}

BODY: dict[str, Any] = {
    "text": "Request for checks on the person and company below (test vector).",
    "persons": [
        {
            "family_name": "VECTOR",
            "given_names": "Test",
            "birth_date": "1990-01-01",
            "nationality": "AL",
            "role": "suspect",
            "minor": False,
        }
    ],
    "organisations": [{"name": "Vector Trading Ltd", "country": "AT", "registration": "FN 1"}],
    "vehicles": [],
    "documents": [],
    "phones": [],
    "attachments": [],
}


def identities() -> Identities:
    """The vector units' keys, derived from the fixed seed."""
    return make_identities(
        [SENDER, RECIPIENT, OUTSIDER],
        not_before=NOW - timedelta(days=365),
        not_after=NOW + timedelta(days=365 * 20),
        seed=SEED,
    )


def domain_inputs() -> tuple[Header, Body]:
    header = Header.from_json(HEADER, source="vector header")
    body = Body.from_json(BODY, base_dir=ROOT, source="vector body")
    return header, body


def expected_header_bytes(header: Header, recorded: pb.Header) -> bytes:
    """The canonical header bytes for ``header`` with the recorded time, suite and digests."""
    wire = header_to_wire(header)
    wire.sent_at_us = recorded.sent_at_us
    wire.suite = recorded.suite
    wire.body_digest = recorded.body_digest
    wire.ciphertext_digest = recorded.ciphertext_digest
    wire.key_wraps_digest = recorded.key_wraps_digest
    return wire.SerializeToString(deterministic=True)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def negative_cases(envelope: SealedEnvelope) -> list[dict[str, str]]:
    """Tampered copies of ``envelope`` and the error each must raise."""
    wire = envelope.wire
    cases: list[tuple[str, pb.SealedEnvelope, str]] = []

    readdressed = pb.Header()
    readdressed.CopyFrom(envelope.wire_header)
    readdressed.to[:] = [OUTSIDER]
    tampered = pb.SealedEnvelope()
    tampered.CopyFrom(wire)
    tampered.header = readdressed.SerializeToString(deterministic=True)
    cases.append(("header re-addressed after signing", tampered, "ENV-BAD-SIGNATURE"))

    tampered = pb.SealedEnvelope()
    tampered.CopyFrom(wire)
    tampered.signatures[0].value = _flip(tampered.signatures[0].value, 7)
    cases.append(("signature byte flipped", tampered, "ENV-BAD-SIGNATURE"))

    tampered = pb.SealedEnvelope()
    tampered.CopyFrom(wire)
    tampered.body_ciphertext = _flip(tampered.body_ciphertext, 40)
    cases.append(("ciphertext byte flipped", tampered, "ENV-DIGEST-MISMATCH"))

    tampered = pb.SealedEnvelope()
    tampered.CopyFrom(wire)
    tampered.key_wraps[0].sealed_key = _flip(tampered.key_wraps[0].sealed_key, 3)
    cases.append(("wrapped key byte flipped", tampered, "ENV-DIGEST-MISMATCH"))

    if len(wire.signatures) > 1:
        for algorithm in ("ml-dsa-65", "ed25519"):
            tampered = pb.SealedEnvelope()
            tampered.CopyFrom(wire)
            kept = [s for s in tampered.signatures if s.algorithm != algorithm]
            del tampered.signatures[:]
            tampered.signatures.extend(kept)
            cases.append((f"{algorithm} half stripped", tampered, "ENV-BAD-SIGNATURE"))

    out = [
        {
            "name": name,
            "envelope": case.SerializeToString(deterministic=True).hex(),
            "error": code,
        }
        for name, case, code in cases
    ]
    truncated = envelope.raw[:100].hex()
    out.append({"name": "truncated", "envelope": truncated, "error": "ENV-MALFORMED"})
    return out


def make_vector(suite: Suite, ids: Identities) -> dict[str, Any]:
    header, body = domain_inputs()
    envelope = seal(
        header, body, keyring=ids.keyrings[SENDER], directory=ids.directory, now=NOW, suite=suite
    )
    return {
        "description": f"A {suite.id} envelope from {SENDER} to {RECIPIENT}; "
        f"keys derived from the seed with exchange.core.identities.make_identities.",
        "suite": suite.id,
        "seed": SEED.decode(),
        "now": NOW.isoformat(),
        "key_ids": {
            unit: sorted(c.key_id for c in ids.directory.keys[unit])
            for unit in (SENDER, RECIPIENT, OUTSIDER)
        },
        "header_json": HEADER,
        "body_json": BODY,
        "header_bytes": envelope.wire.header.hex(),
        "body_bytes": body_to_wire(body).SerializeToString(deterministic=True).hex(),
        "envelope": envelope.raw.hex(),
        "negative": negative_cases(envelope),
    }


def check_vector(vector: dict[str, Any], ids: Identities) -> list[str]:
    """What in ``vector`` no longer matches the current code (empty when nothing drifted)."""
    problems = []
    suite = suite_by_id(vector["suite"])
    now = datetime.fromisoformat(vector["now"])
    key_ids = {
        unit: sorted(c.key_id for c in ids.directory.keys[unit]) for unit in vector["key_ids"]
    }
    if key_ids != vector["key_ids"]:
        problems.append("key derivation from the seed changed (key ids differ)")
    if vector["header_json"] != HEADER or vector["body_json"] != BODY:
        problems.append("the vector inputs changed")
    header, body = domain_inputs()
    if body_to_wire(body).SerializeToString(deterministic=True).hex() != vector["body_bytes"]:
        problems.append("the body encoding changed")
    envelope = SealedEnvelope.from_bytes(bytes.fromhex(vector["envelope"]))
    if envelope.wire.header.hex() != vector["header_bytes"]:
        problems.append("the recorded envelope does not carry the recorded header bytes")
    if expected_header_bytes(header, envelope.wire_header).hex() != vector["header_bytes"]:
        problems.append("the header encoding changed")
    try:
        if verify(envelope, ids.directory, now) is not suite:
            problems.append("the envelope's suite changed")
        opened = open_envelope(
            envelope, keyring=ids.keyrings[RECIPIENT], directory=ids.directory, now=now
        )
        if opened.body != body or opened.header != header:
            problems.append("the envelope opens to something else")
    except EnvelopeError as error:
        problems.append(f"the recorded envelope no longer opens: {error}")
    for case in vector["negative"]:
        try:
            tampered = SealedEnvelope.from_bytes(bytes.fromhex(case["envelope"]))
            verify(tampered, ids.directory, now)
        except EnvelopeError as error:
            if error.code != case["error"]:
                problems.append(f"{case['name']}: now {error.code}, recorded {case['error']}")
        else:
            problems.append(f"{case['name']}: the tampered envelope now verifies")
    return problems


def vector_path(suite: Suite) -> Path:
    return VECTORS / f"envelope-{suite.id}.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="report drift, write nothing")
    args = parser.parse_args()
    ids = identities()
    drifted = False
    for suite in SUITES.values():
        path = vector_path(suite)
        recorded = json.loads(path.read_text()) if path.exists() else None
        problems = check_vector(recorded, ids) if recorded else ["no vector recorded"]
        if not problems:
            print(f"{path.relative_to(ROOT)}: up to date")
            continue
        drifted = True
        for problem in problems:
            print(f"{path.relative_to(ROOT)}: {problem}", file=sys.stderr)
        if not args.check:
            VECTORS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(make_vector(suite, ids), indent=2) + "\n")
            print(f"{path.relative_to(ROOT)}: regenerated")
    return 1 if drifted and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
