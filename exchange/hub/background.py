"""A hub running in a thread of its own, with its own event loop.

For the demo, the benchmarks and tests: the same :func:`start_hub` as
``exchange hub serve``, on a port chosen by the system, stopped with a drain.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

from exchange.hub.server import HubConfig, RunningHub, start_hub


class BackgroundHub:
    """Start with :meth:`start` (returns the port), stop with :meth:`stop`."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hub", daemon=True)
        self._hub: RunningHub | None = None

    @property
    def hub(self) -> RunningHub:
        if self._hub is None:
            raise RuntimeError("the hub is not running")
        return self._hub

    @property
    def port(self) -> int:
        return self.hub.port

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def start(self, timeout: float = 30.0) -> int:
        self._thread.start()
        future: Future[RunningHub] = asyncio.run_coroutine_threadsafe(
            start_hub(self.config), self._loop
        )
        self._hub = future.result(timeout)
        return self._hub.port

    def stop(self, grace: float = 5.0) -> None:
        """Drain and stop (again: nothing)."""
        if self._loop.is_closed():
            return
        if self._hub is not None:
            asyncio.run_coroutine_threadsafe(self._hub.stop(grace), self._loop).result(grace + 30)
            self._hub = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BackgroundHub:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
