"""Brings a database to the current schema with the migrations shipped in the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from keycustody.storage.engine import WRITE

MIGRATIONS = Path(__file__).with_name("migrations")


def upgrade(engine: Engine) -> None:
    """Runs ``alembic upgrade head`` on ``engine`` inside one write transaction."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
