"""``exchange bench exchange``: the real hub under load from real nodes, beside a raw echo.

A hub process (``exchange hub serve``) with mutual TLS and the chosen store; N units
with their own certificates submit pre-sealed envelopes at a given concurrency and
subscribe to their deliveries, acknowledging each as a node does. In the same run, a
plain unary echo server with the same TLS certificates takes the same payloads over the
same kind of channels at the same concurrency: the ratio of the two is the figure to
compare, since absolute rates move with whatever else runs on the machine.

Beside the rates, the CPU time the hub (and this load generator) used per message, and
the echo server (and client) per call: on a shared machine those move far less than the
rates do, so they tell whether a change made the hub cheaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import make_url, text

from exchange.bench.echo import ECHO_METHOD
from exchange.bench.envelope import sample_message
from exchange.core.envelope import seal
from exchange.core.suites import suite_by_id
from exchange.core.vocab import Channel
from exchange.errors import InputError
from exchange.hub.server import raise_open_files_limit
from exchange.pki import Validity, init_pki, load_directory, load_keyring, load_tls_material
from exchange.pki.authority import CertificateAuthority, locked
from exchange.pki.files import write_certificate, write_private_key
from exchange.pki.layout import PkiLayout, Role
from exchange.store.database import make_engine
from exchange.wire.v1 import exchange_pb2 as pb
from exchange.wire.v1 import exchange_pb2_grpc as pb_grpc
from nodes.client import acknowledge_stream, submit_stream

POLICY = "limits:\n  max_envelope_bytes: 53477376\ncrypto:\n  minimum_suite: classic-2026\n"


def unit_ids(count: int, prefix: str = "N") -> list[str]:
    return [f"BX.{prefix}{i:04d}" for i in range(1, count + 1)]


def write_registry(folder: Path, units: list[str]) -> None:
    """A registry of bench units: member states on SIENA, cleared for everything."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["units:"]
    for unit in units:
        lines += [
            f"  - id: {unit}",
            f"    name: Benchmark unit {unit}",
            "    status: member_state",
            "    channels: [SIENA]",
            "    clearance: CONFIDENTIEL_UE",
            "    relay: null",
        ]
    (folder / "registry.yaml").write_text("\n".join(lines) + "\n")
    (folder / "policy.yaml").write_text(POLICY)


class _RegisterOnceAuthority(CertificateAuthority):
    """The CA, writing its register once at the end rather than after every certificate."""

    def save_state(self) -> None:
        pass


def provision_idle_nodes(certs: Path, units: list[str]) -> None:
    """TLS identities for idle nodes: all a node needs to authenticate and subscribe.

    ``init_pki`` would also make every unit's keys, and it rewrites the CA register
    after each certificate (quadratic: minutes for a thousand units). An idle node
    sends and opens nothing, so it gets a TLS certificate of its own only, all of them
    on one reused ECDSA key, and the register is written once.
    """
    layout = PkiLayout(certs)
    start, end = Validity.of(None).tls()
    key = ec.generate_private_key(ec.SECP256R1())
    with locked(layout):
        ca = _RegisterOnceAuthority.open(layout)
        for unit in units:
            write_private_key(layout.key_path(unit, Role.TLS), key)
            certificate = ca.issue(
                unit, Role.TLS, key.public_key(), not_before=start, not_after=end
            )
            write_certificate(layout.cert_path(unit, Role.TLS), certificate)
        CertificateAuthority.save_state(ca)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process used so far, from /proc (0.0 if unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (MB)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class Process:
    """A child process that writes its port to a file; stopped with SIGTERM."""

    def __init__(self, args: list[str], port_file: Path, env: dict[str, str]) -> None:
        self.port_file = port_file
        self.args = args
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)

    def wait_port(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists() and self.port_file.read_text().strip():
                return int(self.port_file.read_text())
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[:3]} exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("the process did not start in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def channel_for(certs: Path, unit: str, port: int) -> grpc.aio.Channel:
    tls = load_tls_material(certs, unit)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.root_ca_pem,
        private_key=tls.private_key_pem,
        certificate_chain=tls.certificate_chain_pem,
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        credentials,
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
    )


async def connected(channels: Iterable[grpc.aio.Channel]) -> None:
    """Wait until every channel is connected: a node keeps its connection open, so the
    TLS handshakes are not part of what a submit (or an echo) costs."""
    await asyncio.gather(*(c.channel_ready() for c in channels))


async def run_concurrently(
    items: list[Any], concurrency: int, call: Callable[[Any], Awaitable[float]]
) -> tuple[float, list[float]]:
    """Run ``call`` over ``items`` with ``concurrency`` workers; (seconds, latencies)."""
    latencies: list[float] = []
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            latencies.append(await call(item))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


@dataclasses.dataclass
class Prepared:
    workdir: Path
    certs: Path
    policies: Path
    units: list[str]
    envelopes: list[tuple[str, str, bytes]]  # (sender, message id, envelope)


def prepare(workdir: Path, nodes: int, messages: int, size: int, suite_id: str) -> Prepared:
    """Registry, PKI and pre-sealed envelopes (sealing is not what the hub is measured on)."""
    units = unit_ids(nodes)
    policies = workdir / "policies"
    write_registry(policies, units)
    certs = workdir / "certs"
    init_pki(certs, units, suites=(suite_id,), validity=Validity.of(None))
    envelopes = seal_envelopes(certs, units, messages, size, suite_id, prefix="bench")
    return Prepared(workdir, certs, policies, units, envelopes)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["EXCHANGE_LOG_LEVEL"] = "WARNING"
    return env


async def _load(
    prepared: Prepared,
    port: int,
    concurrency: int,
    rate: float | None,
    hub_pid: int,
    streamed: bool = True,
    ack_window: int = 8,
) -> dict[str, Any]:
    """Submit every envelope, receive and acknowledge every delivery; the figures.

    Each node acknowledges as a node does: what it received is queued, and an
    acknowledgement sender answers the hub beside the subscription (``ack_window``
    acknowledgements in flight per node), so receiving never waits on acknowledging.
    ``streamed``: submissions and acknowledgements go over each node's SubmitStream
    and AcknowledgeStream, as a running node sends them; otherwise a unary call each.
    """
    channels = {u: channel_for(prepared.certs, u, port) for u in prepared.units}
    await connected(channels.values())
    stubs = {u: pb_grpc.HubStub(c) for u, c in channels.items()}
    submits = {u: submit_stream(s, timeout=120) for u, s in stubs.items()}
    acks = {u: acknowledge_stream(s, timeout=120) for u, s in stubs.items()}

    async def submit_call(sender: str, raw: bytes) -> pb.SubmitResponse:
        request = pb.SubmitRequest(envelope=raw)
        if streamed:
            return await submits[sender].call(request)
        response: pb.SubmitResponse = await stubs[sender].Submit(request)
        return response

    async def acknowledge_call(unit: str, request: pb.AcknowledgeRequest) -> None:
        if streamed:
            await acks[unit].call(request)
        else:
            await stubs[unit].Acknowledge(request)

    submitted_at: dict[str, float] = {}
    delivered_at: dict[str, float] = {}
    acknowledged: set[str] = set()
    expected = len(prepared.envelopes)
    all_delivered = asyncio.Event()
    all_acknowledged = asyncio.Event()
    to_acknowledge: dict[str, asyncio.Queue[pb.Delivery]] = {
        u: asyncio.Queue() for u in prepared.units
    }

    async def subscriber(unit: str) -> None:
        stream = stubs[unit].Subscribe(pb.SubscribeRequest(cursor=0))
        queue = to_acknowledge[unit]
        async for message in stream:
            arrived = time.perf_counter()
            for delivery in message.deliveries:
                delivered_at.setdefault(delivery.message_id, arrived)
                queue.put_nowait(delivery)
            if len(delivered_at) >= expected:
                all_delivered.set()

    async def acknowledger(unit: str) -> None:
        queue = to_acknowledge[unit]
        while True:
            delivery = await queue.get()
            await acknowledge_call(
                unit,
                pb.AcknowledgeRequest(message_id=delivery.message_id, sequence=delivery.sequence),
            )
            acknowledged.add(delivery.message_id)
            if len(acknowledged) >= expected:
                all_acknowledged.set()

    nodes = [asyncio.create_task(subscriber(u)) for u in prepared.units] + [
        asyncio.create_task(acknowledger(u)) for u in prepared.units for _ in range(ack_window)
    ]
    accepted = 0
    interval = 1.0 / rate if rate else 0.0
    hub_cpu, client_cpu = cpu_seconds(hub_pid), time.process_time()
    start = time.perf_counter()

    async def submit(item: tuple[int, tuple[str, str, bytes]]) -> float:
        nonlocal accepted
        index, (sender, message_id, raw) = item
        if interval:
            await asyncio.sleep(max(0.0, start + index * interval - time.perf_counter()))
        began = time.perf_counter()
        submitted_at[message_id] = began
        response = await submit_call(sender, raw)
        if response.evidence.statement:
            accepted += 1
        return (time.perf_counter() - began) * 1000

    seconds, latencies = await run_concurrently(
        list(enumerate(prepared.envelopes)), concurrency, submit
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_delivered.wait(), timeout=120)
    delivered_seconds = max(delivered_at.values(), default=start) - start
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_acknowledged.wait(), timeout=120)
    acknowledged_seconds = time.perf_counter() - start
    hub_cpu, client_cpu = cpu_seconds(hub_pid) - hub_cpu, time.process_time() - client_cpu
    for task in nodes:
        task.cancel()
    await asyncio.gather(*nodes, return_exceptions=True)
    for streams in (submits, acks):
        for calls in streams.values():
            await calls.close()
    for channel in channels.values():
        await channel.close()
    end_to_end = [
        (delivered_at[m] - submitted_at[m]) * 1000 for m in delivered_at if m in submitted_at
    ]
    return {
        "messages": expected,
        "accepted": accepted,
        "delivered": len(delivered_at),
        "acknowledged": len(acknowledged),
        "accepted_per_s": round(accepted / seconds, 1),
        "delivered_per_s": round(len(delivered_at) / delivered_seconds, 1)
        if delivered_seconds
        else 0.0,
        "acknowledged_per_s": round(len(acknowledged) / acknowledged_seconds, 1),
        "submit_p50_ms": round(percentile(latencies, 0.50), 2),
        "submit_p99_ms": round(percentile(latencies, 0.99), 2),
        "submit_to_delivered_p99_ms": round(percentile(end_to_end, 0.99), 2),
        # CPU per message (submit, delivery and acknowledgement), whatever else runs
        "hub_cpu_ms_per_message": round(hub_cpu * 1000 / max(1, expected), 3),
        "client_cpu_ms_per_message": round(client_cpu * 1000 / max(1, expected), 3),
    }


async def _echo(prepared: Prepared, port: int, concurrency: int, pid: int) -> dict[str, float]:
    channels = {u: channel_for(prepared.certs, u, port) for u in prepared.units}
    await connected(channels.values())
    calls: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {
        u: c.unary_unary(ECHO_METHOD, request_serializer=None, response_deserializer=None)
        for u, c in channels.items()
    }

    async def echo(item: tuple[str, str, bytes]) -> float:
        began = time.perf_counter()
        await calls[item[0]](item[2])
        return (time.perf_counter() - began) * 1000

    server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
    seconds, _ = await run_concurrently(prepared.envelopes, concurrency, echo)
    server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
    for channel in channels.values():
        await channel.close()
    count = max(1, len(prepared.envelopes))
    return {
        "echo_per_s": round(len(prepared.envelopes) / seconds, 1),
        "echo_server_cpu_ms_per_call": round(server_cpu * 1000 / count, 3),
        "echo_client_cpu_ms_per_call": round(client_cpu * 1000 / count, 3),
    }


async def _idle(certs: Path, units: list[str], port: int, pid: int) -> dict[str, Any]:
    channels = [channel_for(certs, u, port) for u in units]
    streams = [pb_grpc.HubStub(c).Subscribe(pb.SubscribeRequest()) for c in channels]
    # a stream is established once its initial metadata arrives
    await asyncio.gather(*(s.initial_metadata() for s in streams))
    cpu = cpu_seconds(pid)
    await asyncio.sleep(2)
    cpu = cpu_seconds(pid) - cpu
    rss = rss_mb(pid)
    for stream in streams:
        stream.cancel()
    for channel in channels:
        await channel.close()
    return {
        "idle_nodes": len(units),
        "hub_rss_mb_idle_nodes": rss,
        # what holding the idle streams costs the hub (percent of one core)
        "hub_cpu_percent_idle_nodes": round(cpu / 2 * 100, 1),
    }


@contextlib.contextmanager
def scratch_database(db_url: str | None, root: Path) -> Iterator[str]:
    """An empty store for one run: what a previous run left would dedupe its messages.

    No URL: SQLite in the scratch folder. PostgreSQL: a fresh schema of that database,
    dropped afterwards. A SQLite file must not exist yet.
    """
    if db_url is None:
        yield f"sqlite:///{root / 'hub.db'}"
        return
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        if url.database and Path(url.database).exists():
            raise InputError(f"--db {db_url}: the benchmark needs a new database; the file exists")
        yield db_url
        return
    schema = f"exchange_bench_{uuid.uuid4().hex[:10]}"
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        scoped = url.update_query_dict({"options": f"-csearch_path={schema}"})
        yield scoped.render_as_string(hide_password=False)
    finally:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def start_hub_process(root: Path, prepared: Prepared, url: str, name: str) -> Process:
    exe = str(Path(sys.executable).parent / "exchange")
    port_file = root / f"{name}.port"
    return Process(
        [
            exe,
            "hub",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--certs",
            str(prepared.certs),
            "--db",
            url,
            "--policies",
            str(prepared.policies),
        ],
        port_file,
        _env(),
    )


def run(
    *,
    nodes: int,
    messages: int,
    concurrency: int,
    db_url: str | None,
    size: int = 2048,
    suite: str = "classic-2026",
    idle_nodes: int = 0,
    streamed: bool = True,
    half_rate_seconds: float = 10.0,
) -> dict[str, Any]:
    """The whole benchmark; returns the JSON document.

    After the full-speed run, ``half_rate_seconds`` of load at half the accepted rate
    measure submit latency below saturation.
    """
    raise_open_files_limit()  # the hub process inherits it
    with tempfile.TemporaryDirectory(prefix="exchange-bench-") as scratch:
        root = Path(scratch)
        prepared = prepare(root, nodes, messages, size, suite)
        # the envelopes and keys stay to the end: keep full collections from walking
        # them while latencies are measured (the hub does the same once started)
        gc.collect()
        gc.freeze()
        stack = contextlib.ExitStack()
        url = stack.enter_context(scratch_database(db_url, root))
        hub = start_hub_process(root, prepared, url, "hub")
        echo = Process(
            [
                sys.executable,
                "-m",
                "exchange.bench.echo",
                "--certs",
                str(prepared.certs),
                "--port-file",
                str(root / "echo.port"),
            ],
            root / "echo.port",
            _env(),
        )
        try:
            hub_port, echo_port = hub.wait_port(), echo.wait_port()
            loaded = asyncio.run(
                _load(prepared, hub_port, concurrency, None, hub.proc.pid, streamed)
            )
            loaded["hub_rss_mb"] = rss_mb(hub.proc.pid)
            echoed = asyncio.run(_echo(prepared, echo_port, concurrency, echo.proc.pid))
            echo_per_s = echoed["echo_per_s"]
            half_rate = max(1.0, loaded["accepted_per_s"] / 2)
            half = dataclasses.replace(
                prepared,
                envelopes=seal_envelopes(
                    prepared.certs,
                    prepared.units,
                    max(1, int(half_rate * half_rate_seconds)),
                    size,
                    suite,
                    prefix="half",
                ),
            )
            at_half = asyncio.run(
                _load(half, hub_port, concurrency, half_rate, hub.proc.pid, streamed)
            )
            result: dict[str, Any] = {
                "benchmark": "exchange",
                "nodes": nodes,
                "concurrency": concurrency,
                "size_bytes": size,
                "suite": suite,
                "calls": "streams" if streamed else "unary",
                "db": "postgresql" if url.startswith("postgresql") else "sqlite",
                **loaded,
                **echoed,
                "ratio_accepted_to_echo": round(loaded["accepted_per_s"] / echo_per_s, 3),
                "ratio_delivered_to_echo": round(loaded["delivered_per_s"] / echo_per_s, 3),
                "half_rate_per_s": round(half_rate, 1),
                "submit_p50_ms_at_half_rate": at_half["submit_p50_ms"],
                "submit_p99_ms_at_half_rate": at_half["submit_p99_ms"],
            }
            if idle_nodes:
                # a fresh hub that knows the idle units too, so its memory is theirs alone
                idle_units = unit_ids(idle_nodes, prefix="I")
                write_registry(prepared.policies, prepared.units + idle_units)
                provision_idle_nodes(prepared.certs, idle_units)
                hub.stop()
                hub = start_hub_process(root, prepared, url, "hub-idle")
                result.update(
                    asyncio.run(_idle(prepared.certs, idle_units, hub.wait_port(), hub.proc.pid))
                )
            return result
        finally:
            hub.stop()
            echo.stop()
            stack.close()


def seal_envelopes(
    certs: Path, units: list[str], count: int, size: int, suite_id: str, *, prefix: str
) -> list[tuple[str, str, bytes]]:
    """``count`` envelopes, each unit sending to the next in turn: (sender, id, envelope).

    Ids are ``<prefix>-<n>``: a phase of its own needs a prefix of its own, or the hub
    would dedupe its messages against an earlier phase's.
    """
    directory = load_directory(certs)
    keyrings = {u: load_keyring(certs, u) for u in units}
    header, body = sample_message(size, 1)
    suite = suite_by_id(suite_id)
    now = datetime.now(UTC)
    envelopes = []
    for i in range(count):
        sender, recipient = units[i % len(units)], units[(i + 1) % len(units)]
        message_id = f"{prefix}-{i:07d}"
        envelope = seal(
            dataclasses.replace(
                header, id=message_id, sender=sender, to=(recipient,), channel=Channel.SIENA
            ),
            body,
            keyring=keyrings[sender],
            directory=directory,
            now=now,
            suite=suite,
        )
        envelopes.append((sender, message_id, envelope.raw))
    return envelopes
