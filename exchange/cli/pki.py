"""``exchange pki``: make the CA and every unit's keys, issue, rotate, revoke, show.

Private keys are written 0600 and never printed; the output names files, serials and
key ids only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from rich.table import Table

from exchange.cli.output import OutputFormat, console, print_json
from exchange.errors import InputError
from exchange.pki import (
    DEFAULT_VALID_DAYS,
    HUB,
    Outcome,
    PkiLayout,
    ProvisioningReport,
    RevocationReport,
    Validity,
    describe,
    init_pki,
    issue_subject,
    revoke_serial,
    revoke_subject,
)
from exchange.pki.inspection import (
    CertificateDescription,
    CrlDescription,
    Description,
    PrivateKeyDescription,
)
from exchange.pki.layout import check_subject_id

app = typer.Typer(
    help="The PKI: a CA, TLS certificates and certified unit keys (dev and containers).",
    no_args_is_help=True,
)

DEFAULT_CERTS = Path("certs/dev")
DEFAULT_REGISTRY = Path("policies/registry.yaml")
ALL_SUITES = "classic-2026,hybrid-pq-2026"

FormatOption = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]
CertsOption = Annotated[
    Path, typer.Option("--certs", help="PKI folder made by `exchange pki init`.")
]
RegistryOption = Annotated[
    Path, typer.Option("--registry", help="Unit registry (YAML): who gets keys.")
]
SuitesOption = Annotated[
    str,
    typer.Option(
        "--suites",
        help="Comma-separated suites whose keys units get: classic-2026, hybrid-pq-2026.",
    ),
]
ValidFromOption = Annotated[
    str | None,
    typer.Option(
        "--valid-from",
        help="Start of validity of unit keys (YYYY-MM-DD or ISO time, UTC); default a day "
        "ago. Exercises set in the past need it, e.g. --valid-from 2019-01-01.",
    ),
]
ValidDaysOption = Annotated[
    int, typer.Option("--valid-days", min=1, help="Validity in days from --valid-from.")
]


class ReasonCode(StrEnum):
    """RFC 5280 CRL reason codes a revocation may carry besides its sentence."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "key_compromise"
    AFFILIATION_CHANGED = "affiliation_changed"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation_of_operation"
    PRIVILEGE_WITHDRAWN = "privilege_withdrawn"

    @property
    def flag(self) -> x509.ReasonFlags:
        return x509.ReasonFlags[self.name.lower()]


def parse_time(value: str | None, option: str) -> datetime | None:
    """A date (``2019-01-01``) or ISO date-time from a flag, as UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"{option} {value!r} is not a date (YYYY-MM-DD) or ISO date-time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _suites(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


def registry_units(path: Path) -> list[str]:
    """The unit ids of the registry at ``path``."""
    from exchange.core.registry import load_registry

    return sorted(load_registry(path).units)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# -- init and issue --------------------------------------------------------------------------------


def _report_json(report: ProvisioningReport) -> dict[str, Any]:
    return {
        "certs": str(report.certs_dir),
        "ca": {
            "created": report.ca_created,
            "not_before": _iso(report.ca_not_before),
            "not_after": _iso(report.ca_not_after),
        },
        "summary": {o.value: report.count(o) for o in Outcome if report.count(o)},
        "slots": [
            {
                "unit": slot.subject,
                "role": slot.role.value,
                "outcome": slot.outcome.value,
                "serial": slot.serial,
                "key_id": slot.key_id,
                "not_before": _iso(slot.not_before),
                "not_after": _iso(slot.not_after),
                "certificate": str(slot.certificate),
            }
            for slot in report.slots
        ],
    }


def _print_report(report: ProvisioningReport, title: str) -> None:
    if report.ca_created:
        console.print(
            f"CA created in {PkiLayout(report.certs_dir).ca_dir}, valid "
            f"{report.ca_not_before:%Y-%m-%d} to {report.ca_not_after:%Y-%m-%d}"
        )
    changed = [slot for slot in report.slots if slot.outcome is not Outcome.KEPT]
    if changed:
        table = Table(title=title)
        for column in ("unit", "key", "outcome", "serial", "key id", "valid from", "until"):
            table.add_column(column)
        for slot in changed:
            table.add_row(
                slot.subject,
                slot.role.value,
                slot.outcome.value,
                str(slot.serial),
                slot.key_id or "",
                f"{slot.not_before:%Y-%m-%d}",
                f"{slot.not_after:%Y-%m-%d}",
            )
        console.print(table)
    summary = ", ".join(f"{report.count(o)} {o.value}" for o in Outcome if report.count(o))
    console.print(f"{report.certs_dir}: {summary or 'nothing to do'}")
    if report.count(Outcome.REVOKED):
        console.print(
            "[yellow]revoked certificates were kept as they are; "
            "`exchange pki issue UNIT` replaces them[/]"
        )
    if report.count(Outcome.ISSUED) or report.count(Outcome.ROTATED):
        console.print("private keys are 0600 PEM files: never commit or copy them out")


@app.command("init")
def init_command(
    out: Annotated[Path, typer.Option("--out", help="PKI folder to make or complete.")] = (
        DEFAULT_CERTS
    ),
    registry: RegistryOption = DEFAULT_REGISTRY,
    suites: SuitesOption = ALL_SUITES,
    valid_from: ValidFromOption = None,
    valid_days: ValidDaysOption = DEFAULT_VALID_DAYS,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Start over: new keys and certificates (and a new CA unless you brought yours).",
        ),
    ] = False,
    hub_host: Annotated[
        list[str] | None,
        typer.Option("--hub-host", help="Extra DNS name or IP for the hub's TLS certificate."),
    ] = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Make the CA, its CRL, the hub's keys and every registry unit's keys (idempotent)."""
    units = registry_units(registry)
    report = init_pki(
        out,
        units,
        suites=_suites(suites),
        validity=Validity.of(parse_time(valid_from, "--valid-from"), valid_days),
        force=force,
        hub_hosts=hub_host or (),
    )
    if output is OutputFormat.JSON:
        print_json(_report_json(report))
        return
    _print_report(report, f"exchange pki init: {out}")


@app.command("issue")
def issue_command(
    unit: Annotated[str, typer.Argument(help="Unit id (e.g. AL.CTD), or HUB.")],
    certs: CertsOption = DEFAULT_CERTS,
    registry: RegistryOption = DEFAULT_REGISTRY,
    suites: SuitesOption = ALL_SUITES,
    rotate: Annotated[
        bool,
        typer.Option(
            "--rotate",
            help="Replace the unit keys; old ones move to previous/ and still open old messages.",
        ),
    ] = False,
    valid_from: ValidFromOption = None,
    valid_days: ValidDaysOption = DEFAULT_VALID_DAYS,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Issue what a unit lacks (and replace revoked certificates), or rotate its keys."""
    check_subject_id(unit)
    if unit != HUB:
        _check_registered(unit, certs, registry)
    report = issue_subject(
        certs,
        unit,
        suites=_suites(suites),
        validity=Validity.of(parse_time(valid_from, "--valid-from"), valid_days),
        rotate=rotate,
    )
    if output is OutputFormat.JSON:
        print_json(_report_json(report))
        return
    _print_report(report, f"exchange pki issue {unit}")


def _check_registered(unit: str, certs: Path, registry: Path) -> None:
    # A typo must not mint a new identity: a unit is issued keys only if the registry
    # lists it (or, without a registry at hand, if it already has a folder here).
    if registry.is_file():
        if unit not in registry_units(registry):
            raise InputError(f"{registry}: no unit {unit} in the registry")
    elif not PkiLayout(certs).subject_dir(unit).is_dir():
        raise InputError(f"{registry}: no such registry file, and {unit} has no keys yet")


# -- revoke ----------------------------------------------------------------------------------------


def _revocation_json(report: RevocationReport) -> dict[str, Any]:
    return {
        "crl": str(report.crl),
        "revoked": [
            {
                "serial": entry.serial,
                "unit": entry.subject,
                "role": entry.role,
                "certificate": str(entry.certificate) if entry.certificate else None,
                "revoked_at": _iso(entry.revoked_at),
                "reason": entry.reason,
                "newly_revoked": entry.newly_revoked,
            }
            for entry in report.entries
        ],
    }


@app.command("revoke")
def revoke_command(
    unit: Annotated[
        str | None, typer.Argument(help="Unit id (or HUB): revokes all its current certificates.")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the revocation).")] = "",
    serial: Annotated[
        int | None, typer.Option("--serial", help="Revoke only the certificate with this serial.")
    ] = None,
    code: Annotated[
        ReasonCode, typer.Option("--code", help="RFC 5280 reason code for the CRL.")
    ] = ReasonCode.UNSPECIFIED,
    at: Annotated[
        str | None, typer.Option("--at", help="Revocation date (ISO), e.g. an exercise date.")
    ] = None,
    certs: CertsOption = DEFAULT_CERTS,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Revoke a unit's current certificates (or one, --serial) and re-sign the CRL."""
    when = parse_time(at, "--at")
    if unit is not None:
        check_subject_id(unit)
    if serial is not None:
        report = revoke_serial(certs, serial, reason, subject=unit, at=when, code=code.flag)
    elif unit is not None:
        report = revoke_subject(certs, unit, reason, at=when, code=code.flag)
    else:
        raise InputError("name a UNIT to revoke, or a certificate with --serial N")
    if output is OutputFormat.JSON:
        print_json(_revocation_json(report))
        return
    table = Table(title=f"revoked, CRL re-signed: {report.crl}")
    for column in ("serial", "unit", "certificate", "revoked at", "reason"):
        table.add_column(column)
    for entry in report.entries:
        note = "" if entry.newly_revoked else " (already revoked)"
        table.add_row(
            str(entry.serial),
            entry.subject,
            entry.role,
            f"{entry.revoked_at:%Y-%m-%d %H:%M}{note}",
            entry.reason,
        )
    console.print(table)


# -- show ------------------------------------------------------------------------------------------


def description_json(description: Description) -> dict[str, Any]:
    """A file description as JSON (never any key material)."""
    if isinstance(description, PrivateKeyDescription):
        return {
            "path": str(description.path),
            "type": "private_key",
            "kind": description.kind,
            "algorithm": description.algorithm,
            "key_id": description.key_id,
            "public_key_sha256": description.public_key_sha256,
            "mode": f"{description.mode:04o}",
            "warning": description.warning,
        }
    if isinstance(description, CrlDescription):
        return {
            "path": str(description.path),
            "type": "crl",
            "issuer": description.issuer,
            "last_update": _iso(description.last_update),
            "next_update": _iso(description.next_update) if description.next_update else None,
            "signature_valid": description.signature_valid,
            "revoked": [
                {"serial": r.serial, "revoked_at": _iso(r.revoked_at), "reason": r.reason}
                for r in description.revocations
            ],
        }
    revocation = description.revocation
    return {
        "path": str(description.path),
        "type": "certificate",
        "kind": description.kind,
        "algorithm": description.algorithm,
        "unit": description.units[0] if len(description.units) == 1 else None,
        "units": list(description.units),
        "key_id": description.key_id,
        "suites": list(description.suites),
        "subject": description.subject,
        "issuer": description.issuer,
        "serial": description.serial,
        "valid_from": _iso(description.not_before),
        "valid_until": _iso(description.not_after),
        "issued_by_ca": description.issued_by_ca,
        "revoked": revocation.revoked if revocation else None,
        "revoked_at": _iso(revocation.revoked_at) if revocation and revocation.revoked_at else None,
        "revocation_reason": revocation.reason if revocation else None,
        "crl": str(revocation.crl) if revocation else None,
    }


def _cell(value: Any) -> str:
    if not isinstance(value, list):
        return str(value)
    if not value:
        return "none"
    return ", ".join(
        f"{v['serial']} ({v['reason']})" if isinstance(v, dict) else str(v) for v in value
    )


@app.command("show")
def show_command(
    path: Annotated[Path, typer.Argument(help="A certificate, private key or CRL file.")],
    certs: Annotated[
        Path | None,
        typer.Option(
            "--certs",
            help="PKI folder whose CA and CRL to check against; default the nearest "
            "folder above PATH holding ca/crl.pem.",
        ),
    ] = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """What a certificate, key or CRL file is; a private key is described, never shown."""
    description = describe(path, certs)
    data = description_json(description)
    if output is OutputFormat.JSON:
        print_json(data)
        return
    table = Table(title=str(path), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in data.items():
        if name in ("path", "units") or value is None:
            continue
        table.add_row(name.replace("_", " "), _cell(value))
    console.print(table)
    if isinstance(description, PrivateKeyDescription) and description.warning:
        console.print(f"[bold yellow]warning[/]: {description.warning}")
    if isinstance(description, CertificateDescription) and description.issued_by_ca is False:
        console.print("[bold yellow]warning[/]: not issued by the CA of the PKI folder checked")
