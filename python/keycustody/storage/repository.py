"""Bulk statements on the records table, compiled once per dialect.

The hot path (put_many) bypasses per-row ORM and Core parameter processing: rows are plain
tuples handed to the driver's executemany, with the one non-trivial bind (the batch timestamp)
processed once per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.dialects import postgresql, sqlite

from keycustody.errors import ConfigError
from keycustody.storage.models import RecordRow

RECORD_COLUMNS = (
    "record_id",
    "scope_id",
    "name_index",
    "key_version",
    "header",
    "name_ct",
    "body",
    "size",
    "created_at",
)
"""Order of the values in a record row tuple."""

_REPLACED_ON_CONFLICT = tuple(c for c in RECORD_COLUMNS if c not in ("scope_id", "name_index"))


def _upsert(dialect: Dialect) -> sqlite.Insert | postgresql.Insert:
    table = RecordRow.__table__
    stmt: sqlite.Insert | postgresql.Insert
    if dialect.name == "sqlite":
        stmt = sqlite.insert(RecordRow)
    elif dialect.name == "postgresql":
        stmt = postgresql.insert(RecordRow)
    else:
        raise ConfigError(f"no bulk upsert for the {dialect.name} dialect")
    return stmt.on_conflict_do_update(
        index_elements=[table.c.scope_id, table.c.name_index],
        set_={c: stmt.excluded[c] for c in _REPLACED_ON_CONFLICT},
    )


class RecordWriter:
    """Inserts record rows, replacing any row with the same (scope, name index)."""

    def __init__(self, dialect: Dialect) -> None:
        compiled = _upsert(dialect).compile(dialect=dialect)
        self._sql = str(compiled)
        self._positional = compiled.positional
        order = compiled.positiontup or []
        self._order = [RECORD_COLUMNS.index(name) for name in order]
        self._timestamp: Callable[[Any], Any] | None = (
            RecordRow.__table__.c.created_at.type.bind_processor(dialect)
        )

    def timestamp(self, when: datetime) -> Any:
        """``when`` as the driver expects it for the created_at column."""
        return when if self._timestamp is None else self._timestamp(when)

    def write(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Executes one executemany for ``rows`` (tuples in :data:`RECORD_COLUMNS` order)."""
        if self._positional:
            if self._order != list(range(len(RECORD_COLUMNS))):
                rows = [tuple(row[i] for i in self._order) for row in rows]
            conn.exec_driver_sql(self._sql, list(rows))
        else:
            conn.exec_driver_sql(
                self._sql, [dict(zip(RECORD_COLUMNS, r, strict=True)) for r in rows]
            )
