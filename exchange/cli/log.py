"""``exchange log``: audit the exchange log, on the live store or from an export."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import Engine, and_, select

from exchange.cli.common import CertsOption, DbOption
from exchange.cli.output import OutputFormat, console, print_json
from exchange.core.audit import AuditReport, audit_log, verify_exported
from exchange.core.merkle import (
    InMemoryLeaves,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_at,
)
from exchange.errors import ExchangeError, InputError
from exchange.files import read_input, write_atomic
from exchange.pki import load_directory
from exchange.store.database import database_url, make_engine
from exchange.store.tables import EVIDENCES, LOG_ENTRIES, TREE_HEADS
from exchange.wire.v1 import exchange_pb2 as pb

app = typer.Typer(help="Audit the exchange log (a Merkle tree, RFC 9162).", no_args_is_help=True)
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


class LogCheckFailed(ExchangeError):
    """The log does not match what the hub signed."""

    exit_code = 3
    code = "LOG-VERIFY-FAILED"


def _entries(engine: Engine) -> list[tuple[int, bytes]]:
    with engine.connect() as db:
        return [
            (int(i), bytes(e))
            for i, e in db.execute(
                select(LOG_ENTRIES.c.idx, LOG_ENTRIES.c.entry).order_by(LOG_ENTRIES.c.idx)
            )
        ]


def _tree(engine: Engine) -> MerkleTree:
    return MerkleTree(InMemoryLeaves(leaf_hash(e) for _, e in _entries(engine)))


def _report(report: AuditReport, output: OutputFormat) -> None:
    if output is OutputFormat.JSON:
        print_json(report.to_json())
    elif report.ok:
        console.print(
            f"[green]log verified[/]: {report.size} entries, root {report.root.hex()}, "
            f"{report.heads_checked} signed tree heads and {report.evidences_checked} "
            f"evidences agree"
        )
    first = report.first_problem
    if first is not None:
        if output is not OutputFormat.JSON:
            for problem in sorted(report.problems, key=lambda p: p.index):
                console.print(f"[red]entry {problem.index}[/]: {problem.what}")
        raise LogCheckFailed(f"first bad entry {first.index}: {first.what}")


@app.command("verify")
def verify_command(
    db: DbOption = None,
    certs: CertsOption = Path("certs/dev"),
    file: Annotated[
        Path | None, typer.Option("--file", help="Verify an export offline instead of a store.")
    ] = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Recompute the tree; check every signed head and evidence (exit 3: first bad entry)."""
    directory = load_directory(certs)
    now = datetime.now(UTC)
    if file is not None:
        _verify_file(file, directory, now, output)
        return
    engine = make_engine(database_url(db))
    with engine.connect() as conn:
        evidences = [bytes(r[0]) for r in conn.execute(select(EVIDENCES.c.evidence))]
        heads = [bytes(r[0]) for r in conn.execute(select(TREE_HEADS.c.signed))]
    report = audit_log(
        _entries(engine), evidences=evidences, heads=heads, directory=directory, now=now
    )
    _report(report, output)


def _verify_file(file: Path, directory: Any, now: datetime, output: OutputFormat) -> None:
    head: pb.SignedTreeHead | None = None
    entries: list[tuple[int, bytes, list[bytes]]] = []
    for number, line in enumerate(read_input(file, "export").decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if record["type"] == "tree_head":
                head = pb.SignedTreeHead.FromString(base64.b64decode(record["signed"]))
            elif record["type"] == "entry":
                entries.append(
                    (
                        int(record["index"]),
                        record["entry"].encode(),
                        [bytes.fromhex(h) for h in record["proof"]],
                    )
                )
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{file}, line {number}: not an export record ({error})") from None
    if head is None:
        raise InputError(f"{file}: the export holds no signed tree head")
    tree_head, problems, count = verify_exported(entries, head, directory, now)
    report = AuditReport(
        size=tree_head.size, root=tree_head.root_hash, heads_checked=1, problems=problems
    )
    if output is OutputFormat.JSON:
        print_json({**report.to_json(), "entries_checked": count})
        if problems:
            raise LogCheckFailed(f"first bad entry {report.first_problem.index}")  # type: ignore[union-attr]
        return
    if not problems:
        console.print(
            f"[green]export verified[/]: {count} entries proven in the tree of "
            f"{tree_head.size} entries the hub signed (root {tree_head.root_hash.hex()})"
        )
        return
    _report(report, output)


@app.command("proof")
def proof_command(
    index: Annotated[int, typer.Option("--index", min=0, help="Entry index.")],
    size: Annotated[
        int | None, typer.Option("--size", min=1, help="Tree size (default: the whole log).")
    ] = None,
    db: DbOption = None,
    output: FormatOption = OutputFormat.JSON,
) -> None:
    """The inclusion proof of entry INDEX in the tree of SIZE entries."""
    tree = _tree(make_engine(database_url(db)))
    tree_size = size or tree.size
    proof = inclusion_proof(tree, index, tree_size)
    print_json(
        {
            "index": index,
            "tree_size": tree_size,
            "leaf_hash": tree.leaves(index, index + 1)[0].hex(),
            "root_hash": root_at(tree, tree_size).hex(),
            "proof": [h.hex() for h in proof],
        }
    )


@app.command("consistency")
def consistency_command(
    old_size: Annotated[int, typer.Option("--old-size", min=0)],
    new_size: Annotated[int, typer.Option("--new-size", min=1)],
    db: DbOption = None,
) -> None:
    """The proof that the tree of OLD-SIZE entries is a prefix of the tree of NEW-SIZE."""
    tree = _tree(make_engine(database_url(db)))
    proof = consistency_proof(tree, old_size, new_size)
    print_json(
        {
            "old_size": old_size,
            "new_size": new_size,
            "old_root": root_at(tree, old_size).hex(),
            "new_root": root_at(tree, new_size).hex(),
            "proof": [h.hex() for h in proof],
        }
    )


def _day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{what} {text!r} is not an ISO date (YYYY-MM-DD)") from None


@app.command("export")
def export_command(
    from_date: Annotated[str, typer.Option("--from", help="First day (inclusive).")],
    to_date: Annotated[str, typer.Option("--to", help="Last day (inclusive).")],
    out: Annotated[Path, typer.Option("--out", help="JSON Lines file to write.")],
    db: DbOption = None,
) -> None:
    """A period's entries with inclusion proofs and the newest signed head, for auditors."""
    first, last = _day(from_date, "--from"), _day(to_date, "--to")
    start = int(datetime.combine(first, time.min, UTC).timestamp() * 1_000_000)
    end = int(datetime.combine(last + timedelta(days=1), time.min, UTC).timestamp() * 1_000_000)
    engine = make_engine(database_url(db))
    tree = _tree(engine)
    with engine.connect() as conn:
        newest = conn.execute(
            select(TREE_HEADS.c.size, TREE_HEADS.c.signed).order_by(TREE_HEADS.c.id.desc())
        ).first()
        if newest is None:
            raise InputError("the log has no signed tree head yet")
        head_size, signed = int(newest[0]), bytes(newest[1])
        rows = conn.execute(
            select(LOG_ENTRIES.c.idx, LOG_ENTRIES.c.entry)
            .where(
                and_(
                    LOG_ENTRIES.c.hub_time_us >= start,
                    LOG_ENTRIES.c.hub_time_us < end,
                    LOG_ENTRIES.c.idx < head_size,
                )
            )
            .order_by(LOG_ENTRIES.c.idx)
        ).all()
    lines = [
        json.dumps(
            {
                "type": "export",
                "from": first.isoformat(),
                "to": last.isoformat(),
                "tree_size": head_size,
                "entries": len(rows),
            }
        ),
        json.dumps({"type": "tree_head", "signed": base64.b64encode(signed).decode()}),
    ]
    for index, entry in rows:
        lines.append(
            json.dumps(
                {
                    "type": "entry",
                    "index": int(index),
                    "entry": bytes(entry).decode(),
                    "proof": [h.hex() for h in inclusion_proof(tree, int(index), head_size)],
                }
            )
        )
    write_atomic(out, ("\n".join(lines) + "\n").encode())
    console.print(f"exported {len(rows)} entries (tree of {head_size}) -> {out}")
