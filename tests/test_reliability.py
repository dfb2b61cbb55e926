"""Reliability under ``kill -9``: a real hub and real nodes, killed and started again.

The hub runs as ``exchange hub serve`` on SQLite and the nodes as ``exchange node run``,
each in its own process. A process is killed with SIGKILL (no drain, no clean close)
in the middle of a load, then started again on the same port, database and home. The
tests check what DESIGN.md section 2 promises:

* nothing accepted is lost: a message that got an evidence is in the hub's store and
  reaches every recipient's inbox once; one without an evidence is retried by its
  outbox until it is accepted, once;
* delivery is at least once and exactly once in effect: a node killed before it
  acknowledged gets its deliveries again and stores each once;
* nothing is half-written: after the kill, every message in the hub's store has its
  deliveries, its log entry and its signed accepted evidence, and the log has no gap.

Messages are sealed in the test and queued with :meth:`NodeStore.enqueue` before the
nodes start (the node's outbox sends them, as it would after ``exchange send``).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exchange.core.body import Body
from exchange.core.envelope import seal
from exchange.core.evidence import verify_evidence
from exchange.core.header import Handling, Header, Subjects
from exchange.core.keys import Directory
from exchange.core.merkle import InMemoryLeaves, MerkleTree, leaf_hash, root_at
from exchange.core.vocab import (
    Channel,
    Classification,
    CrimeArea,
    HandlingCode,
    Kind,
    Priority,
    Purpose,
)
from exchange.errors import ExchangeError
from exchange.pki import init_pki, load_directory, load_keyring
from exchange.wire.v1 import exchange_pb2 as pb
from nodes.store import NodeStore
from nodes.testing import wait_for, write_policies

pytestmark = pytest.mark.timeout(240)

SENDERS = ("AL.CTD", "RS.CTU", "AT.ENU")
RECEIVER = "EU.EUROPOL"
UNITS = (*SENDERS, RECEIVER)
EXE = str(Path(sys.executable).parent / "exchange")
#: the children log warnings and errors only (their logs are kept in the test's folder)
CHILD_ENV = {**os.environ, "EXCHANGE_LOG_LEVEL": "WARNING"}
#: how long a process may take to start, and a load to settle after a restart
START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 120.0

#: a line of a child's log that reports an error
ERROR_LINE = re.compile(r'"level": "(error|critical)"|Traceback')
#: the log event each kind of evidence is recorded with
EVENTS_FOR_EVIDENCE = {
    "accepted": {"accepted", "forwarded"},
    "refused": {"refused"},
    "delivered": {"delivered", "relayed"},
    "read": {"acknowledged"},
}
EVIDENCED_EVENTS = set().union(*EVENTS_FOR_EVIDENCE.values())


# --------------------------------------------------------------------------- setting up


@dataclass(frozen=True)
class Pki:
    certs: Path
    policies: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Keys, certificates and policies for the four units (read-only for the tests)."""
    root = tmp_path_factory.mktemp("reliability-pki")
    policies = write_policies(root / "policies", UNITS)
    init_pki(root / "certs", list(UNITS), suites=("classic-2026",))
    return Pki(certs=root / "certs", policies=policies)


def _header(message_id: str, sender: str, to: tuple[str, ...], cc: tuple[str, ...]) -> Header:
    return Header(
        id=message_id,
        kind=Kind.REQUEST,
        sender=sender,
        to=to,
        cc=cc,
        channel=Channel.CT,
        crime_area=CrimeArea.TERRORISM,
        purpose=Purpose.CROSS_CHECKING,
        priority=Priority.NORMAL,
        case=None,
        in_reply_to=None,
        classification=Classification.RESTREINT_UE,
        handling=Handling(codes=frozenset({HandlingCode.H0})),
        evaluation=None,
        subjects=Subjects(),
    )


def queue_messages(
    pki: Pki, homes: dict[str, Path], total: int, *, prefix: str, cc_every: int = 0
) -> dict[str, tuple[str, ...]]:
    """Seal ``total`` messages to the receiver, spread over the senders' outboxes.

    With ``cc_every``, every n-th message is also addressed (cc) to the next sender,
    so some messages have two recipients on two nodes. Returns {message id: recipients}.
    """
    directory = load_directory(pki.certs)
    now = datetime.now(UTC)
    senders = [unit for unit in SENDERS if unit in homes]
    keyrings = {unit: load_keyring(pki.certs, unit) for unit in senders}
    stores = {unit: NodeStore.open(homes[unit], unit=unit, create=True) for unit in senders}
    expected: dict[str, tuple[str, ...]] = {}
    try:
        for i in range(total):
            sender = senders[i % len(senders)]
            cc: tuple[str, ...] = ()
            if cc_every and i % cc_every == 0 and len(senders) > 1:
                cc = (senders[(i + 1) % len(senders)],)
            message_id = f"{prefix}-{i:05d}"
            envelope = seal(
                _header(message_id, sender, (RECEIVER,), cc),
                Body(text=f"reliability test message {i} from {sender}"),
                keyring=keyrings[sender],
                directory=directory,
                now=now,
            )
            stores[sender].enqueue(envelope, operation="submit", now_us=0)
            expected[message_id] = (RECEIVER, *cc)
    finally:
        for store in stores.values():
            store.close()
    return expected


def free_port() -> int:
    """A port free on 127.0.0.1, below the kernel's ephemeral range.

    The hub comes back on the port it had, and the nodes dial it all the while it is
    down. A port out of the ephemeral range cannot meanwhile become the local end of
    an outgoing connection (a node's own dial could otherwise connect to itself).
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port below the ephemeral range")


class Processes:
    """The hub and nodes of one test as child processes; :meth:`close` kills what is left."""

    def __init__(self, root: Path, pki: Pki) -> None:
        self.root = root
        self.pki = pki
        self.hub_db = root / "hub.db"
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.hub_port = free_port()
        self._starts = 0

    def home(self, unit: str) -> Path:
        return self.root / "nodes" / unit

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        assert name not in self.running, f"{name} is already running"
        self._starts += 1
        with (self.root / f"{name}.log").open("ab") as log:
            log.write(f"--- start {self._starts} ---\n".encode())
            log.flush()
            process = subprocess.Popen(
                [EXE, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=CHILD_ENV,
            )
        self.running[name] = process
        return process

    def start_hub(self) -> None:
        """Start the hub on the test's port; returns once it serves."""
        port_file = self.root / f"hub-{self._starts + 1}.port"
        process = self._spawn(
            "hub",
            [
                "hub", "serve",
                "--listen", f"127.0.0.1:{self.hub_port}",
                "--port-file", str(port_file),
                "--certs", str(self.pki.certs),
                "--policies", str(self.pki.policies),
                "--db", f"sqlite:///{self.hub_db}",
                "--grace", "1",
            ],
        )  # fmt: skip

        def serving() -> str | None:
            if process.poll() is not None:
                raise AssertionError(
                    f"the hub exited with {process.returncode}: {self.tail('hub')}"
                )
            return (port_file.exists() and port_file.read_text().strip()) or None

        port = int(wait_for(serving, timeout=START_TIMEOUT, what="the hub serving"))
        assert port == self.hub_port

    def start_node(self, unit: str) -> subprocess.Popen[bytes]:
        return self._spawn(
            unit,
            [
                "node", "run",
                "--unit", unit,
                "--hub", f"127.0.0.1:{self.hub_port}",
                "--certs", str(self.pki.certs),
                "--home", str(self.home(unit)),
            ],
        )  # fmt: skip

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and reap it: no drain, no clean close."""
        process = self.running[name]
        assert process.poll() is None, f"{name} died before the kill: {self.tail(name)}"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        del self.running[name]

    def check_alive(self) -> None:
        for name, process in self.running.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}: {self.tail(name)}")

    def assert_no_errors(self) -> None:
        """No child logged an error (the hub checks its log against its signed heads)."""
        for path in sorted(self.root.glob("*.log")):
            text = path.read_text(errors="replace")
            found = ERROR_LINE.search(text)
            assert found is None, f"{path.name}: {text[found.start() : found.start() + 2000]}"

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.root / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Kill every child still running (SIGKILL) and reap it."""
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        self.running.clear()


@pytest.fixture
def processes(tmp_path: Path, pki: Pki) -> Iterator[Processes]:
    children = Processes(tmp_path, pki)
    try:
        yield children
    finally:
        children.close()


# --------------------------------------------------------------------------- reading stores


def query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a SQLite file ([] while the file or its tables do not exist yet)."""
    if not path.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
            return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return []
        raise


def count(path: Path, sql: str, *args: Any) -> int:
    rows = query(path, sql, *args)
    return int(rows[0][0]) if rows else 0


def snapshot(db: Path, folder: Path) -> Path:
    """A copy of a SQLite store as a killed process left it (file and write-ahead log).

    The checks read the copy, so the restarted process recovers the original itself.
    """
    folder.mkdir(parents=True)
    for suffix in ("", "-wal"):
        source = db.with_name(db.name + suffix)
        if source.exists():
            shutil.copyfile(source, folder / source.name)
    return folder / db.name


def node_db(children: Processes, unit: str) -> Path:
    return children.home(unit) / "node.db"


def inbox_ids(children: Processes, unit: str) -> list[str]:
    return [
        row[0]
        for row in query(
            node_db(children, unit), "SELECT message_id FROM inbox WHERE addressee = ?", unit
        )
    ]


def outbox_states(children: Processes, unit: str) -> dict[str, str]:
    rows = query(node_db(children, unit), "SELECT message_id, state FROM outbox")
    return {str(row[0]): str(row[1]) for row in rows}


def accepted_evidence_ids(children: Processes, unit: str) -> set[str]:
    """Message ids for which ``unit``'s node holds the hub's accepted evidence."""
    return {
        row[0]
        for row in query(
            node_db(children, unit),
            "SELECT message_id FROM evidences WHERE kind = 'accepted' AND unit = ?",
            unit,
        )
    }


def wait_until(
    children: Processes, condition: Callable[[], Any], *, timeout: float, what: str
) -> Any:
    """:func:`wait_for`, failing at once (with its log) when a child died meanwhile."""

    def check() -> Any:
        children.check_alive()
        return condition()

    return wait_for(check, timeout=timeout, interval=0.02, what=what)


def hub_db_problems(path: Path, directory: Directory) -> list[str]:
    """Everything half-written in the hub's store; [] when it is whole.

    * the log's indexes run from 0 without a gap, and every signed tree head matches
      the entries it covers;
    * every message has exactly one accepted log entry (at its ``log_index``), exactly
      one accepted evidence, and one delivery per recipient;
    * every evidence verifies, names its row's message, kind and log index, and
      carries the leaf hash of the entry at that index, whose event matches;
    * a delivery is pending without a delivered evidence, delivered with exactly one;
    * every log entry about a message is backed by its evidence, and by one only.
    """
    problems: list[str] = []
    log = query(path, "SELECT idx, kind, message_id, entry FROM log_entries ORDER BY idx")
    indexes = [row[0] for row in log]
    if indexes != list(range(len(indexes))):
        missing = sorted(set(range(max(indexes, default=-1) + 1)) - set(indexes))
        problems.append(f"log indexes are not contiguous from 0: missing {missing[:10]}")
    entries = {row[0]: (row[1], row[2]) for row in log}
    leaves = {row[0]: leaf_hash(row[3]) for row in log}
    tree = MerkleTree(InMemoryLeaves(leaf_hash(row[3]) for row in log))
    for size, root in query(path, "SELECT size, root_hash FROM tree_heads ORDER BY id"):
        if size > len(log) or root_at(tree, size) != root:
            problems.append(f"the signed tree head of size {size} does not match the log")

    messages = query(path, "SELECT id, recipients, log_index FROM messages")
    deliveries: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for message_id, addressee, state in query(
        path, "SELECT message_id, addressee, state FROM deliveries"
    ):
        deliveries[message_id].append((addressee, state))
    evidences = query(
        path, "SELECT message_id, kind, unit, log_index, evidence FROM evidences ORDER BY id"
    )
    by_kind: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for message_id, kind, unit, log_index, _raw in evidences:
        by_kind[(message_id, kind)].append((unit, log_index))
    accepted_entries = Counter(
        message_id for kind, message_id in entries.values() if kind == "accepted"
    )

    known = {row[0] for row in messages}
    for message_id, recipients, log_index in messages:
        if entries.get(log_index) != ("accepted", message_id):
            problems.append(f"{message_id}: no accepted log entry at index {log_index}")
        if accepted_entries[message_id] != 1:
            problems.append(
                f"{message_id}: {accepted_entries[message_id]} accepted log entries, not 1"
            )
        accepted = by_kind.get((message_id, "accepted"), [])
        if [index for _unit, index in accepted] != [log_index]:
            problems.append(f"{message_id}: accepted evidences {accepted}, not one at {log_index}")
        addressed = sorted(recipients.split(","))
        if sorted(a for a, _state in deliveries.get(message_id, [])) != addressed:
            problems.append(
                f"{message_id}: deliveries {deliveries.get(message_id)}, recipients {addressed}"
            )
    for message_id, rows in deliveries.items():
        if message_id not in known:
            problems.append(f"{message_id}: deliveries without a message")
        for addressee, state in rows:
            delivered = [
                u for u, _i in by_kind.get((message_id, "delivered"), []) if u == addressee
            ]
            if (state == "pending" and delivered) or (state == "delivered" and len(delivered) != 1):
                problems.append(
                    f"{message_id} to {addressee}: state {state} with "
                    f"{len(delivered)} delivered evidences"
                )

    now = datetime.now(UTC)
    backed: set[int] = set()
    for message_id, kind, unit, log_index, raw in evidences:
        backed.add(log_index)
        where = f"{kind} evidence of {message_id} for {unit}"
        try:
            view = verify_evidence(pb.Evidence.FromString(raw), directory, now)
        except ExchangeError as error:
            problems.append(f"{where}: does not verify ({error})")
            continue
        if (view.message_id, view.kind.value, view.unit, view.log_index) != (
            message_id,
            kind,
            unit,
            log_index,
        ):
            problems.append(f"{where}: the signed statement names something else")
        event, entry_message = entries.get(log_index, ("", None))
        if entry_message != message_id or event not in EVENTS_FOR_EVIDENCE.get(kind, ()):
            problems.append(f"{where}: log entry {log_index} is {event} of {entry_message}")
        elif view.log_leaf_hash != leaves[log_index]:
            problems.append(f"{where}: leaf hash differs from log entry {log_index}")
        if kind != "refused" and message_id not in known:
            problems.append(f"{where}: no such message")
    shared = [index for index, n in Counter(row[3] for row in evidences).items() if n > 1]
    if shared:
        problems.append(f"log entries {shared[:10]} back more than one evidence")
    for index, (event, message_id) in entries.items():
        if message_id and index not in backed and event in EVIDENCED_EVENTS:
            problems.append(f"log entry {index} ({event} of {message_id}) has no evidence")
    return problems


def assert_hub_db_whole(path: Path, directory: Directory) -> None:
    problems = hub_db_problems(path, directory)
    assert not problems, f"{len(problems)} problems, e.g.:\n" + "\n".join(problems[:20])


# --------------------------------------------------------------------------- the hub killed


def hub_killed_during_load(
    children: Processes, pki: Pki, total: int, kill_points: tuple[int, ...]
) -> None:
    """Send ``total`` messages from three nodes; SIGKILL the hub at each of ``kill_points``.

    The hub is killed once it has stored that many messages, its store is checked as the
    crash left it, and it is started again on the same port with the same database.
    Then the load must settle: every message accepted once, delivered once.
    """
    began = time.monotonic()
    directory = load_directory(pki.certs)
    expected = queue_messages(
        pki, {unit: children.home(unit) for unit in SENDERS}, total, prefix="load", cc_every=10
    )
    addressed = {
        unit: {m for m, recipients in expected.items() if unit in recipients} for unit in UNITS
    }
    hub_db = children.hub_db
    children.start_hub()
    for unit in (RECEIVER, *SENDERS):
        children.start_node(unit)

    for kill, kill_at in enumerate(kill_points, 1):
        wait_until(
            children,
            lambda: count(hub_db, "SELECT count(*) FROM messages") >= kill_at,  # noqa: B023
            timeout=START_TIMEOUT,
            what=f"{kill_at} messages stored at the hub",
        )
        children.kill("hub")
        # The store as the crash left it (SQLite recovers its WAL when opened).
        crashed = snapshot(hub_db, children.root / f"hub-after-kill-{kill}")
        stored = {row[0] for row in query(crashed, "SELECT id FROM messages")}
        assert kill_at <= len(stored) < total, "the kill did not fall in the middle of the load"
        assert_hub_db_whole(crashed, directory)
        # No evidence without a commit: each one a sender holds is for a stored message.
        # (The senders run on, but with the hub gone no new evidence can reach them.)
        receipted = set().union(*(accepted_evidence_ids(children, u) for u in SENDERS))
        assert receipted <= stored, f"evidence, but not stored: {sorted(receipted - stored)[:9]}"
        print(
            f"{time.monotonic() - began:.1f} s: hub killed with {len(stored)} of {total} "
            f"stored, {len(receipted)} receipted"
        )
        children.start_hub()  # same port, same database
    restarted = time.monotonic()

    def settled() -> bool:
        unacknowledged = count(hub_db, "SELECT count(*) FROM deliveries WHERE state != 'delivered'")
        return (
            all("queued" not in outbox_states(children, u).values() for u in SENDERS)
            and all(len(inbox_ids(children, u)) >= len(addressed[u]) for u in UNITS)
            and count(hub_db, "SELECT count(*) FROM messages") == total
            and unacknowledged == 0  # every delivery acknowledged: the stores are final
        )

    wait_until(children, settled, timeout=SETTLE_TIMEOUT, what="the load to settle")
    print(f"settled {time.monotonic() - restarted:.1f} s after the last restart")

    # every outbox item ends accepted (none failed or refused); the kills made some retry
    outboxes = {
        unit: query(node_db(children, unit), "SELECT message_id, state, attempts FROM outbox")
        for unit in SENDERS
    }
    items = [row for rows in outboxes.values() for row in rows]
    assert sorted(row[0] for row in items) == sorted(expected)
    assert Counter(row[1] for row in items) == {"accepted": total}
    assert max(row[2] for row in items) > 1, "no submission was retried"
    # the hub holds each message once, with one delivery per recipient
    assert sorted(row[0] for row in query(hub_db, "SELECT id FROM messages")) == sorted(expected)
    deliveries: dict[str, list[str]] = defaultdict(list)
    for message_id, addressee in query(hub_db, "SELECT message_id, addressee FROM deliveries"):
        deliveries[message_id].append(addressee)
    assert {m: sorted(a) for m, a in deliveries.items()} == {
        m: sorted(r) for m, r in expected.items()
    }
    # each recipient's inbox holds each message addressed to it exactly once
    for unit in UNITS:
        received = inbox_ids(children, unit)
        assert len(received) == len(set(received)), f"{unit} stored a message twice"
        assert set(received) == addressed[unit]
    # each sender holds exactly the hub's one accepted evidence of each of its messages,
    # and each of those messages is in the receiver's inbox
    hub_evidences = dict(
        query(hub_db, "SELECT message_id, evidence FROM evidences WHERE kind = 'accepted'")
    )
    for unit in SENDERS:
        held = query(
            node_db(children, unit),
            "SELECT message_id, evidence FROM evidences WHERE kind = 'accepted' AND unit = ?",
            unit,
        )
        assert len(held) == len(outboxes[unit])
        assert dict(held) == {m: hub_evidences[m] for m, _s, _a in outboxes[unit]}
        assert {m for m, _e in held} <= addressed[RECEIVER]
    assert_hub_db_whole(hub_db, directory)
    children.assert_no_errors()


def test_hub_killed_during_load_loses_nothing_accepted(processes: Processes, pki: Pki) -> None:
    """1,000 messages from three nodes; the hub is SIGKILLed after 300 and restarted."""
    hub_killed_during_load(processes, pki, total=1000, kill_points=(300,))


def test_hub_killed_three_times_leaves_nothing_half_written(processes: Processes, pki: Pki) -> None:
    """300 messages; the hub is SIGKILLed after 60, 150 and 240, its store checked each time."""
    hub_killed_during_load(processes, pki, total=300, kill_points=(60, 150, 240))


# --------------------------------------------------------------------------- a node killed


def test_node_killed_with_unacknowledged_deliveries_gets_them_again_once(
    processes: Processes, pki: Pki
) -> None:
    """200 messages wait at the hub; the receiving node is SIGKILLed while taking them in.

    At the kill it has stored some deliveries the hub has no acknowledgement of, and the
    hub holds others it has not stored yet. Restarted with the same home, it gets every
    unacknowledged delivery again: each message ends in its inbox once, acknowledged
    once at the hub (one delivered log entry and evidence), none missing.
    """
    children = processes
    total = 200
    directory = load_directory(pki.certs)
    sender = SENDERS[0]
    expected = queue_messages(pki, {sender: children.home(sender)}, total, prefix="redeliver")
    hub_db, receiver_db = children.hub_db, node_db(children, RECEIVER)
    children.start_hub()
    children.start_node(sender)
    wait_until(
        children,
        lambda: count(hub_db, "SELECT count(*) FROM deliveries WHERE state = 'pending'") == total,
        timeout=START_TIMEOUT,
        what=f"{total} deliveries waiting at the hub",
    )

    children.start_node(RECEIVER)

    def taking_in() -> bool:
        """At least 20 deliveries stored, and at least 3 of them unacknowledged at the hub."""
        stored = set(inbox_ids(children, RECEIVER))
        assert len(stored) < total, "the receiver took everything in before the kill"
        pending = query(hub_db, "SELECT message_id FROM deliveries WHERE state = 'pending'")
        return len(stored) >= 20 and len(stored & {row[0] for row in pending}) >= 3

    wait_until(children, taking_in, timeout=START_TIMEOUT, what="the receiver taking in")
    children.kill(RECEIVER)

    crashed = snapshot(receiver_db, children.root / "receiver-after-kill")
    stored_at_kill = {row[0] for row in query(crashed, "SELECT message_id FROM inbox")}
    pending_at_kill = {
        row[0] for row in query(hub_db, "SELECT message_id FROM deliveries WHERE state='pending'")
    }
    # the node held unacknowledged deliveries: some stored, some not even that
    assert pending_at_kill - stored_at_kill, "the node had stored everything before the kill"
    assert stored_at_kill & pending_at_kill, "the node had no stored, unacknowledged delivery"
    # nothing half-written in the node either: each stored delivery has its ack and evidence
    acks = query(crashed, "SELECT message_id FROM acks WHERE read = 0")
    assert sorted(row[0] for row in acks) == sorted(stored_at_kill)
    accepted_here = {
        row[0] for row in query(crashed, "SELECT message_id FROM evidences WHERE kind = 'accepted'")
    }
    assert accepted_here == stored_at_kill
    assert_hub_db_whole(hub_db, directory)
    print(
        f"receiver killed with {len(stored_at_kill)} stored, "
        f"{len(stored_at_kill & pending_at_kill)} of them unacknowledged at the hub, "
        f"{len(pending_at_kill - stored_at_kill)} not stored"
    )

    children.start_node(RECEIVER)  # same home

    def settled() -> bool:
        return (
            count(hub_db, "SELECT count(*) FROM deliveries WHERE state = 'delivered'") == total
            and count(receiver_db, "SELECT count(*) FROM acks WHERE sent = 0") == 0
        )

    wait_until(children, settled, timeout=SETTLE_TIMEOUT, what="every delivery acknowledged")

    received = inbox_ids(children, RECEIVER)
    assert len(received) == len(set(received)) == total
    assert set(received) == set(expected)
    # acknowledged once: one delivered entry in the hub's log per message, and the node
    # keeps exactly the hub's one delivered evidence of each
    delivered_entries = Counter(
        row[0] for row in query(hub_db, "SELECT message_id FROM log_entries WHERE kind='delivered'")
    )
    assert delivered_entries == dict.fromkeys(expected, 1)
    hub_evidences = dict(
        query(hub_db, "SELECT message_id, evidence FROM evidences WHERE kind = 'delivered'")
    )
    node_evidences = query(
        receiver_db, "SELECT message_id, evidence FROM evidences WHERE kind = 'delivered'"
    )
    assert len(node_evidences) == total
    assert dict(node_evidences) == hub_evidences
    acks = query(receiver_db, "SELECT message_id, error FROM acks")
    assert sorted(row[0] for row in acks) == sorted(expected)  # one ack each, none failed
    assert [row for row in acks if row[1]] == []
    assert_hub_db_whole(hub_db, directory)
    children.assert_no_errors()
