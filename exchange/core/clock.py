"""One clock for the hub and the nodes.

Live mode reads the system clock. In exercise mode the clock starts at an exercise
date and runs at a chosen speed, or only moves when the exercise controller advances
it, so a training exercise set in 2019 produces a log dated 2019.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the time (always timezone-aware UTC)."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class ExerciseClock:
    """Exercise time: ``start`` plus real elapsed time times ``speed``, plus manual advances.

    ``speed=0`` freezes it: only :meth:`advance` and :meth:`set` move it.
    """

    start: datetime
    speed: float = 1.0
    _offset: timedelta = field(default=timedelta(0), init=False)
    _origin: float = field(default_factory=time.monotonic, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            self.start = self.start.replace(tzinfo=UTC)
        if self.speed < 0:
            raise ValueError("an exercise clock cannot run backwards")

    def now(self) -> datetime:
        with self._lock:
            elapsed = (time.monotonic() - self._origin) * self.speed
            return self.start + self._offset + timedelta(seconds=elapsed)

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock forward by ``delta``; returns the new time."""
        if delta < timedelta(0):
            raise ValueError("an exercise clock cannot move backwards")
        with self._lock:
            self._offset += delta
        return self.now()

    def set(self, moment: datetime) -> None:
        """Jump forward to ``moment`` (never backwards: logs must stay ordered)."""
        current = self.now()
        if moment < current:
            raise ValueError(f"cannot set the clock back from {current} to {moment}")
        self.advance(moment - current)


@dataclass(frozen=True)
class FixedClock:
    """A clock that always says ``moment`` (tests, test vectors)."""

    moment: datetime

    def now(self) -> datetime:
        return self.moment
