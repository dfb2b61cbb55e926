"""``exchange demo``: what `make demo` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exchange.cli.output import console
from exchange.logs import configure


def demo_command(
    certs: Annotated[
        Path, typer.Option("--certs", help="Dev PKI folder (made if missing).")
    ] = Path("certs/dev"),
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Hub database and node stores (started afresh).")
    ] = Path(".exchange/demo"),
    policies: Annotated[Path, typer.Option("--policies")] = Path("policies"),
    examples: Annotated[Path, typer.Option("--examples")] = Path("examples"),
) -> None:
    """Start a hub and eight national nodes on loopback and play a scripted exchange."""
    from exchange.demo import run_demo

    # the demo's own output is the story; the components' logs would drown it
    configure(level="ERROR")
    seconds = run_demo(
        workdir=workdir, certs=certs, policies=policies, examples=examples, console=console
    )
    console.print(f"\ndemo finished in {seconds:.1f} s; hub and nodes stopped.")
