"""The ``exchange`` console script: one Typer app, sub-commands grouped by concept.

Errors from the exception family are printed to stderr as one sentence and mapped
to the exit codes of DESIGN.md section 8; a Python traceback is shown only for a
real bug (exit 1).
"""

from __future__ import annotations

import sys

import typer
from typer.exceptions import Abort, Exit, TyperException

from exchange.cli.output import print_error
from exchange.errors import ExchangeError

app = typer.Typer(
    name="exchange",
    help="Secure message exchange: PKI, envelopes, hub, nodes, statistics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    # Imported here so that each group module stays independent of the others.
    from exchange.cli import bench, db, demo, envelope, hub, log, permission, pki

    app.add_typer(pki.app, name="pki")
    app.add_typer(log.app, name="log")
    app.add_typer(permission.app, name="permission")
    hub.app.command("erase")(permission.erase_command)
    app.add_typer(envelope.app, name="envelope")
    app.add_typer(hub.app, name="hub")
    app.add_typer(db.app, name="db")
    app.add_typer(bench.app, name="bench")
    app.command("demo")(demo.demo_command)

    from exchange.cli import messages, node

    app.add_typer(node.app, name="node")
    messages.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    try:
        # Without standalone mode, a command's `raise typer.Exit(n)` comes back as the
        # return value, not as an exception.
        returned = app(args=argv, standalone_mode=False)
    except Exit as done:
        return done.exit_code
    except Abort:
        print_error("aborted")
        return 1
    except TyperException as usage:  # usage errors: unknown option, missing argument, ...
        show = getattr(usage, "show", None)
        if callable(show):
            show()
        else:
            print_error(usage.format_message())
        return 2
    except ExchangeError as error:
        print_error(str(error), code=error.code)
        return error.exit_code
    return returned if isinstance(returned, int) and not isinstance(returned, bool) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
