"""A hub and two national nodes on separate "hosts": three Linux network namespaces.

Topology (addresses exist only inside the namespaces this test creates)::

    exch-a-<pid>  10.231.1.2/30 ──veth── 10.231.1.1/30  exch-hub-<pid>
    exch-b-<pid>  10.231.2.2/30 ──veth── 10.231.2.1/30  exch-hub-<pid>

A and B have no route to each other: whatever AL.CTD (on A) sends to RS.CTU (on B)
goes through the hub over mutual TLS. The hub's TLS certificate names both hub
addresses (``exchange pki init --hub-host``), so each node checks the hub by the
address it dials, as on real separate hosts.

Needs root and iproute2; skipped with the reason otherwise. Every namespace and process
is removed in teardown, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
EXCHANGE = Path(sys.executable).parent / "exchange"
POLICIES = ROOT / "policies"
PID = os.getpid()

HUB_NS = f"exch-hub-{PID}"
A_NS = f"exch-a-{PID}"
B_NS = f"exch-b-{PID}"
HUB_ON_A, A_ADDRESS = "10.231.1.1", "10.231.1.2"
HUB_ON_B, B_ADDRESS = "10.231.2.1", "10.231.2.2"
PORT = 7443
SENDER, RECEIVER = "AL.CTD", "RS.CTU"
TEXT = "cross-host"

#: sub-commands the test drives (the CLI's own parser is asked whether they exist)
NEEDED = (("pki", "init"), ("hub", "serve"), ("node", "run"), ("send",), ("inbox",))


def argv(words: str, **options: str | Path | list[str]) -> list[str]:
    """``words`` split, then ``--name value`` per option (``as_`` is ``--as``, lists repeat)."""
    args = words.split()
    for name, value in options.items():
        flag = "--" + name.rstrip("_").replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            args += [flag, str(item)]
    return args


def run(command: list[str], timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["ip", *args], timeout=15)


def must(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"`{' '.join(map(str, result.args))}` exited {result.returncode}: {result.stderr.strip()}"
    )


def why_no_namespaces() -> str | None:
    """The reason this machine cannot run the test, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces exist on Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"exch-probe-{PID}"
    try:
        made = ip("netns", "add", probe)
        if made.returncode != 0:
            return f"`ip netns add` does not work here: {made.stderr.strip()}"
        veth = ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        if veth.returncode != 0:
            return f"veth pairs cannot be made here: {veth.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`ip netns` does not answer: {error}"
    finally:
        ip("netns", "del", probe)
    return None


def cli_gaps() -> list[str]:
    """The sub-commands and options of :data:`NEEDED` the installed CLI lacks."""
    import typer.main

    from exchange.cli.main import app

    root = typer.main.get_command(app)
    gaps = []
    for path in NEEDED:
        command = root
        for word in path:
            command = getattr(command, "commands", {}).get(word)
            if command is None:
                gaps.append(f"`exchange {' '.join(path)}`")
                break
    return gaps


def options_of(*path: str) -> set[str]:
    import typer.main

    from exchange.cli.main import app

    command = typer.main.get_command(app)
    for word in path:
        command = command.commands[word]
    return {name for param in command.params for name in [*param.opts, *param.secondary_opts]}


def clean_environment() -> dict[str, str]:
    """No EXCHANGE_* settings and no proxies (gRPC would dial them) from the caller."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("EXCHANGE_") and not key.lower().endswith("_proxy")
    }
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


class Region:
    """The three namespaces, the processes started in them and their logs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs: dict[str, Path] = {}
        self.environment = clean_environment()

    # -- network ------------------------------------------------------------------------
    def build(self) -> None:
        for namespace in (HUB_NS, A_NS, B_NS):
            ip("netns", "del", namespace)  # a leftover of a killed run with the same pid
            must(ip("netns", "add", namespace))
            must(ip("-n", namespace, "link", "set", "lo", "up"))
        for peer, hub_side, hub_address, peer_address in (
            (A_NS, "to-a", HUB_ON_A, A_ADDRESS),
            (B_NS, "to-b", HUB_ON_B, B_ADDRESS),
        ):
            veth = f"link add {hub_side} type veth peer name to-hub netns {peer}"
            must(ip("-n", HUB_NS, *veth.split()))
            must(ip("-n", HUB_NS, "addr", "add", f"{hub_address}/30", "dev", hub_side))
            must(ip("-n", peer, "addr", "add", f"{peer_address}/30", "dev", "to-hub"))
            must(ip("-n", HUB_NS, "link", "set", hub_side, "up"))
            must(ip("-n", peer, "link", "set", "to-hub", "up"))

    def teardown(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        for namespace in (HUB_NS, A_NS, B_NS):
            # anything still inside one of our namespaces is ours
            listed = ip("netns", "pids", namespace)
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", namespace)

    # -- processes ----------------------------------------------------------------------
    def command(self, namespace: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", namespace, str(EXCHANGE), *args]

    def start(self, name: str, namespace: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.folder / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as sink:
            process = subprocess.Popen(
                self.command(namespace, *args),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=self.environment,
                start_new_session=True,
            )
        self.processes.append((name, process))
        return process

    def exchange(self, namespace: str, *args: str, timeout: float = 30) -> Any:
        return run(
            self.command(namespace, *args), timeout=timeout, cwd=self.folder, env=self.environment
        )

    def check_running(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                pytest.fail(f"{name} exited {process.returncode}\n{self.tails()}")

    def tails(self, lines: int = 30) -> str:
        parts = []
        for name, log in self.logs.items():
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            parts.append(f"--- {name} (last {lines} lines)\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def wait_for_port(self, namespace: str, address: str, seconds: float) -> None:
        probe = f"import socket; socket.create_connection(({address!r}, {PORT}), 1).close()"
        deadline = time.monotonic() + seconds
        while True:
            self.check_running()
            answer = run(["ip", "netns", "exec", namespace, sys.executable, "-c", probe], 10)
            if answer.returncode == 0:
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the hub is not reachable at {address}:{PORT} from {namespace} after "
                    f"{seconds:.0f} s: {answer.stderr.strip()[-300:]}\n{self.tails()}"
                )
            time.sleep(0.3)


@pytest.fixture
def region(tmp_path: Path) -> Iterator[Region]:
    reason = why_no_namespaces()
    if reason is not None:
        pytest.skip(reason)
    if not EXCHANGE.exists():
        pytest.skip(f"the console script {EXCHANGE} is not installed (pip install -e .)")
    missing = cli_gaps()
    if missing:
        pytest.skip(f"the CLI has no {', '.join(missing)} yet")
    built = Region(tmp_path)
    try:
        built.build()
        yield built
    finally:
        built.teardown()


def find_message(document: Any, message_id: str | None) -> dict[str, Any] | None:
    """The inbox entry that is our message: by its id, else by its text or sender.

    Without an id (``send`` printed none) any entry from the sender will do: the
    receiver's home is new, so the only message it can hold is this one.
    """
    if isinstance(document, dict):
        values = {str(v) for v in document.values() if not isinstance(v, (dict, list))}
        wanted = {message_id} if message_id else {TEXT, SENDER}
        if values & wanted:
            return document
        children = list(document.values())
    elif isinstance(document, list):
        children = document
    else:
        return None
    for child in children:
        found = find_message(child, message_id)
        if found is not None:
            return found
    return None


def message_id_of(output: str) -> str | None:
    try:
        sent = json.loads(output)
    except json.JSONDecodeError:
        return None
    if isinstance(sent, dict):
        for key in ("id", "message_id"):
            if isinstance(sent.get(key), str):
                return sent[key]
        header = sent.get("header")
        if isinstance(header, dict) and isinstance(header.get("id"), str):
            return header["id"]
    return None


def test_message_crosses_hosts_through_the_hub(region: Region) -> None:
    folder = region.folder
    certs = folder / "certs"
    home = folder / "homes" / RECEIVER

    # The PKI (made outside the namespaces: it needs no network); the hub certificate
    # names the address each side dials.
    made = run(
        [
            str(EXCHANGE),
            *argv(
                "pki init",
                out=certs,
                registry=POLICIES / "registry.yaml",
                hub_host=[HUB_ON_A, HUB_ON_B],
            ),
        ],
        timeout=60,
        cwd=folder,
        env=region.environment,
    )
    assert made.returncode == 0, f"pki init failed:\n{made.stdout}\n{made.stderr}"

    # The topology: A and B reach the hub, not each other.
    probe = f"import socket; socket.create_connection(({B_ADDRESS!r}, {PORT}), 2)"
    unreachable = run(["ip", "netns", "exec", A_NS, sys.executable, "-c", probe], timeout=10)
    assert unreachable.returncode != 0, "namespace A reaches B directly: not separate hosts"

    region.start(
        "hub",
        HUB_NS,
        *argv(
            "hub serve",
            listen=f"0.0.0.0:{PORT}",
            certs=certs,
            db=f"sqlite:///{folder / 'hub.db'}",
            policies=POLICIES,
            grace="2",
        ),
    )
    region.wait_for_port(A_NS, HUB_ON_A, seconds=30)
    region.wait_for_port(B_NS, HUB_ON_B, seconds=10)

    region.start(
        "node-rs-ctu",
        B_NS,
        *argv(
            "node run",
            unit=RECEIVER,
            hub=f"{HUB_ON_B}:{PORT}",
            certs=certs,
            home=home,
        ),
    )

    send = argv(
        "send",
        as_=SENDER,
        hub=f"{HUB_ON_A}:{PORT}",
        certs=certs,
        to=RECEIVER,
        channel="CT",
        crime_area="terrorism",
        text=TEXT,
    )
    # Submitted straight to the hub with AL.CTD's own TLS certificate, as host A would.
    send_options = options_of("send")
    if "--format" in send_options:
        send += ["--format", "json"]
    sent = region.exchange(A_NS, *send, timeout=40)
    assert sent.returncode == 0, (
        f"send from {A_NS} exited {sent.returncode}:\n{sent.stdout}\n{sent.stderr}\n"
        f"{region.tails()}"
    )
    message_id = message_id_of(sent.stdout)

    inbox = argv("inbox", as_=RECEIVER, home=home, format="json")
    if "--certs" in options_of("inbox"):
        inbox += ["--certs", str(certs)]
    deadline = time.monotonic() + 60
    last = None
    while True:
        region.check_running()
        last = region.exchange(B_NS, *inbox, timeout=20)
        if last.returncode == 0:
            try:
                listed = json.loads(last.stdout or "null")
            except json.JSONDecodeError:
                pytest.fail(f"`exchange inbox --format json` printed no JSON:\n{last.stdout}")
            entry = find_message(listed, message_id)
            if entry is not None:
                break
        if time.monotonic() > deadline:
            pytest.fail(
                f"message {message_id or TEXT!r} from {SENDER} did not reach {RECEIVER}'s inbox "
                f"in 60 s; last inbox (exit {last.returncode}):\n{last.stdout}\n{last.stderr}\n"
                f"{region.tails()}"
            )
        time.sleep(1)
    assert SENDER in json.dumps(entry), f"the inbox entry does not name {SENDER}: {entry}"
    assert not entry.get("rejected"), f"{RECEIVER}'s node rejected the message: {entry}"
