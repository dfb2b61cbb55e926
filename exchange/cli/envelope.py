"""``exchange envelope``: seal, verify, open and show envelope files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from exchange.cli.output import OutputFormat, console, print_json
from exchange.core.body import load_body_file
from exchange.core.envelope import SealedEnvelope, open_envelope, seal, verify
from exchange.core.header import load_header_file
from exchange.core.suites import suite_by_id
from exchange.errors import InputError
from exchange.files import read_input, write_atomic
from exchange.logs import get_logger
from exchange.pki import load_directory, load_keyring

app = typer.Typer(help="Seal, verify, open and show sealed envelopes.", no_args_is_help=True)
log = get_logger("exchange.envelope")

CertsOption = Annotated[
    Path, typer.Option("--certs", help="PKI folder made by `exchange pki init`.")
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


def read_envelope(path: Path) -> SealedEnvelope:
    """Read and parse an envelope file (bad files are clean errors, exit 2)."""
    return SealedEnvelope.from_bytes(read_input(path, "envelope"))


def _now(at: str | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        raise InputError(f"--at {at!r} is not an ISO date or date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


AtOption = Annotated[
    str | None,
    typer.Option("--at", help="Check at this time (ISO), e.g. an exercise date; default now."),
]


@app.command("seal")
def seal_command(
    sender: Annotated[str, typer.Option("--from", help="Sending unit, e.g. AL.CTD.")],
    header_file: Annotated[Path, typer.Option("--header", help="Header JSON file.")],
    body_file: Annotated[Path, typer.Option("--body", help="Body JSON file.")],
    out: Annotated[Path, typer.Option("--out", help="Envelope file to write.")],
    certs: CertsOption = Path("certs/dev"),
    suite: Annotated[
        str | None,
        typer.Option(
            "--suite",
            help="classic-2026 or hybrid-pq-2026; default the strongest "
            "suite the sender and every recipient support.",
        ),
    ] = None,
    at: AtOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Encrypt a body for the header's recipients and sign the header."""
    now = _now(at)
    header = load_header_file(header_file)
    if header.sender != sender:
        raise InputError(
            f"the header's sender is {header.sender}, but --from is {sender}",
        )
    body = load_body_file(body_file)
    directory = load_directory(certs)
    keyring = load_keyring(certs, sender)
    envelope = seal(
        header,
        body,
        keyring=keyring,
        directory=directory,
        now=now,
        suite=suite_by_id(suite) if suite else None,
    )
    write_atomic(out, envelope.raw)
    log.info(
        "envelope sealed",
        message_id=envelope.message_id,
        sender=sender,
        suite=envelope.suite_id,
        recipients=list(envelope.recipients),
    )
    summary = {
        "message_id": envelope.message_id,
        "sender": envelope.sender,
        "recipients": list(envelope.recipients),
        "suite": envelope.suite_id,
        "bytes": len(envelope.raw),
        "out": str(out),
    }
    if output is OutputFormat.JSON:
        print_json(summary)
    else:
        console.print(
            f"[green]sealed[/] {envelope.message_id} from {sender} to "
            f"{', '.join(envelope.recipients)} ({envelope.suite_id}, {len(envelope.raw)} bytes) "
            f"-> {out}"
        )


@app.command("verify")
def verify_command(
    envelope_file: Annotated[Path, typer.Argument(help="Envelope file.")],
    certs: CertsOption = Path("certs/dev"),
    at: AtOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Check the signatures and digests, as the hub does, without the body key."""
    envelope = read_envelope(envelope_file)
    suite = verify(envelope, load_directory(certs), _now(at))
    result = {
        "valid": True,
        "message_id": envelope.message_id,
        "sender": envelope.sender,
        "suite": suite.id,
        "signatures": [s.algorithm for s in envelope.wire.signatures],
        "recipients": list(envelope.recipients),
    }
    if output is OutputFormat.JSON:
        print_json(result)
    else:
        console.print(
            f"[green]valid[/]: {envelope.message_id} signed by {envelope.sender} "
            f"({suite.id}: {' + '.join(result['signatures'])}), "  # type: ignore[arg-type]
            f"for {', '.join(envelope.recipients)}"
        )


@app.command("open")
def open_command(
    envelope_file: Annotated[Path, typer.Argument(help="Envelope file.")],
    unit: Annotated[str, typer.Option("--as", help="Recipient unit opening it.")],
    out: Annotated[Path, typer.Option("--out", help="Body JSON file to write.")],
    certs: CertsOption = Path("certs/dev"),
    at: AtOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Verify, decrypt as a recipient, check the body against the header, write the body."""
    envelope = read_envelope(envelope_file)
    opened = open_envelope(
        envelope, keyring=load_keyring(certs, unit), directory=load_directory(certs), now=_now(at)
    )
    attachments_dir = out.parent / f"{out.stem}.attachments" if opened.body.attachments else None
    body_json = opened.body.to_json(attachments_dir=attachments_dir)
    write_atomic(out, (json.dumps(body_json, indent=2, ensure_ascii=False) + "\n").encode())
    log.info("envelope opened", message_id=envelope.message_id, unit=unit)
    summary = {
        "message_id": envelope.message_id,
        "opened_by": unit,
        "out": str(out),
        "persons": len(opened.body.persons),
        "organisations": len(opened.body.organisations),
        "attachments": len(opened.body.attachments),
    }
    if output is OutputFormat.JSON:
        print_json(summary)
    else:
        console.print(f"[green]opened[/] {envelope.message_id} as {unit} -> {out}")


@app.command("show")
def show_command(
    envelope_file: Annotated[Path, typer.Argument(help="Envelope file.")],
) -> None:
    """Print the outer header as JSON (nothing is verified or decrypted)."""
    print_json(read_envelope(envelope_file).header_json())
