"""Shared fixtures: the reference registry, a dev PKI, stores on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
#: PostgreSQL of these machines (trust auth, database test); override with EXCHANGE_TEST_PG
PG_DSN = os.environ.get("EXCHANGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used here, or None when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3) as connection:
            connection.execute("select 1")
    except psycopg.Error as error:
        return f"PostgreSQL at {PG_DSN} is unreachable: {str(error).strip()[:120]}"
    return None


@pytest.fixture(scope="session")
def reference_units() -> list[str]:
    from exchange.core.registry import load_registry

    return [unit.id for unit in load_registry(POLICIES / "registry.yaml")]


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory, reference_units: list[str]) -> Path:
    """One dev PKI for the whole session (read-only for tests: copy it to change it)."""
    from exchange.pki import init_pki

    folder = tmp_path_factory.mktemp("pki") / "certs"
    init_pki(folder, reference_units)
    return folder


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store: SQLite in a temp folder, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    yield from _fresh_postgres_schema()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (skipped, with the reason, where PostgreSQL is unreachable)."""
    yield from _fresh_postgres_schema()


def _fresh_postgres_schema() -> Iterator[str]:
    reason = postgres_unreachable()
    if reason:
        pytest.skip(reason)
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True) as connection:
        connection.execute(f'create schema "{schema}"')
    base = PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as connection:
            connection.execute(f'drop schema "{schema}" cascade')
