"""``exchange bench log``: how fast the exchange log appends, proves and verifies.

The entries are realistic canonical log entries (:class:`exchange.core.log_entry.LogEntry`,
about 380 bytes as the hub writes them: a mix of accepted, delivered, acknowledged,
refused and forwarded events with UUID message ids, unit ids, counts and the policy
hash). Measured in one run:

* ``appends_per_s``: leaf hashes appended to a :class:`MerkleFrontier` (what the hub
  does per committed entry), over the whole log;
* ``tree_build_s``: building the :class:`MerkleTree` subtree cache once;
* ``inclusion_proofs_per_s`` / ``inclusion_verifications_per_s``: proofs for random
  entries of the full tree, generated, then verified;
* ``consistency_proofs_per_s`` / ``consistency_verifications_per_s``: from random
  older sizes to the full tree;
* ``verify_per_s``: full verification from raw entry bytes (:func:`verify_log`),
  beside ``raw_sha256_per_s``, plain ``hashlib.sha256`` over the same bytes, in
  alternating rounds (best round kept: these machines are shared and noisy), with
  ``ratio_verify_to_raw_sha256``. Verification makes two SHA-256 calls per entry
  (the leaf, and on average one 65-byte node) where the baseline makes one, so about
  0.5 is the ceiling.
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from exchange.core.log_entry import LogEntry, LogEvent
from exchange.core.merkle import (
    InMemoryLeaves,
    MerkleFrontier,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    root_at,
    verify_consistency,
    verify_inclusion,
    verify_log,
)

UNITS = ("AL.CTD", "EU.EUROPOL", "RS.CTU", "ME.ARO", "AT.ENU", "DE.ENU", "MK.CTS", "BA.DKPT")
CRIME_AREAS = ("terrorism", "drug_trafficking", "trafficking_in_human_beings", "cybercrime")
#: events in the proportions a busy day gives: each message is accepted once,
#: delivered and read by its recipients, now and then refused or forwarded
EVENT_MIX = (
    (LogEvent.ACCEPTED, 30),
    (LogEvent.DELIVERED, 35),
    (LogEvent.ACKNOWLEDGED, 25),
    (LogEvent.REFUSED, 5),
    (LogEvent.FORWARDED, 5),
)
#: proofs generated per kind when no time budget is given
PROOF_SAMPLES = 20_000


def sample_entries(count: int, seed: int = 2026) -> list[bytes]:
    """``count`` distinct canonical entries, the same for the same seed."""
    rng = random.Random(seed)
    events = [event for event, weight in EVENT_MIX for _ in range(weight)]
    policy_hash = hashlib.sha256(b"bench policy").hexdigest()
    start_us = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
    entries = []
    for i in range(count):
        event = rng.choice(events)
        sender = rng.choice(UNITS)
        recipients = tuple(rng.sample([u for u in UNITS if u != sender], rng.randint(1, 3)))
        entries.append(
            LogEntry(
                event=event,
                hub_time_us=start_us + i * 1_000 + rng.randrange(1_000),
                message_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                kind=rng.choice(("request", "reply", "information")),
                sender=sender,
                recipients=recipients,
                channel="ct" if rng.random() < 0.3 else "soc",
                crime_area=rng.choice(CRIME_AREAS),
                priority=rng.choice(("normal", "normal", "high", "urgent")),
                individuals=rng.randint(0, 4),
                legal_entities=rng.randint(0, 2),
                unit=recipients[0] if event is not LogEvent.ACCEPTED else "",
                rules=("DP-STRATEGIC-PERSONAL-DATA",) if event is LogEvent.REFUSED else (),
                policy_hash=policy_hash,
            ).encode()
        )
    return entries


def _best_time(fn: Callable[[], object], rounds: int, seconds: float | None) -> float:
    """The fastest of ``rounds`` runs of ``fn`` (fewer when ``seconds`` runs out; one at least)."""
    deadline = None if seconds is None else time.perf_counter() + seconds
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        if deadline is not None and time.perf_counter() >= deadline:
            break
    return best


def _per_second(fn: Callable[[int], object], count: int, seconds: float | None) -> float:
    """Calls of ``fn(i)`` per second, for ``i`` up to ``count`` or until ``seconds`` ran out."""
    deadline = None if seconds is None else time.perf_counter() + seconds
    done = 0
    start = time.perf_counter()
    while done < count:
        for i in range(done, min(count, done + 256)):
            fn(i)
        done = min(count, done + 256)
        if deadline is not None and time.perf_counter() >= deadline:
            break
    return done / (time.perf_counter() - start)


def run(entries: int, seconds_budget: float | None = None) -> dict[str, Any]:
    """Benchmark a log of ``entries`` entries; returns the figures as JSON-ready data.

    Without a budget every full pass runs three times (best kept) and each proof kind
    runs :data:`PROOF_SAMPLES` times. With ``seconds_budget`` the passes and proofs
    stop early to stay near it (building the sample entries is not counted).
    """
    if entries < 2:
        raise ValueError("the log benchmark needs at least 2 entries")
    budget = seconds_budget
    rounds = 3

    def share(fraction: float) -> float | None:
        return None if budget is None else budget * fraction

    started = time.perf_counter()
    raw = sample_entries(entries)
    build_entries_s = time.perf_counter() - started

    source = InMemoryLeaves.from_entries(raw)
    leaves: Sequence[bytes] = source.leaves(0, entries)

    def append_all() -> MerkleFrontier:
        frontier = MerkleFrontier()
        append = frontier.append
        for leaf in leaves:
            append(leaf)
        return frontier

    append_s = _best_time(append_all, rounds, share(0.15))

    build_started = time.perf_counter()
    tree = MerkleTree(source)
    tree.sync()
    tree_build_s = time.perf_counter() - build_started
    root = root_at(tree, entries)

    # verification and its raw baseline, alternating so both see the same machine
    sha = hashlib.sha256
    verified: list[tuple[int, bytes]] = []

    def raw_sha256() -> None:
        for entry in raw:
            sha(entry).digest()

    def verify_all() -> None:
        verified.append(verify_log(raw))

    raw_best = verify_best = float("inf")
    deadline = None if budget is None else time.perf_counter() + budget * 0.4
    for _ in range(rounds):
        raw_best = min(raw_best, _best_time(raw_sha256, 1, None))
        verify_best = min(verify_best, _best_time(verify_all, 1, None))
        if deadline is not None and time.perf_counter() >= deadline:
            break
    if any(result != (entries, root) for result in verified):
        raise AssertionError("verify_log disagrees with the subtree cache")  # pragma: no cover

    rng = random.Random(7)
    samples = PROOF_SAMPLES
    indexes = [rng.randrange(entries) for _ in range(samples)]
    old_sizes = [rng.randrange(1, entries) for _ in range(samples)]
    inclusion: list[list[bytes]] = [[] for _ in range(samples)]
    consistency: list[list[bytes]] = [[] for _ in range(samples)]

    def prove_inclusion(i: int) -> None:
        inclusion[i] = inclusion_proof(tree, indexes[i], entries)

    def check_inclusion(i: int) -> None:
        if not verify_inclusion(leaves[indexes[i]], indexes[i], entries, inclusion[i], root):
            raise AssertionError(f"inclusion proof {indexes[i]} fails")  # pragma: no cover

    def prove_consistency(i: int) -> None:
        consistency[i] = consistency_proof(tree, old_sizes[i], entries)

    old_roots = [b""] * samples

    def check_consistency(i: int) -> None:
        if not verify_consistency(old_sizes[i], entries, old_roots[i], root, consistency[i]):
            raise AssertionError(f"consistency proof {old_sizes[i]} fails")  # pragma: no cover

    inclusion_rate = _per_second(prove_inclusion, samples, share(0.1))
    proved = sum(1 for p in inclusion if p)
    inclusion_check_rate = _per_second(check_inclusion, proved, share(0.1))
    consistency_rate = _per_second(prove_consistency, samples, share(0.1))
    checked = sum(1 for p in consistency if p)
    for i in range(checked):
        old_roots[i] = root_at(tree, old_sizes[i])
    consistency_check_rate = _per_second(check_consistency, checked, share(0.1))

    mean_bytes = sum(len(e) for e in raw) / entries
    return {
        "benchmark": "log",
        "entries": entries,
        "entry_bytes_mean": round(mean_bytes, 1),
        "seconds_budget": seconds_budget,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "root_hash": root.hex(),
        "build_entries_s": round(build_entries_s, 3),
        "appends_per_s": round(entries / append_s, 1),
        "tree_build_s": round(tree_build_s, 3),
        "inclusion_proofs_per_s": round(inclusion_rate, 1),
        "inclusion_verifications_per_s": round(inclusion_check_rate, 1),
        "inclusion_proof_hashes_mean": round(sum(map(len, inclusion[:proved])) / proved, 2),
        "consistency_proofs_per_s": round(consistency_rate, 1),
        "consistency_verifications_per_s": round(consistency_check_rate, 1),
        "consistency_proof_hashes_mean": round(sum(map(len, consistency[:checked])) / checked, 2),
        "verify_per_s": round(entries / verify_best, 1),
        "raw_sha256_per_s": round(entries / raw_best, 1),
        "ratio_verify_to_raw_sha256": round(raw_best / verify_best, 3),
        "verify_mb_per_s": round(entries * mean_bytes / verify_best / 1e6, 1),
        "total_s": round(time.perf_counter() - started, 3),
    }
