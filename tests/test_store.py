"""`exchange db upgrade`: migrations apply once, on SQLite and PostgreSQL; bad URLs are exit 2."""

from __future__ import annotations

import pytest

from exchange.cli.main import main
from exchange.store.database import current_revision, head_revision, make_engine


def test_upgrade_applies_every_migration_once(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "upgrade", "--db", db_url]) == 0
    assert "was empty" in capsys.readouterr().out
    assert current_revision(make_engine(db_url)) == head_revision()
    assert main(["db", "upgrade", "--db", db_url]) == 0
    assert f"was {head_revision()}" in capsys.readouterr().out


@pytest.mark.parametrize("url", ["nonsense://x", "postgresql+nodriver://h/db"])
def test_bad_database_url_is_exit_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade", "--db", url]) == 2
    err = capsys.readouterr().err
    assert "--db" in err and "Traceback" not in err
