"""A whole exchange in one process, for tests and demos: a PKI, a hub, nodes.

The hub and each node run on their own asyncio loop in a background thread, as they
would in their own processes; the test drives them through the real CLI
(:func:`exchange.cli.main.main`) or the node store. Everything lives under one folder.

    with ExchangeSimulator.create(tmp_path, units=["AL.CTD", "EU.EUROPOL"]) as sim:
        node = sim.start_node("AL.CTD")
        ...
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml

from exchange.core.clock import Clock, SystemClock
from exchange.core.registry import load_registry
from exchange.hub.background import BackgroundHub
from exchange.hub.server import HubConfig
from exchange.pki import init_pki
from nodes.agent import NodeAgent, NodeConfig
from nodes.store import NodeStore

__all__ = ["ExchangeSimulator", "NodeThread", "wait_for", "write_policies"]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
REFERENCE_POLICIES = ROOT / "policies"


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "",
) -> T:
    """Poll ``condition`` until it returns something true; its value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


class _LoopThread:
    """An asyncio loop in a daemon thread, running one coroutine until told to stop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AssertionError(f"{self.name} did not start within {timeout} s")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.setup()
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        try:
            await self.serve(self._stop)
        finally:
            await self.teardown()

    async def setup(self) -> None:  # pragma: no cover - overridden
        """Build what the thread runs (on its loop)."""
        raise NotImplementedError

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""
        await stop.wait()

    async def teardown(self) -> None:
        return None

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        """Run ``coroutine`` on this thread's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


class NodeThread(_LoopThread):
    """A node agent on its own loop (as ``exchange node run`` would run it)."""

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(f"node-{config.unit}")
        self.config = config
        self.agent: NodeAgent | None = None

    async def setup(self) -> None:
        """Load the node's keys and open its store (failures surface in :meth:`start`)."""
        self.agent = NodeAgent(self.config)

    async def serve(self, stop: asyncio.Event) -> None:
        """Run the node until ``stop`` is set."""
        assert self.agent is not None
        await self.agent.run(stop)

    def wait_directory(self, timeout: float = 10.0) -> None:
        """Wait until the node has fetched the hub's directory (it knows whom it relays)."""
        assert self.agent is not None
        self.call(asyncio.wait_for(self.agent.directory_ready.wait(), timeout), timeout + 1)

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Wait until the node's Subscribe stream is open."""
        wait_for(
            lambda: self.agent is not None and self.agent.subscribed.is_set(),
            timeout=timeout,
            what=f"{self.config.unit} subscribed",
        )

    @property
    def store(self) -> NodeStore:
        """The running node's store."""
        assert self.agent is not None
        return self.agent.store


def write_policies(folder: Path, units: Iterable[str]) -> Path:
    """A policies folder with the reference policy and the reference registry cut to ``units``.

    A relayed unit brings its relay along, so the registry stays consistent.
    """
    registry = load_registry(REFERENCE_POLICIES / "registry.yaml")
    wanted = set(units)
    for unit in list(wanted):
        entry = registry.require(unit)
        if entry.relay:
            wanted.add(entry.relay)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REFERENCE_POLICIES / "policy.yaml", folder / "policy.yaml")
    data = {"units": [u.to_json() for u in registry if u.id in wanted]}
    (folder / "registry.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


@dataclass
class ExchangeSimulator:
    """A PKI, a policies folder, a hub with SQLite, and nodes, under ``root``."""

    root: Path
    units: tuple[str, ...]
    clock: Clock = field(default_factory=SystemClock)
    hub: BackgroundHub | None = None
    nodes: dict[Path, NodeThread] = field(default_factory=dict)

    @property
    def certs(self) -> Path:
        """The PKI folder."""
        return self.root / "certs"

    @property
    def policies(self) -> Path:
        """The hub's policies folder (registry and policy)."""
        return self.root / "policies"

    @property
    def hub_address(self) -> str:
        """``127.0.0.1:<port>`` of the running hub."""
        assert self.hub is not None
        return f"127.0.0.1:{self.hub.port}"

    @classmethod
    def create(
        cls,
        root: Path,
        *,
        units: Iterable[str],
        suites: Iterable[str] = ("classic-2026",),
        clock: Clock | None = None,
    ) -> ExchangeSimulator:
        """Make the PKI and policies for ``units`` and start the hub."""
        sim = cls(root=root, units=tuple(units), clock=clock or SystemClock())
        write_policies(sim.policies, sim.units)
        registered = sorted(u.id for u in load_registry(sim.policies / "registry.yaml"))
        init_pki(sim.certs, registered, suites=tuple(suites))
        sim.start_hub()
        return sim

    def start_hub(self) -> BackgroundHub:
        """Start the hub on any free port."""
        return self.start_hub_on(0)

    def start_hub_on(self, port: int) -> BackgroundHub:
        """Start the hub on ``port`` (again, after :meth:`BackgroundHub.stop`: same database)."""
        self.hub = BackgroundHub(
            HubConfig(
                listen=f"127.0.0.1:{port}",
                certs=self.certs,
                db_url=f"sqlite:///{self.root / 'hub.db'}",
                policies=self.policies,
                clock=self.clock,
                grace_seconds=0.5,
            )
        )
        self.hub.start()
        return self.hub

    def home(self, unit: str, name: str = "") -> Path:
        """The default home folder of a node of ``unit``."""
        return self.root / "nodes" / (name or unit)

    def start_node(self, unit: str, home: Path | None = None, **options: Any) -> NodeThread:
        """Start ``unit``'s node (home ``root/nodes/<unit>`` unless given)."""
        folder = home or self.home(unit)
        node = NodeThread(
            NodeConfig(
                unit=unit,
                hub=self.hub_address,
                certs=self.certs,
                home=folder,
                clock=self.clock,
                poll_seconds=options.pop("poll_seconds", 0.1),
                backoff_base=options.pop("backoff_base", 0.05),
                backoff_cap=options.pop("backoff_cap", 0.5),
                **options,
            )
        )
        node.start()
        self.nodes[folder] = node
        return node

    def stop_node(self, node: NodeThread) -> None:
        """Stop a node started here (its store stays)."""
        node.stop()
        self.nodes.pop(node.config.home, None)

    def close(self) -> None:
        """Stop every node, then the hub."""
        for node in list(self.nodes.values()):
            node.stop()
        self.nodes.clear()
        if self.hub is not None:
            self.hub.stop(grace=0.5)
            self.hub = None

    def __enter__(self) -> ExchangeSimulator:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()
