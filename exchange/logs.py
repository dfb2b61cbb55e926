"""structlog, configured once: a console renderer on a terminal, JSON lines otherwise.

Log lines carry ids (message id, sender, rule, request id) bound to the context,
never a key, a plaintext body or personal data. :func:`scrub` is the last processor
and drops any field whose name says it holds such content, as a second line of defence.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

#: field names that must never reach a log line
FORBIDDEN_FIELDS = frozenset(
    {"body", "text", "plaintext", "key", "private_key", "content_key", "persons", "password"}
)

_configured = False


def scrub(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop fields that could carry secrets or personal data."""
    for name in FORBIDDEN_FIELDS & event.keys():
        event[name] = "[withheld]"
    return event


def configure(
    *, level: str | None = None, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog for the process (idempotent unless arguments change it)."""
    global _configured
    out = stream or sys.stderr
    try:
        use_json = json if json is not None else not out.isatty()
    except ValueError:  # a closed stream
        use_json = True
    chosen = (level or os.environ.get("EXCHANGE_LOG_LEVEL", "INFO")).upper()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=not use_json and out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(chosen, logging.INFO)
        ),
        # Look the stream up when a logger is made, not once: stderr may be replaced
        # (test capture, daemonising) after logging was configured.
        logger_factory=(
            structlog.PrintLoggerFactory(file=stream)
            if stream is not None
            else _StderrLoggerFactory()
        ),
        cache_logger_on_first_use=False,
    )
    _configured = True


class _StderrLoggerFactory:
    """A PrintLogger on whatever ``sys.stderr`` is at the time."""

    def __call__(self, *_args: Any) -> structlog.PrintLogger:
        return structlog.PrintLogger(file=sys.stderr)


def get_logger(name: str) -> Any:
    """A bound logger for ``name``; configures logging with defaults on first use."""
    if not _configured:
        configure()
    return structlog.get_logger(name)
