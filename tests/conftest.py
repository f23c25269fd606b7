"""Shared fixtures: a real LocalKMS directory and a real file-backed SQLite vault per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import keycustody as kc

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")


@pytest.fixture
def kms(tmp_path: Path) -> kc.LocalKMS:
    """A LocalKMS in its own directory, outside the database's folder."""
    return kc.LocalKMS(tmp_path / "keys")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the test's SQLite database lives."""
    folder = tmp_path / "db"
    folder.mkdir()
    return folder / "ctx.db"


@pytest.fixture
def db_url(db_path: Path) -> str:
    """SQLAlchemy URL of the test database."""
    return f"sqlite:///{db_path}"


@pytest.fixture
def vault(db_url: str, kms: kc.LocalKMS) -> Iterator[kc.Vault]:
    """An open vault, closed after the test."""
    with kc.Vault.open(db_url, kms=kms) as v:
        yield v


@pytest.fixture
def acme(vault: kc.Vault, kms: kc.LocalKMS) -> kc.Scope:
    """Tenant ``acme`` with a KEK of its own."""
    kek = kms.create_key("acme-kek")
    return vault.scope("acme", kek=kek, create=True)
