"""``exchange node``: run a national node, create its store, look at its queues."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from exchange.cli.common import CertsOption, ExerciseStartOption, SpeedOption, make_clock
from exchange.cli.messages import iso_us
from exchange.cli.output import OutputFormat, console, print_json
from exchange.logs import configure
from nodes.agent import NodeAgent, NodeConfig
from nodes.compose import check_unit
from nodes.store import NodeStore

app = typer.Typer(
    help="A national node: outbox with retries, inbox, acknowledgements.", no_args_is_help=True
)

UnitOption = Annotated[
    str, typer.Option("--unit", envvar="EXCHANGE_UNIT", help="The node's unit, e.g. AL.CTD.")
]
HomeOption = Annotated[
    Path,
    typer.Option("--home", envvar="EXCHANGE_HOME", help="The node's folder (holds node.db)."),
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


def _iso(value: int | None) -> str:
    return iso_us(value) or ""


@app.command("run")
def run_command(
    unit: UnitOption,
    home: HomeOption,
    hub: Annotated[
        str, typer.Option("--hub", envvar="EXCHANGE_HUB", help="The hub, host:port.")
    ] = "127.0.0.1:7443",
    certs: CertsOption = Path("certs/dev"),
    hub_name: Annotated[
        str | None,
        typer.Option(
            "--hub-name",
            envvar="EXCHANGE_HUB_NAME",
            help="Name the hub's TLS certificate must carry, when --hub is another name or "
            "address (e.g. hub).",
        ),
    ] = None,
    exercise_start: ExerciseStartOption = None,
    speed: SpeedOption = 1.0,
) -> None:
    """Run the node until SIGTERM or SIGINT: send the outbox, receive, acknowledge."""
    configure()
    check_unit(unit, "unit")
    config = NodeConfig(
        unit=unit,
        hub=hub,
        certs=certs,
        home=home,
        hub_name=hub_name,
        clock=make_clock(exercise_start, speed),
    )
    asyncio.run(_run(config))


async def _run(config: NodeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Handlers first: once the store exists, SIGTERM always means a clean stop.
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    agent = NodeAgent(config)
    await agent.run(stop)


@app.command("init")
def init_command(unit: UnitOption, home: HomeOption) -> None:
    """Create the node's store for a unit (``node run`` does it too)."""
    check_unit(unit, "unit")
    store = NodeStore.open(home, unit=unit, create=True)
    console.print(f"node store of {store.unit} in {home}", highlight=False)


@app.command("status")
def status_command(
    home: HomeOption,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """The node's unit and its queues: the outbox by state, the inbox, acks to send."""
    store = NodeStore.open(home)
    counts = store.counts()
    outbox: list[dict[str, Any]] = [
        {
            "message_id": item.message_id,
            "sender": item.sender,
            "operation": item.operation,
            "recipients": [r for r in item.recipients.split(",") if r],
            "state": item.state,
            "attempts": item.attempts,
            "status": item.status,
            "error": item.error,
            "queued_at": _iso(item.created_at_us),
        }
        for item in store.outbox()
    ]
    result: dict[str, Any] = {"unit": store.unit, "home": str(home), "counts": counts}
    result["outbox"] = outbox
    if output is OutputFormat.JSON:
        print_json(result)
        return
    console.print(
        f"node of {store.unit} in {home}: "
        + ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in sorted(counts.items())),
        highlight=False,
    )
    if outbox:
        table = Table(title="Outbox")
        for column in ("message id", "sender", "to", "state", "attempts", "last error"):
            table.add_column(column)
        for row in outbox:
            table.add_row(
                row["message_id"],
                row["sender"],
                ", ".join(row["recipients"]),
                row["state"],
                str(row["attempts"]),
                f"{row['status']}: {row['error']}" if row["error"] else "",
            )
        console.print(table)
