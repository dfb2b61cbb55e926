"""``exchange permission``: ask a provider, grant or refuse, through the hub."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.message import DecodeError

from exchange.cli.common import CertsOption
from exchange.cli.output import OutputFormat, console, print_json
from exchange.core.evidence import verify_evidence
from exchange.errors import InputError
from exchange.files import read_input
from exchange.pki import load_directory, load_tls_material
from exchange.wire.v1 import exchange_pb2 as pb
from nodes.client import HubClient

app = typer.Typer(
    help="Permissions through the hub (H2 forwards and the like).", no_args_is_help=True
)

AsOption = Annotated[str, typer.Option("--as", help="The unit acting.")]
HubAddress = Annotated[
    str, typer.Option("--hub", envvar="EXCHANGE_HUB", help="The hub, host:port.")
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


def call(
    hub: str, certs: Path, unit: str, work: Callable[[HubClient], Awaitable[pb.Evidence]]
) -> pb.Evidence:
    async def run() -> pb.Evidence:
        async with HubClient(hub, load_tls_material(certs, unit)) as client:
            return await work(client)

    return asyncio.run(run())


def show(evidence: pb.Evidence, certs: Path, output: OutputFormat) -> None:
    """Print the hub's evidence, verified against the directory."""
    view = verify_evidence(evidence, load_directory(certs), datetime.now(UTC))
    if output is OutputFormat.JSON:
        print_json(view.to_json())
    else:
        console.print(
            f"[green]{view.kind.value}[/] for message {view.message_id} "
            f"(hub log entry {view.log_index})",
            highlight=False,
        )


@app.command("ask")
def ask_command(
    message_id: Annotated[str, typer.Argument(help="The received message.")],
    unit: AsOption,
    to: Annotated[list[str], typer.Option("--to", help="Unit to pass it to (repeat).")],
    hub: HubAddress,
    purpose: Annotated[str, typer.Option("--purpose")] = "information_exchange",
    reason: Annotated[str, typer.Option("--reason", help="Why, in a sentence.")] = "",
    certs: CertsOption = Path("certs/dev"),
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Ask the message's provider, through the hub, to let you pass it on (logged)."""
    evidence = call(
        hub, certs, unit, lambda c: c.ask_permission(message_id, list(to), purpose, reason)
    )
    show(evidence, certs, output)


@app.command("grant")
def grant_command(
    file: Annotated[Path, typer.Argument(help="The signed permission (`exchange permit`).")],
    unit: AsOption,
    hub: HubAddress,
    certs: CertsOption = Path("certs/dev"),
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """As the provider, hand a signed permission to the hub; forwards it covers pass (logged)."""
    signed = pb.SignedPermission()
    try:
        signed.ParseFromString(read_input(file, "permission"))
    except DecodeError:
        raise InputError(f"{file}: not a signed permission") from None
    if not signed.permission or not signed.signatures:
        raise InputError(f"{file}: not a signed permission (no permission or no signature)")
    request = pb.GrantPermissionRequest(permission=signed)
    show(call(hub, certs, unit, lambda c: c.answer_permission(request)), certs, output)


@app.command("deny")
def deny_command(
    message_id: Annotated[str, typer.Argument(help="The message you provided.")],
    unit: AsOption,
    grantee: Annotated[str, typer.Option("--grantee", help="The unit that asked.")],
    hub: HubAddress,
    reason: Annotated[str, typer.Option("--reason", help="Why, in a sentence.")] = "",
    certs: CertsOption = Path("certs/dev"),
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """As the provider, refuse a permission (logged)."""
    request = pb.GrantPermissionRequest(
        deny=True, message_id=message_id, grantee=grantee, reason=reason
    )
    show(call(hub, certs, unit, lambda c: c.answer_permission(request)), certs, output)


def erase_command(
    message_id: Annotated[str, typer.Argument(help="The stored message to erase.")],
    hub: HubAddress,
    reason: Annotated[str, typer.Option("--reason", help="The retention review's outcome.")],
    certs: CertsOption = Path("certs/dev"),
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Erase a stored message with the hub's own certificate; the log keeps its record."""
    evidence = call(hub, certs, "HUB", lambda c: c.erase(message_id, reason))
    show(evidence, certs, output)
