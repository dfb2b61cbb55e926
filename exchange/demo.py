"""``exchange demo``: a hub and eight national nodes on loopback, and a scripted exchange.

Everything is real: the dev PKI (made if missing), a gRPC hub with mutual TLS on
SQLite, node agents that submit, subscribe, open and acknowledge, and the user
commands (`exchange send`, `read`, `reply`, `forward`) as a liaison officer types them.
At the end: the timeline from the hub's exchange log, each unit's figures, and an
audit of the log against the tree heads the hub signed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from exchange.core.audit import audit_log
from exchange.core.clock import SystemClock
from exchange.core.log_entry import LogEntry, LogEvent
from exchange.core.registry import load_registry
from exchange.core.statistics import unit_figures
from exchange.errors import ExchangeError
from exchange.hub.background import BackgroundHub
from exchange.hub.server import HubConfig
from exchange.pki import Outcome, init_pki, load_directory
from exchange.store.database import make_engine
from exchange.store.tables import EVIDENCES, LOG_ENTRIES, TREE_HEADS
from nodes.agent import NodeConfig
from nodes.store import OutboxState
from nodes.testing import NodeThread

#: the units whose nodes run (XK.KP has none: EU.EULEX relays for it)
DEMO_NODES = ("AL.CTD", "RS.CTU", "ME.ARO", "BA.DKPT", "MK.CTS", "EU.EULEX", "AT.ENU", "EU.EUROPOL")


class DemoFailed(ExchangeError):
    """A step of the scripted exchange did not turn out as scripted."""

    exit_code = 1
    code = "DEMO-FAILED"


@dataclass
class Demo:
    """The running demo: where it lives, its hub and nodes, what happened."""

    workdir: Path
    certs: Path
    policies: Path
    console: Console
    hub: BackgroundHub | None = None
    nodes: dict[str, NodeThread] = field(default_factory=dict)
    steps: list[tuple[str, str]] = field(default_factory=list)

    @property
    def hub_address(self) -> str:
        assert self.hub is not None
        return f"127.0.0.1:{self.hub.port}"

    def home(self, unit: str) -> Path:
        return self.workdir / "nodes" / unit

    # ---------------------------------------------------------------- running

    def start(self) -> None:
        units = [u.id for u in load_registry(self.policies / "registry.yaml")]
        report = init_pki(self.certs, units)
        issued = len(report.slots) - report.count(Outcome.KEPT)
        self.console.print(
            f"[bold]PKI[/] {self.certs}: CA, hub and {len(units)} units, suites classic-2026 "
            f"and hybrid-pq-2026 ({issued} keys or certificates issued, "
            f"{report.count(Outcome.KEPT)} kept)"
        )
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        self.hub = BackgroundHub(
            HubConfig(
                listen="127.0.0.1:0",
                certs=self.certs,
                db_url=f"sqlite:///{self.workdir / 'hub.db'}",
                policies=self.policies,
                clock=SystemClock(),
                grace_seconds=1.0,
            )
        )
        self.hub.start()
        self.console.print(f"[bold]hub[/] listening on {self.hub_address} (mutual TLS, SQLite)")
        for unit in DEMO_NODES:
            node = NodeThread(
                NodeConfig(
                    unit=unit,
                    hub=self.hub_address,
                    certs=self.certs,
                    home=self.home(unit),
                    poll_seconds=0.2,
                )
            )
            node.start()
            self.nodes[unit] = node
        for node in self.nodes.values():
            node.wait_subscribed(timeout=20)
            node.wait_directory(timeout=20)
        self.console.print(f"[bold]nodes[/] {', '.join(DEMO_NODES)} connected and subscribed\n")

    def stop(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop()
        self.nodes.clear()
        if self.hub is not None:
            self.hub.stop()
            self.hub = None

    # ---------------------------------------------------------------- commands

    def run(self, *args: str, process: bool = False) -> dict[str, Any]:
        """Run an `exchange` command as a user would; its JSON output.

        Commands that only touch a node's store run in this process; one that talks to
        the hub itself runs as a process of its own (gRPC's asyncio support wants one
        event loop per process, and the nodes here already run theirs).
        """
        from exchange.cli.main import main

        shown = " ".join(a if " " not in a else f'"{a}"' for a in args)
        self.console.print(f"[dim]$ exchange {shown}[/]", highlight=False)
        full = [*args, "--certs", str(self.certs), "--format", "json"]
        if process:
            done = subprocess.run(
                [str(Path(sys.executable).parent / "exchange"), *full],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env={**os.environ, "EXCHANGE_LOG_LEVEL": "ERROR"},
            )
            code, text = done.returncode, done.stdout.strip()
        else:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main(full)
            text = out.getvalue().strip()
        try:
            result: dict[str, Any] = json.loads(text) if text else {}
        except json.JSONDecodeError:
            result = {"output": text}
        result["exit_code"] = code
        return result

    def wait(self, what: str, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out waiting for {what}")
            time.sleep(0.05)

    def outcome(self, unit: str, message_id: str, home_unit: str | None = None) -> str:
        """Wait for the hub's answer to a queued message: accepted, refused or failed."""
        store = self.nodes[home_unit or unit].store

        def answered() -> bool:
            item = store.outbox_item(message_id)
            return item is not None and item.state != OutboxState.QUEUED

        self.wait(f"the hub's answer to {message_id}", answered)
        item = store.outbox_item(message_id)
        assert item is not None
        return str(item.state)

    def received(self, unit: str, message_id: str, home_unit: str | None = None) -> None:
        store = self.nodes[home_unit or unit].store
        self.wait(
            f"{message_id} in {unit}'s inbox",
            lambda: store.inbox_item(message_id, unit) is not None,
        )

    def send(self, unit: str, *flags: str, home_unit: str | None = None) -> str:
        home = self.home(home_unit or unit)
        result = self.run("send", "--as", unit, "--home", str(home), *flags)
        message_id = str(result.get("message_id", ""))
        if not message_id:
            raise DemoFailed(f"exchange send as {unit} queued nothing: {result}")
        state = self.outcome(unit, message_id, home_unit)
        self.note(unit, f"{message_id[:8]}: {state}")
        return message_id

    def answer(self, unit: str, command: str, message_id: str, *flags: str) -> str:
        """Reply to or forward a received message from ``unit``'s node; the new message id."""
        result = self.run(command, message_id, "--as", unit, "--home", str(self.home(unit)), *flags)
        new_id = str(result.get("message_id", ""))
        if not new_id:
            raise DemoFailed(f"exchange {command} as {unit} queued nothing: {result}")
        self.note(unit, f"{command} {new_id[:8]}: {self.outcome(unit, new_id)}")
        return new_id

    def note(self, who: str, what: str) -> None:
        self.steps.append((who, what))
        self.console.print(f"  [cyan]{who}[/] {what}", highlight=False)


def script(demo: Demo, examples: Path) -> None:
    """The scripted exchange."""
    c = demo.console
    c.rule("1. Albania's CT directorate asks Europol to check a person and a company")
    request = demo.send(
        "AL.CTD",
        "--header",
        str(examples / "header-request.json"),
        "--body",
        str(examples / "body-request.json"),
    )
    demo.received("EU.EUROPOL", request)
    demo.run("read", request, "--as", "EU.EUROPOL", "--home", str(demo.home("EU.EUROPOL")))
    demo.note("EU.EUROPOL", f"{request[:8]}: opened and read (evidence 'read' goes to AL.CTD)")

    c.rule("2. Europol replies in the same case")
    reply_id = demo.answer(
        "EU.EUROPOL",
        "reply",
        request,
        "--text",
        "No hits in the analysis projects for the person; the company is known.",
    )
    demo.received("AL.CTD", reply_id)

    c.rule("3. Serbia's CT service informs Europol, copy to Austria's national unit")
    info = demo.send(
        "RS.CTU",
        "--to",
        "EU.EUROPOL",
        "--cc",
        "AT.ENU",
        "--channel",
        "CT",
        "--crime-area",
        "terrorism",
        "--kind",
        "INFORMATION",
        "--codes",
        "H0",
        "--text",
        "Travel pattern observed on the Belgrade-Vienna route (exercise data).",
    )
    demo.received("AT.ENU", info)

    c.rule("4. Europol forwards it to North Macedonia (H0: no permission needed)")
    demo.received("EU.EUROPOL", info)
    forward_id = demo.answer("EU.EUROPOL", "forward", info, "--to", "MK.CTS")
    demo.received("MK.CTS", forward_id)

    c.rule("5. Forwarding Albania's H2 request without Albania's permission is refused")
    demo.answer("EU.EUROPOL", "forward", request, "--to", "RS.CTU")

    c.rule("6. Montenegro's asset recovery office asks on the ARO channel")
    aro = demo.send(
        "ME.ARO",
        "--to",
        "EU.EUROPOL",
        "--channel",
        "ARO",
        "--crime-area",
        "money_laundering",
        "--kind",
        "REQUEST",
        "--text",
        "Request for asset tracing on a holding company.",
    )
    demo.received("EU.EUROPOL", aro)

    c.rule("7. Kosovo Police, relayed through EULEX, and Europol's answer")
    kosovo = demo.send(
        "XK.KP",
        "--to",
        "EU.EUROPOL",
        "--channel",
        "SIENA",
        "--crime-area",
        "drug_trafficking",
        "--kind",
        "REQUEST",
        "--text",
        "Request on a vehicle seen at the border.",
        home_unit="EU.EULEX",
    )
    demo.received("EU.EUROPOL", kosovo)
    answer_id = demo.answer(
        "EU.EUROPOL", "reply", kosovo, "--text", "The vehicle is recorded in two other cases."
    )
    demo.received("XK.KP", answer_id, home_unit="EU.EULEX")
    demo.run("read", answer_id, "--as", "XK.KP", "--home", str(demo.home("EU.EULEX")))
    demo.note("XK.KP", f"{answer_id[:8]}: read through EU.EULEX (both legs logged)")

    c.rule("8. Bosnia and Herzegovina on CT SIENA: not yet a member, refused")
    demo.send(
        "BA.DKPT",
        "--to",
        "EU.EUROPOL",
        "--channel",
        "CT",
        "--crime-area",
        "terrorism",
        "--kind",
        "INFORMATION",
        "--text",
        "Information on a returning foreign fighter.",
    )

    c.rule("9. Albania checks what happened to its request: the hub's signed evidences")
    settle(demo)
    status = demo.run(
        "status", request, "--as", "AL.CTD", "--home", str(demo.home("AL.CTD")), process=True
    )
    chain = [
        f"{e.get('kind')} ({e.get('unit')}, log #{e.get('log_index')})"
        for e in status.get("evidences", [])
    ]
    demo.note("AL.CTD", f"{request[:8]}: " + " -> ".join(chain))
    proven = all(e.get("in_log") for e in status.get("evidences", []))
    size = status.get("log", {}).get("tree_size")
    demo.note(
        "AL.CTD",
        f"each evidence {'proven' if proven else 'NOT proven'} in the hub's signed log "
        f"({size} entries), exit {status['exit_code']}",
    )
    if not proven or status["exit_code"] != 0:
        raise DemoFailed("the evidence chain of the request is not proven in the log")


def settle(demo: Demo) -> None:
    """Let the nodes send their last acknowledgements."""
    stores = [n.store for n in demo.nodes.values()]
    demo.wait("the last acknowledgements", lambda: all(not s.pending_acks() for s in stores))


def report(demo: Demo) -> None:
    c = demo.console
    engine = make_engine(f"sqlite:///{demo.workdir / 'hub.db'}")
    with engine.connect() as db:
        rows = db.execute(
            select(LOG_ENTRIES.c.idx, LOG_ENTRIES.c.entry).order_by(LOG_ENTRIES.c.idx)
        ).all()
        evidences = [bytes(r[0]) for r in db.execute(select(EVIDENCES.c.evidence))]
        heads = [bytes(r[0]) for r in db.execute(select(TREE_HEADS.c.signed))]
    entries = [LogEntry.decode(bytes(e)) for _, e in rows]

    table = Table(title="Timeline (the hub's exchange log)", show_lines=False)
    for column in ("#", "time (UTC)", "event", "message", "from", "to / unit", "rules"):
        table.add_column(column)
    for (index, _), entry in zip(rows, entries, strict=True):
        when = datetime.fromtimestamp(entry.hub_time_us / 1e6, UTC).strftime("%H:%M:%S.%f")[:-3]
        if entry.event in (LogEvent.ACCEPTED, LogEvent.FORWARDED, LogEvent.REFUSED):
            target = ", ".join(entry.recipients)
        else:
            target = entry.unit + (f" via {entry.on_behalf_of}" if entry.on_behalf_of else "")
        style = "red" if entry.event is LogEvent.REFUSED else ""
        rules = ", ".join(entry.rules)
        if entry.event is LogEvent.POLICY_LOADED:
            target, rules = f"policy {entry.policy_hash[:12]}", f"{len(entry.rules)} rules"
        table.add_row(
            str(index),
            when,
            f"[{style}]{entry.event.value}[/]" if style else entry.event.value,
            entry.message_id[:8],
            entry.sender,
            target,
            rules,
        )
    c.print(table)

    refusals = [e for e in entries if e.event is LogEvent.REFUSED]
    for entry in refusals:
        c.print(
            f"[red]refused[/] {entry.message_id[:8]} from {entry.sender}: {', '.join(entry.rules)}"
        )

    figures = unit_figures(entries)
    table = Table(title="Figures per unit (from the log)")
    for column in ("unit", "exchanged", "sent", "received", "refused"):
        table.add_column(column, justify="right" if column != "unit" else "left")
    for unit, figure in figures.items():
        table.add_row(
            unit,
            str(figure.exchanged),
            str(figure.sent),
            str(figure.received),
            ", ".join(f"{rule} x{n}" for rule, n in figure.refused.items()) or "-",
        )
    c.print(table)
    for unit in ("RS.CTU", "AL.CTD"):
        if unit in figures:
            mine = figures[unit]
            c.print(
                f"{unit}: {mine.exchanged} messages exchanged ({mine.received} received, "
                f"{mine.sent} sent)."
            )

    audit = audit_log(
        ((int(i), bytes(e)) for i, e in rows),
        evidences=evidences,
        heads=heads,
        directory=load_directory(demo.certs),
        now=datetime.now(UTC),
    )
    if not audit.ok:
        raise DemoFailed(f"the log does not verify: {audit.first_problem}")
    c.print(
        f"\n[green]log verified[/]: {audit.size} entries, root {audit.root.hex()[:16]}..., "
        f"{audit.heads_checked} signed tree heads, {audit.evidences_checked} evidences"
    )


def run_demo(
    *, workdir: Path, certs: Path, policies: Path, examples: Path, console: Console
) -> float:
    """The whole demo; returns the seconds it took. Leaves no thread, process or port."""
    started = time.monotonic()
    demo = Demo(workdir=workdir, certs=certs, policies=policies, console=console)
    try:
        demo.start()
        script(demo, examples)
        settle(demo)
    finally:
        demo.stop()
    report(demo)
    return time.monotonic() - started
