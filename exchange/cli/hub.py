"""``exchange hub``: run the agency hub."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from exchange.cli.common import (
    CertsOption,
    DbOption,
    ExerciseStartOption,
    SpeedOption,
    make_clock,
)
from exchange.files import write_atomic
from exchange.hub.server import HubConfig, serve
from exchange.logs import configure
from exchange.store.database import database_url

app = typer.Typer(help="The agency hub: gRPC over mutual TLS.", no_args_is_help=True)


@app.command("serve")
def serve_command(
    listen: Annotated[
        str, typer.Option("--listen", envvar="EXCHANGE_LISTEN", help="host:port to listen on.")
    ] = "127.0.0.1:7443",
    certs: CertsOption = Path("certs/dev"),
    db: DbOption = None,
    policies: Annotated[
        Path,
        typer.Option("--policies", envvar="EXCHANGE_POLICIES", help="registry.yaml, policy.yaml."),
    ] = Path("policies"),
    exercise_start: ExerciseStartOption = None,
    speed: SpeedOption = 1.0,
    grace: Annotated[float, typer.Option("--grace", help="Seconds to drain on SIGTERM.")] = 10.0,
    port_file: Annotated[
        Path | None,
        typer.Option(
            "--port-file",
            help="Write the bound port here once serving (with --listen host:0 for any port).",
        ),
    ] = None,
) -> None:
    """Serve the Hub service until SIGTERM, then drain streams and submits and exit 0."""
    configure()
    config = HubConfig(
        listen=listen,
        certs=certs,
        db_url=database_url(db),
        policies=policies,
        clock=make_clock(exercise_start, speed),
        grace_seconds=grace,
    )

    def ready(port: int) -> None:
        if port_file is not None:
            write_atomic(port_file, f"{port}\n".encode())

    asyncio.run(serve(config, ready=ready))
