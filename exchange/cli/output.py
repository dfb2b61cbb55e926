"""Output helpers shared by every command: rich tables on a terminal, JSON for programs."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Any

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


class OutputFormat(StrEnum):
    """``--format`` choices."""

    TEXT = "text"
    JSON = "json"


def print_json(value: Any) -> None:
    """Machine-readable output on stdout, one JSON document."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def print_error(message: str, code: str | None = None) -> None:
    """One sentence on stderr, prefixed with the stable error code when there is one."""
    prefix = f"error [{code}]" if code else "error"
    err_console.print(f"[bold red]{prefix}[/]: {message}", highlight=False, soft_wrap=True)
