"""``exchange bench``: benchmarks that write JSON, each beside its raw baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from exchange.cli.common import DbOption
from exchange.cli.output import OutputFormat, console, print_json
from exchange.core.suites import SUITES, suite_by_id
from exchange.files import write_atomic

app = typer.Typer(help="Benchmarks (JSON with --format json).", no_args_is_help=True)


@app.command("envelope")
def envelope_command(
    suite: Annotated[
        list[str] | None,
        typer.Option("--suite", help="Suite to measure (repeat for several); default all."),
    ] = None,
    size: Annotated[int, typer.Option("--size", min=1, help="Body text bytes.")] = 2048,
    recipients: Annotated[int, typer.Option("--recipients", min=1, max=7)] = 1,
    seconds: Annotated[float, typer.Option("--seconds", min=0.5, help="Total budget.")] = 5.0,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON here.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.TEXT,
) -> None:
    """Seal, verify and open per second for each suite, beside raw signature verification."""
    from exchange.bench.envelope import run

    chosen = [suite_by_id(s) for s in suite] if suite else list(SUITES.values())
    result = run(chosen, size=size, recipients=recipients, seconds=seconds)
    if out is not None:
        write_atomic(out, (json.dumps(result, indent=2) + "\n").encode())
    if output is OutputFormat.JSON:
        print_json(result)
        return
    table = Table(title=f"envelope, {size}-byte body, {recipients} recipient(s)")
    for column in (
        "suite",
        "seal/s",
        "verify/s",
        "raw verify/s",
        "ours/raw",
        "open/s",
        "seal+verify+open/s",
        "envelope bytes",
    ):
        table.add_column(column, justify="right")
    for entry in result["suites"].values():
        table.add_row(
            entry["suite"],
            f"{entry['seal_per_s']:,.0f}",
            f"{entry['verify_per_s']:,.0f}",
            f"{entry['raw_signature_verify_per_s']:,.0f}",
            f"{entry['ratio_verify_to_raw_signature_verify']:.2f}",
            f"{entry['open_per_s']:,.0f}",
            f"{entry['seal_verify_open_per_s']:,.0f}",
            f"{entry['envelope_bytes']:,}",
        )
    console.print(table)
    console.print(result["primitives"])


@app.command("exchange")
def exchange_command(
    nodes: Annotated[int, typer.Option("--nodes", min=2, help="Units sending and receiving.")] = 20,
    messages: Annotated[int, typer.Option("--messages", min=1)] = 20000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 64,
    db: DbOption = None,
    size: Annotated[int, typer.Option("--size", min=1, help="Body text bytes.")] = 2048,
    suite: Annotated[str, typer.Option("--suite")] = "classic-2026",
    idle_nodes: Annotated[
        int,
        typer.Option(
            "--idle-nodes",
            min=0,
            help="Then measure hub RSS with this many idle, subscribed nodes.",
        ),
    ] = 0,
    unary: Annotated[
        bool,
        typer.Option(
            "--unary",
            help="Submit and acknowledge with a unary call each, not over the nodes' streams.",
        ),
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON here.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.TEXT,
) -> None:
    """The real hub with real mTLS and subscribed nodes, beside a raw mTLS echo baseline."""
    from exchange.bench.exchange import run

    suite_by_id(suite)
    result = run(
        nodes=nodes,
        messages=messages,
        concurrency=concurrency,
        db_url=db,
        size=size,
        suite=suite,
        idle_nodes=idle_nodes,
        streamed=not unary,
    )
    if out is not None:
        write_atomic(out, (json.dumps(result, indent=2) + "\n").encode())
    if output is OutputFormat.JSON:
        print_json(result)
        return
    table = Table(title=f"exchange: {nodes} nodes, {messages} messages, concurrency {concurrency}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command("log")
def log_command(
    entries: Annotated[
        int, typer.Option("--entries", min=1, help="Log entries to build.")
    ] = 1_000_000,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON here.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.TEXT,
) -> None:
    """Appends, inclusion and consistency proofs, and full verification per second."""
    from exchange.bench.log import run

    result = run(entries, None)
    if out is not None:
        write_atomic(out, (json.dumps(result, indent=2) + "\n").encode())
    if output is OutputFormat.JSON:
        print_json(result)
        return
    table = Table(title=f"exchange log, {entries:,} entries")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int | float) else str(value))
    console.print(table)
