"""The user's commands: ``exchange send``, ``inbox``, ``read``, ``reply``, ``forward``, ``status``.

They work on a national node's store (``--home``): ``send``, ``reply`` and ``forward``
seal with the acting unit's keys (``--as``, from ``--certs``) and queue the envelope in
the node's outbox, which the running node (``exchange node run``) brings to the hub.
Given ``--hub`` as well, the command also hands it to the hub at once and prints the
hub's evidence (the outcome is recorded in the store, so the node does not send it
again); ``read --hub`` sends the read acknowledgement at once. Without ``--home``,
``send --hub`` submits directly with the unit's own TLS certificate.

Exit codes: 0 done (for a direct submission: accepted), 2 bad input (file, field,
flag and why; an unknown message id), 3 refused (each rule, recipient and sentence)
or a check failed, 1 anything unexpected (an unreachable hub, say).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from exchange.cli.common import CertsOption, ExerciseStartOption, SpeedOption, make_clock
from exchange.cli.output import OutputFormat, console, print_json
from exchange.core.body import Body, check_body_against_header, load_body_file
from exchange.core.clock import Clock
from exchange.core.envelope import OpenedMessage, SealedEnvelope, seal, seal_forward
from exchange.core.evidence import EvidenceKind, EvidenceView, verify_evidence
from exchange.core.header import Header, load_header_file
from exchange.core.keys import Directory
from exchange.core.permission import sign_permission
from exchange.core.suites import suite_by_id
from exchange.errors import ExchangeError, InputError
from exchange.files import read_input, write_atomic
from exchange.logs import get_logger
from exchange.pki import load_directory, load_keyring, load_tls_material
from exchange.wire.v1 import exchange_pb2 as pb
from nodes.agent import OUTCOME_KINDS, send_pending_acks, submit_item, watch_log_once
from nodes.client import HubCallFailed, HubClient
from nodes.compose import (
    HeaderFlags,
    check_message_id,
    check_unit,
    header_from_flags,
    new_message_id,
    reply_header,
)
from nodes.inbox import hand_on, micros, open_item, read_item
from nodes.log_watch import prove_inclusion
from nodes.store import InboxRow, NodeStore, OutboxRow, OutboxState
from nodes.verification import check_evidence, relayed_units, verify_signed_directory

log = get_logger("exchange.messages")

# ------------------------------------------------------------------------- options

AsOption = Annotated[
    str,
    typer.Option(
        "--as", envvar="EXCHANGE_UNIT", help="The unit acting (its keys come from --certs)."
    ),
]
HomeOption = Annotated[
    Path | None,
    typer.Option("--home", envvar="EXCHANGE_HOME", help="The node's folder (its node.db)."),
]
HubOption = Annotated[
    str | None,
    typer.Option("--hub", envvar="EXCHANGE_HUB", help="The hub, host:port (e.g. 127.0.0.1:7443)."),
]
HubNameOption = Annotated[
    str | None,
    typer.Option(
        "--hub-name",
        envvar="EXCHANGE_HUB_NAME",
        help="Name the hub's TLS certificate must carry, when --hub is another name or address.",
    ),
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]
MessageIdArgument = Annotated[str, typer.Argument(metavar="MSGID", help="The message id.")]
DEFAULT_CERTS = Path("certs/dev")


# ------------------------------------------------------------------------- helpers


def iso_us(value: int | None) -> str | None:
    """Microseconds since the epoch as an ISO UTC time (None stays None)."""
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1_000_000, tz=UTC).isoformat().replace("+00:00", "Z")


def _open_store(home: Path) -> NodeStore:
    return NodeStore.open(home)


def _node_directory(store: NodeStore, directory: Directory, now: datetime) -> pb.Directory | None:
    signed = store.signed_directory()
    if signed is None:
        return None
    return verify_signed_directory(pb.SignedDirectory.FromString(signed), directory, now)


def check_acting_unit(store: NodeStore, unit: str, directory: Directory, now: datetime) -> bool:
    """Whether ``unit`` may act through this node: its own, or one it relays.

    Returns True when ``unit`` is a relayed unit; an :class:`InputError` otherwise.
    """
    check_unit(unit, "as")
    if unit == store.unit:
        return False
    hub_directory = _node_directory(store, directory, now)
    if hub_directory is None:
        raise InputError(
            f"the node at {store.home} is {store.unit}'s; it acts for {unit} only if it relays "
            f"{unit}, and it has not fetched the hub's directory yet (start the node once)"
        )
    relayed = relayed_units(hub_directory, store.unit or "")
    if unit not in relayed:
        also = f" and the units it relays ({', '.join(relayed)})" if relayed else ""
        raise InputError(
            f"the node at {store.home} is {store.unit}'s; it acts for {store.unit}{also}, "
            f"not for {unit}"
        )
    return True


def _inbox_item(store: NodeStore, message_id: str, unit: str) -> InboxRow:
    item = store.inbox_item(message_id, unit)
    if item is None:
        raise InputError(f"{unit} has received no message {message_id} in the node at {store.home}")
    return item


def _violations_json(view: EvidenceView) -> list[dict[str, str]]:
    return [v.to_json() for v in view.violations]


def _evidence_json(view: EvidenceView) -> dict[str, Any]:
    out = view.to_json()
    out["hub_time"] = iso_us(view.hub_time_us)
    return out


def _print_violations(view: EvidenceView) -> None:
    for violation in view.violations:
        who = f" ({violation.recipient})" if violation.recipient else ""
        console.print(f"  [red]{violation.rule}[/]{who}: {violation.reason}", highlight=False)


def _print_outcome(message_id: str, view: EvidenceView) -> None:
    if view.kind is EvidenceKind.ACCEPTED:
        console.print(
            f"[green]accepted[/] {message_id} at {iso_us(view.hub_time_us)} "
            f"(log entry {view.log_index})",
            highlight=False,
        )
    else:
        console.print(f"[red]refused[/] {message_id}:", highlight=False)
        _print_violations(view)


def _exit_for(view: EvidenceView | None) -> None:
    if view is not None and view.kind is EvidenceKind.REFUSED:
        raise typer.Exit(3)


async def _with_client(hub: str, certs: Path, unit: str, hub_name: str | None, work: Any) -> Any:
    async with HubClient(hub, load_tls_material(certs, unit), server_name=hub_name) as client:
        return await work(client)


def _queue_and_maybe_submit(
    envelope: SealedEnvelope,
    *,
    operation: str,
    store: NodeStore,
    hub: str | None,
    hub_name: str | None,
    certs: Path,
    directory: Directory,
    clock: Clock,
    output: OutputFormat,
) -> None:
    """Queue in the node's outbox; with ``--hub``, hand it over now and print the outcome."""
    item = store.enqueue(envelope, operation=operation, now_us=micros(clock.now()))
    log.info("queued", message_id=envelope.message_id, sender=envelope.sender, operation=operation)
    result: dict[str, Any] = {
        "message_id": envelope.message_id,
        "sender": envelope.sender,
        "recipients": list(envelope.recipients),
        "state": OutboxState.QUEUED,
        "home": str(store.home),
    }
    view: EvidenceView | None = None
    if hub is not None:
        node_unit = store.unit or envelope.sender

        async def work(client: HubClient) -> str:
            return await submit_item(item, client, store, directory, clock)

        try:
            result["state"] = asyncio.run(_with_client(hub, certs, node_unit, hub_name, work))
        except HubCallFailed as error:
            result["note"] = f"the hub is unavailable ({error.status.name}); the node will retry"
        done = store.outbox_item(envelope.message_id)
        if done is not None and done.state == OutboxState.FAILED:
            result["error"] = done.error
        records = [
            r for r in store.evidences(envelope.message_id) if r.kind in ("accepted", "refused")
        ]
        if records:
            view = verify_evidence(
                pb.Evidence.FromString(records[-1].evidence), directory, clock.now()
            )
            result["evidence"] = _evidence_json(view)
    if output is OutputFormat.JSON:
        print_json(result)
    elif view is not None:
        _print_outcome(envelope.message_id, view)
    elif result["state"] == OutboxState.FAILED:
        console.print(
            f"[red]failed[/] {envelope.message_id}: {result.get('error', '')}", highlight=False
        )
    else:
        note = f" ({result['note']})" if "note" in result else ""
        console.print(
            f"[cyan]queued[/] {envelope.message_id} from {envelope.sender} to "
            f"{', '.join(envelope.recipients)} in {store.home}{note}",
            highlight=False,
        )
    if result["state"] == OutboxState.FAILED:
        raise typer.Exit(3)
    _exit_for(view)


def _submit_direct(
    envelope: SealedEnvelope,
    *,
    forward: bool,
    hub: str,
    hub_name: str | None,
    certs: Path,
    directory: Directory,
    clock: Clock,
    output: OutputFormat,
) -> None:
    """Submit with the sender's own TLS certificate and print the verified evidence."""

    async def work(client: HubClient) -> pb.Evidence:
        if forward:
            return await client.forward(envelope.raw)
        return await client.submit(envelope.raw)

    evidence = asyncio.run(_with_client(hub, certs, envelope.sender, hub_name, work))
    view = check_evidence(
        evidence,
        directory,
        clock.now(),
        message_id=envelope.message_id,
        envelope=envelope.raw,
        kinds=OUTCOME_KINDS,
    )
    log.info("submitted", message_id=envelope.message_id, outcome=view.kind.value)
    if output is OutputFormat.JSON:
        print_json(
            {
                "message_id": envelope.message_id,
                "outcome": view.kind.value,
                "violations": _violations_json(view),
                "evidence": _evidence_json(view),
            }
        )
    else:
        _print_outcome(envelope.message_id, view)
    _exit_for(view)


def _deliver(
    envelope: SealedEnvelope,
    *,
    operation: str,
    store: NodeStore | None,
    hub: str | None,
    hub_name: str | None,
    certs: Path,
    directory: Directory,
    clock: Clock,
    output: OutputFormat,
) -> None:
    if store is not None:
        _queue_and_maybe_submit(
            envelope,
            operation=operation,
            store=store,
            hub=hub,
            hub_name=hub_name,
            certs=certs,
            directory=directory,
            clock=clock,
            output=output,
        )
    elif hub is not None:
        _submit_direct(
            envelope,
            forward=operation == "forward",
            hub=hub,
            hub_name=hub_name,
            certs=certs,
            directory=directory,
            clock=clock,
            output=output,
        )
    else:  # pragma: no cover - checked by the callers before sealing
        raise InputError("give --home (queue in your node) or --hub (submit directly)")


def _body_from(text: str | None, body_file: Path | None) -> Body:
    if body_file is not None and text is not None:
        raise InputError("give the body as --text or as --body FILE, not both")
    if body_file is not None:
        return load_body_file(body_file)
    return Body(text=text or "")


# ------------------------------------------------------------------------- send


def send_command(
    unit: AsOption,
    header_file: Annotated[
        Path | None, typer.Option("--header", help="Header file (JSON contract).")
    ] = None,
    body_file: Annotated[Path | None, typer.Option("--body", help="Body file (JSON).")] = None,
    to: Annotated[
        list[str] | None, typer.Option("--to", help="Recipient unit (repeat for more).")
    ] = None,
    cc: Annotated[list[str] | None, typer.Option("--cc", help="Copy recipient (repeat).")] = None,
    channel: Annotated[str, typer.Option("--channel", help="SIENA, CT or ARO.")] = "SIENA",
    crime_area: Annotated[
        str | None, typer.Option("--crime-area", help="e.g. terrorism, drug_trafficking.")
    ] = None,
    kind: Annotated[str, typer.Option("--kind", help="REQUEST or INFORMATION.")] = "INFORMATION",
    codes: Annotated[str, typer.Option("--codes", help="Handling codes, e.g. H0,H2.")] = "H0",
    h3_text: Annotated[
        str, typer.Option("--h3-text", help="The H3 restriction, in words (sets H3).")
    ] = "",
    priority: Annotated[
        str, typer.Option("--priority", help="normal, urgent or urgent_direct.")
    ] = "normal",
    purpose: Annotated[
        str,
        typer.Option(
            "--purpose",
            help="cross_checking, operational_analysis, strategic_analysis, information_exchange.",
        ),
    ] = "information_exchange",
    classification: Annotated[
        str,
        typer.Option("--classification", help="UNCLASSIFIED, RESTREINT_UE or CONFIDENTIEL_UE."),
    ] = "RESTREINT_UE",
    case: Annotated[str | None, typer.Option("--case", help="Case id the message belongs to.")] = (
        None
    ),
    evaluation: Annotated[
        str | None,
        typer.Option("--evaluation", help="4x4 code when the body names persons, e.g. B2."),
    ] = None,
    justification: Annotated[
        str,
        typer.Option("--justification", help="Why victims, witnesses or minors must travel."),
    ] = "",
    text: Annotated[str | None, typer.Option("--text", help="The body's text.")] = None,
    message_id: Annotated[
        str | None, typer.Option("--id", help="Message id (default: a new UUID).")
    ] = None,
    home: HomeOption = None,
    hub: HubOption = None,
    hub_name: HubNameOption = None,
    certs: CertsOption = DEFAULT_CERTS,
    exercise_start: ExerciseStartOption = None,
    speed: SpeedOption = 1.0,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Seal and send a message: queue it in your node (--home), or submit it (--hub).

    The header comes from --header FILE (with --body FILE), or from flags: --to,
    --channel, --crime-area and the rest, with --text or --body FILE (the persons and
    organisations of a body file are declared from it). With both --home and --hub, it
    is queued and handed to the hub at once (the node sends it later if the hub is away).
    """
    check_unit(unit, "as")
    if home is None and hub is None:
        raise InputError("give --home (queue in your node's outbox) or --hub (submit directly)")
    clock = make_clock(exercise_start, speed)
    if header_file is not None:
        flags_given = [
            name
            for name, value in (
                ("--to", to),
                ("--cc", cc),
                ("--crime-area", crime_area),
                ("--text", text),
                ("--case", case),
                ("--evaluation", evaluation),
                ("--id", message_id),
            )
            if value
        ]
        if flags_given:
            raise InputError(
                f"--header gives the whole header; drop {', '.join(flags_given)} "
                "(or drop --header and use flags)"
            )
        if body_file is None:
            raise InputError("--header needs --body FILE (the content it declares)")
        header: Header = load_header_file(header_file)
        if header.sender != unit:
            raise InputError(
                f"the header's sender is {header.sender}, but --as is {unit}",
            )
        body = load_body_file(body_file)
        problems = check_body_against_header(body, header.subjects)
        if problems:
            # Caught here rather than by the recipient, who would reject it on arrival.
            raise InputError(
                f"{body_file}: the body does not match the header {header_file}: "
                + "; ".join(problems)
            )
    else:
        body = _body_from(text, body_file)
        header = header_from_flags(
            unit,
            HeaderFlags(
                to=to or (),
                cc=cc or (),
                channel=channel,
                crime_area=crime_area,
                kind=kind,
                codes=codes,
                h3_text=h3_text,
                priority=priority,
                purpose=purpose,
                classification=classification,
                case=case,
                evaluation=evaluation,
                justification=justification,
                message_id=message_id,
            ),
            body,
        )
    directory = load_directory(certs)
    now = clock.now()
    store = _open_store(home) if home is not None else None
    if store is not None:
        check_acting_unit(store, unit, directory, now)
    envelope = seal(header, body, keyring=load_keyring(certs, unit), directory=directory, now=now)
    _deliver(
        envelope,
        operation="submit",
        store=store,
        hub=hub,
        hub_name=hub_name,
        certs=certs,
        directory=directory,
        clock=clock,
        output=output,
    )


# ------------------------------------------------------------------------- inbox


def inbox_command(
    unit: AsOption,
    home: HomeOption = None,
    certs: CertsOption = DEFAULT_CERTS,
    exercise_start: ExerciseStartOption = None,
    speed: SpeedOption = 1.0,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """List what a unit received through a node (a relayed unit: through its relay's).

    For a relayed unit, listing hands the new messages on: each is opened with the
    unit's key to check it, and the node acknowledges it on the unit's behalf.
    """
    if home is None:
        raise InputError("give --home: the node whose inbox to list")
    store = _open_store(home)
    clock = make_clock(exercise_start, speed)
    directory = load_directory(certs)
    relayed = check_acting_unit(store, unit, directory, clock.now())
    if relayed:
        keyring = load_keyring(certs, unit)
        for item in store.inbox(unit):
            if item.handed_on_at_us is None:
                hand_on(item, store=store, keyring=keyring, directory=directory, now=clock.now())
    items = store.inbox(unit)
    rows = [
        {
            "message_id": item.message_id,
            "from": item.sender,
            "kind": item.kind,
            "channel": item.channel,
            "crime_area": item.crime_area,
            "case": item.case_id,
            "in_reply_to": item.in_reply_to,
            "received_at": iso_us(item.received_at_us),
            "accepted_at": iso_us(item.accepted_at_us),
            "read": item.read_at_us is not None,
            "state": item.state,
            "rejected": {"code": item.reject_code, "reason": item.reject_reason}
            if item.state == "rejected"
            else None,
        }
        for item in items
    ]
    if output is OutputFormat.JSON:
        print_json({"unit": unit, "home": str(home), "messages": rows})
        return
    table = Table(title=f"Inbox of {unit} ({len(rows)})")
    for column in ("message id", "from", "kind", "channel", "crime area", "received", "read"):
        table.add_column(column)
    for row in rows:
        read = "yes" if row["read"] else "[bold]no[/]"
        if row["state"] == "rejected":
            read = f"[red]rejected ({row['rejected']['code']})[/]"  # type: ignore[index]
        table.add_row(
            str(row["message_id"]),
            str(row["from"]),
            str(row["kind"]),
            str(row["channel"]),
            str(row["crime_area"]),
            str(row["received_at"]),
            read,
        )
    console.print(table)


# ------------------------------------------------------------------------- read


def _print_body(opened: OpenedMessage) -> None:
    header = opened.header
    console.print(
        f"[bold]{header.id}[/] {header.kind.value} from {header.sender}"
        + (f" (provided by {opened.provider})" if opened.provider != header.sender else ""),
        highlight=False,
    )
    console.print(
        f"to {', '.join(header.to)}"
        + (f", cc {', '.join(header.cc)}" if header.cc else "")
        + f"; {header.channel.value}, {header.crime_area.value}, {header.classification.value}, "
        + f"handling {', '.join(sorted(c.value for c in header.handling.codes))}"
        + (f", case {header.case}" if header.case else "")
        + (f", in reply to {header.in_reply_to}" if header.in_reply_to else ""),
        highlight=False,
    )
    if header.evaluation is not None:
        console.print(f"evaluation {header.evaluation.code}", highlight=False)
    console.print()
    console.print(opened.body.text, highlight=False, markup=False)
    body = opened.body
    sections: list[tuple[str, list[str], list[list[str]]]] = [
        (
            "Persons",
            ["family name", "given names", "born", "nationality", "role", "minor"],
            [
                [
                    p.family_name,
                    p.given_names,
                    p.birth_date.isoformat() if p.birth_date else "",
                    p.nationality,
                    p.role.value,
                    "yes" if p.minor else "no",
                ]
                for p in body.persons
            ],
        ),
        (
            "Organisations",
            ["name", "country", "registration"],
            [[o.name, o.country, o.registration] for o in body.organisations],
        ),
        (
            "Vehicles",
            ["plate", "country", "VIN"],
            [[v.plate, v.country, v.vin or ""] for v in body.vehicles],
        ),
        (
            "Documents",
            ["kind", "number", "country"],
            [[d.kind, d.number, d.country] for d in body.documents],
        ),
        ("Phones", ["number"], [[p] for p in body.phones]),
        (
            "Attachments",
            ["name", "type", "bytes"],
            [[a.name, a.media_type, str(a.size)] for a in body.attachments],
        ),
    ]
    for title, columns, rows in sections:
        if not rows:
            continue
        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)


def read_command(
    message_id: MessageIdArgument,
    unit: AsOption,
    home: HomeOption = None,
    hub: HubOption = None,
    hub_name: HubNameOption = None,
    certs: CertsOption = DEFAULT_CERTS,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Also write the body JSON here (attachments beside it)."),
    ] = None,
    exercise_start: ExerciseStartOption = None,
    speed: SpeedOption = 1.0,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Open a received message with the unit's key, print it and mark it read.

    The read acknowledgement is queued for the node; with --hub it is sent at once.
    """
    if home is None:
        raise InputError("give --home: the node that received the message")
    store = _open_store(home)
    clock = make_clock(exercise_start, speed)
    directory = load_directory(certs)
    check_acting_unit(store, unit, directory, clock.now())
    item = _inbox_item(store, message_id, unit)
    if item.state == "rejected":
        raise InputError(
            f"message {message_id} was rejected on arrival and cannot be read: "
            f"[{item.reject_code}] {item.reject_reason}"
        )
    opened = read_item(
        item, store=store, keyring=load_keyring(certs, unit), directory=directory, now=clock.now()
    )
    result: dict[str, Any] = {}
    if hub is not None:
        node_unit = store.unit or unit

        async def work(client: HubClient) -> int:
            return await send_pending_acks(client, store, directory, clock)

        try:
            asyncio.run(_with_client(hub, certs, node_unit, hub_name, work))
        except HubCallFailed as error:
            result["note"] = f"the hub is unavailable ({error.status.name}); the node will retry"
        reads = [r for r in store.evidences(message_id) if r.kind == "read" and r.unit == unit]
        if reads:
            result["read_evidence"] = _evidence_json(
                verify_evidence(pb.Evidence.FromString(reads[-1].evidence), directory, clock.now())
            )
    attachments_dir = None
    if out is not None:
        attachments_dir = (
            out.parent / f"{out.stem}.attachments" if opened.body.attachments else None
        )
        body_json = opened.body.to_json(attachments_dir=attachments_dir)
        write_atomic(
            out, (json.dumps(body_json, indent=2, ensure_ascii=False) + "\n").encode(), mode=0o600
        )
    if output is OutputFormat.JSON:
        print_json(
            {
                "message_id": message_id,
                "unit": unit,
                "provider": opened.provider,
                "header": opened.header.to_json(),
                "body": opened.body.to_json(),
                **result,
            }
        )
        return
    _print_body(opened)
    if "note" in result:
        console.print(f"[yellow]{result['note']}[/]", highlight=False)
    elif "read_evidence" in result:
        console.print(
            f"[green]read acknowledged[/] (log entry {result['read_evidence']['log_index']})",
            highlight=False,
        )


# ------------------------------------------------------------------------- reply


def reply_command(
    message_id: MessageIdArgument,
    unit: AsOption,
    text: Annotated[str | None, typer.Option("--text", help="The reply's text.")] = None,
    body_file: Annotated[Path | None, typer.Option("--body", help="Body file (JSON).")] = None,
    codes: Annotated[str, typer.Option("--codes", help="Handling codes, e.g. H0,H2.")] = "H0",
    classification: Annotated[
        str | None,
        typer.Option("--classification", help="Default: the classification of the request."),
    ] = None,
    evaluation: Annotated[
        str | None,
        typer.Option("--evaluation", help="4x4 code when the body names persons, e.g. B2."),
    ] = None,
    home: HomeOption = None,
    hub: HubOption = None,
    hub_name: HubNameOption = None,
    certs: CertsOption = DEFAULT_CERTS,
    exercise_start: ExerciseStartOption = None,
    speed: SpeedOption = 1.0,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Answer a received message: a REPLY to its sender, same case, channel and crime area."""
    check_message_id(message_id, "MSGID")
    if home is None:
        raise InputError("give --home: the node that received the message to answer")
    if text is None and body_file is None:
        raise InputError("give the reply's content: --text TEXT or --body FILE")
    store = _open_store(home)
    clock = make_clock(exercise_start, speed)
    directory = load_directory(certs)
    now = clock.now()
    check_acting_unit(store, unit, directory, now)
    item = _inbox_item(store, message_id, unit)
    original = SealedEnvelope.from_bytes(item.envelope).header
    body = _body_from(text, body_file)
    header = reply_header(
        original,
        unit,
        body,
        codes=codes,
        classification=classification,
        evaluation=evaluation,
        new_id=new_message_id,
    )
    envelope = seal(header, body, keyring=load_keyring(certs, unit), directory=directory, now=now)
    _deliver(
        envelope,
        operation="submit",
        store=store,
        hub=hub,
        hub_name=hub_name,
        certs=certs,
        directory=directory,
        clock=clock,
        output=output,
    )


# ------------------------------------------------------------------------- forward


def _read_permission(path: Path) -> bytes:
    data = read_input(path, "permission")
    signed = pb.SignedPermission()
    try:
        signed.ParseFromString(data)
    except Exception:
        raise InputError(
            f"{path}: not a signed permission (exchange.v1.SignedPermission)"
        ) from None
    if not signed.permission or not signed.signatures:
        raise InputError(f"{path}: not a signed permission (no permission or no signature)")
    return data


def forward_command(
    message_id: MessageIdArgument,
    unit: AsOption,
    to: Annotated[list[str], typer.Option("--to", help="New recipient (repeat for more).")],
    cc: Annotated[list[str] | None, typer.Option("--cc", help="Copy recipient (repeat).")] = None,
    permission: Annotated[
        Path | None,
        typer.Option("--permission", help="The provider's signed permission (needed for H2)."),
    ] = None,
    home: HomeOption = None,
    hub: HubOption = None,
    hub_name: HubNameOption = None,
    certs: CertsOption = DEFAULT_CERTS,
    exercise_start: ExerciseStartOption = None,
    speed: SpeedOption = 1.0,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Forward a received message's content to other units, keeping the provider's header."""
    check_message_id(message_id, "MSGID")
    if home is None:
        raise InputError("give --home: the node that received the message to forward")
    new_to = [check_unit(u, "to") for u in to]
    new_cc = [check_unit(u, "cc") for u in cc or ()]
    store = _open_store(home)
    clock = make_clock(exercise_start, speed)
    directory = load_directory(certs)
    now = clock.now()
    check_acting_unit(store, unit, directory, now)
    item = _inbox_item(store, message_id, unit)
    if item.state == "rejected":
        raise InputError(f"message {message_id} was rejected on arrival; it cannot be forwarded")
    keyring = load_keyring(certs, unit)
    if item.addressee != store.unit and item.handed_on_at_us is None:
        hand_on(item, store=store, keyring=keyring, directory=directory, now=now)
    opened = open_item(item, keyring=keyring, directory=directory, now=now)
    envelope = seal_forward(
        opened,
        message_id=new_message_id(),
        to=new_to,
        cc=new_cc,
        keyring=keyring,
        directory=directory,
        now=now,
        permission=_read_permission(permission) if permission is not None else b"",
    )
    _deliver(
        envelope,
        operation="forward",
        store=store,
        hub=hub,
        hub_name=hub_name,
        certs=certs,
        directory=directory,
        clock=clock,
        output=output,
    )


# ------------------------------------------------------------------------- permit


def permit_command(
    message_id: MessageIdArgument,
    unit: AsOption,
    grantee: Annotated[str, typer.Option("--grantee", help="The unit allowed to forward it.")],
    to: Annotated[
        list[str], typer.Option("--to", help="A unit it may be forwarded to (repeat for more).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The signed permission file to write.")],
    purpose: Annotated[
        str, typer.Option("--purpose", help="The purpose the permission is given for.")
    ] = "information_exchange",
    home: HomeOption = None,
    certs: CertsOption = DEFAULT_CERTS,
    exercise_start: ExerciseStartOption = None,
    speed: SpeedOption = 1.0,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """As the provider of a sent message, sign a permission to forward it (H2).

    The grantee passes the file to `exchange forward --permission FILE`.
    """
    check_message_id(message_id, "MSGID")
    if home is None:
        raise InputError("give --home: the node that sent the message")
    check_unit(grantee, "grantee")
    recipients = [check_unit(u, "to") for u in to]
    store = _open_store(home)
    clock = make_clock(exercise_start, speed)
    directory = load_directory(certs)
    now = clock.now()
    check_acting_unit(store, unit, directory, now)
    sent = store.outbox_item(message_id)
    if sent is None or sent.sender != unit:
        raise InputError(f"{unit} has sent no message {message_id} from the node at {home}")
    envelope = SealedEnvelope.from_bytes(sent.envelope)
    signed = sign_permission(
        message_id=message_id,
        grantee=grantee,
        recipients=recipients,
        purpose=purpose,
        keyring=load_keyring(certs, unit),
        directory=directory,
        suite=suite_by_id(envelope.suite_id),
        now=now,
    )
    write_atomic(out, signed)
    log.info("permission signed", message_id=message_id, provider=unit, grantee=grantee)
    result = {
        "message_id": message_id,
        "provider": unit,
        "grantee": grantee,
        "recipients": recipients,
        "purpose": purpose,
        "out": str(out),
    }
    if output is OutputFormat.JSON:
        print_json(result)
    else:
        console.print(
            f"[green]permitted[/] {grantee} to forward {message_id} to {', '.join(recipients)} "
            f"-> {out}",
            highlight=False,
        )


# ------------------------------------------------------------------------- status


async def _from_hub(
    client: HubClient, store: NodeStore, message_id: str, directory: Directory, now: datetime
) -> dict[str, Any]:
    """Fetch the message's evidences and the hub's newest head; prove each in the log."""
    for evidence in await client.get_evidences(message_id):
        store.add_evidence(verify_evidence(evidence, directory, now))
    checked = await watch_log_once(client, store, directory, now)
    proven: dict[int, bool] = {}
    for record in store.evidences(message_id):
        view = verify_evidence(pb.Evidence.FromString(record.evidence), directory, now)
        proven[view.log_index] = await prove_inclusion(view, checked.head, client.inclusion_proof)
    return {
        "tree_size": checked.head.size,
        "root_hash": checked.head.root_hash.hex(),
        "proven": proven,
    }


def status_command(
    message_id: MessageIdArgument,
    unit: AsOption,
    home: HomeOption = None,
    hub: Annotated[
        str | None,
        typer.Option(
            "--hub",
            envvar="EXCHANGE_HUB",
            help="Fetch the evidence chain and log proofs from this hub (default: the node's).",
        ),
    ] = None,
    hub_name: HubNameOption = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Show only what the node holds; ask no hub.")
    ] = False,
    certs: CertsOption = DEFAULT_CERTS,
    exercise_start: ExerciseStartOption = None,
    speed: SpeedOption = 1.0,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Show what happened to a message: its outbox state and every evidence, verified.

    The sender's node holds the hub's answer to the submission (accepted or refused);
    the recipient's node holds the acceptance, delivered and read evidences.
    """
    if home is None:
        raise InputError("give --home: the node that sent or received the message")
    store = _open_store(home)
    clock = make_clock(exercise_start, speed)
    directory = load_directory(certs)
    now = clock.now()
    check_acting_unit(store, unit, directory, now)
    sent: OutboxRow | None = store.outbox_item(message_id)
    if sent is not None and sent.sender != unit:
        sent = None
    received = store.inbox_item(message_id, unit)
    if sent is None and received is None:
        raise InputError(f"{unit} has no message {message_id} in the node at {home}")
    address = None if offline else hub or store.hub_address()
    log_check: dict[str, Any] | None = None
    if address:
        connection_unit = store.unit or unit
        try:
            log_check = asyncio.run(
                _with_client(
                    address,
                    certs,
                    connection_unit,
                    hub_name,
                    lambda client: _from_hub(client, store, message_id, directory, now),
                )
            )
        except HubCallFailed as error:
            if not error.retryable:
                raise
            console.print(
                f"[yellow]the hub at {address} is not reachable[/]: showing what the node holds",
                highlight=False,
            )
    alarms = store.misbehaviours()
    chain: list[dict[str, Any]] = []
    failures = 0
    for record in store.evidences(message_id):
        entry: dict[str, Any] = {
            "kind": record.kind,
            "unit": record.unit,
            "hub_time": iso_us(record.hub_time_us),
            "log_index": record.log_index,
        }
        if log_check is not None:
            entry["in_log"] = log_check["proven"].get(record.log_index, False)
        try:
            view = verify_evidence(pb.Evidence.FromString(record.evidence), directory, now)
            entry["verified"] = True
            entry["violations"] = _violations_json(view)
        except ExchangeError as error:
            failures += 1
            entry["verified"] = False
            entry["error"] = f"[{error.code}] {error.message}"
        chain.append(entry)
    result: dict[str, Any] = {"message_id": message_id, "unit": unit, "evidences": chain}
    if log_check is not None:
        result["log"] = {"tree_size": log_check["tree_size"], "root_hash": log_check["root_hash"]}
    if alarms:
        result["log_alarm"] = alarms
    if sent is not None:
        result["outbox"] = {
            "state": sent.state,
            "operation": sent.operation,
            "recipients": [r for r in sent.recipients.split(",") if r],
            "attempts": sent.attempts,
            "status": sent.status,
            "error": sent.error,
            "queued_at": iso_us(sent.created_at_us),
        }
    if received is not None:
        result["inbox"] = {
            "from": received.sender,
            "state": received.state,
            "received_at": iso_us(received.received_at_us),
            "read_at": iso_us(received.read_at_us),
            "rejected": {"code": received.reject_code, "reason": received.reject_reason}
            if received.state == "rejected"
            else None,
        }
    if output is OutputFormat.JSON:
        print_json(result)
    else:
        if sent is not None:
            line = f"sent by {unit} to {', '.join(result['outbox']['recipients'])}: {sent.state}"
            if sent.state == OutboxState.FAILED or (sent.error and sent.state == "queued"):
                line += f" ({sent.status}: {sent.error})"
            console.print(line, highlight=False)
        if received is not None:
            console.print(
                f"received by {unit} from {received.sender}: {received.state}"
                + (f", read {result['inbox']['read_at']}" if received.read_at_us else ""),
                highlight=False,
            )
        table = Table(title=f"Evidences for {message_id}")
        for column in ("evidence", "unit", "hub time", "log entry", "signature", "in log", "rules"):
            table.add_column(column)
        for entry in chain:
            rules = ", ".join(
                f"{v['rule']}" + (f" ({v['recipient']})" if v["recipient"] else "")
                for v in entry.get("violations", [])
            )
            table.add_row(
                entry["kind"],
                entry["unit"],
                str(entry["hub_time"]),
                str(entry["log_index"]),
                "[green]verified[/]" if entry["verified"] else f"[red]{entry['error']}[/]",
                "-"
                if "in_log" not in entry
                else ("[green]proven[/]" if entry["in_log"] else "[red]not proven[/]"),
                rules,
            )
        console.print(table)
        if log_check is not None:
            console.print(
                f"checked against the hub's signed tree head of {log_check['tree_size']} "
                f"entries (root {log_check['root_hash'][:16]}...)",
                highlight=False,
            )
        for alarm in alarms:
            console.print(
                f"[bold red]ALARM[/]: the hub's log contradicts itself ({alarm['kind']}): heads "
                f"of {alarm['first']['size']} and {alarm['second']['size']} entries; both "
                f"signed heads are kept in the node store as proof",
                highlight=False,
            )
    unproven = log_check is not None and not all(e.get("in_log") for e in chain)
    if failures or alarms or unproven:
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    """Add the user commands at the top level of ``app``."""
    app.command("send")(send_command)
    app.command("inbox")(inbox_command)
    app.command("read")(read_command)
    app.command("reply")(reply_command)
    app.command("forward")(forward_command)
    app.command("permit")(permit_command)
    app.command("status")(status_command)
