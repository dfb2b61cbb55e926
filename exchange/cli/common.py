"""Options shared by several command groups: store, certificates, clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from exchange.core.clock import Clock, ExerciseClock, SystemClock
from exchange.errors import InputError

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="EXCHANGE_DB",
        help="Store URL: sqlite:///path (default exchange.db here) or postgresql+psycopg://...",
    ),
]
CertsOption = Annotated[
    Path,
    typer.Option("--certs", envvar="EXCHANGE_CERTS", help="PKI folder (exchange pki init)."),
]
ExerciseStartOption = Annotated[
    str | None,
    typer.Option(
        "--exercise-start",
        envvar="EXCHANGE_EXERCISE_START",
        help="Run on an exercise clock starting at this ISO date or time (UTC).",
    ),
]
SpeedOption = Annotated[
    float,
    typer.Option(
        "--speed", envvar="EXCHANGE_SPEED", min=0, help="Exercise clock speed (0: frozen)."
    ),
]


def parse_moment(text: str, what: str) -> datetime:
    """An ISO date or date-time as UTC; a clear error otherwise."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{what} {text!r} is not an ISO date or date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def make_clock(exercise_start: str | None, speed: float) -> Clock:
    """The system clock, or an exercise clock when a start is given."""
    if exercise_start is None:
        return SystemClock()
    return ExerciseClock(start=parse_moment(exercise_start, "--exercise-start"), speed=speed)
