"""Brings a database to the current schema with the migrations shipped in the package."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from keycustody.storage.engine import WRITE

MIGRATIONS = Path(__file__).with_name("migrations")

HEAD = "0010"
"""The newest migration in ``migrations/versions`` (a test checks that it is alembic's head).
A database already there is opened without loading alembic and its migration scripts, which
cost a third of a second per process and 30 ms per open on this kind of machine."""


def version(engine: Engine) -> str | None:
    """The database's schema revision; None for a new database (or one this cannot read:
    alembic then reports what is wrong)."""
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT version_num FROM alembic_version"))
            return found.scalar_one_or_none()
    except SQLAlchemyError:
        return None


def upgrade(engine: Engine) -> None:
    """Runs ``alembic upgrade head`` on ``engine`` inside one write transaction, unless the
    database is at :data:`HEAD` already."""
    if version(engine) == HEAD:
        return
    from alembic import command  # only when a migration may be needed: see HEAD
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
