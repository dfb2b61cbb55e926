"""``exchange db``: the store's migrations."""

from __future__ import annotations

import typer

from exchange.cli.common import DbOption
from exchange.cli.output import console
from exchange.store.database import current_revision, database_url, make_engine, upgrade

app = typer.Typer(help="Database migrations.", no_args_is_help=True)


@app.command("upgrade")
def upgrade_command(db: DbOption = None) -> None:
    """Apply every migration up to the newest (the hub also does this on start)."""
    engine = make_engine(database_url(db))
    before = current_revision(engine)
    revision = upgrade(engine)
    was = f"was {before}" if before else "was empty"
    console.print(f"database at revision {revision} ({was})")
