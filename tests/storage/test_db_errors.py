"""Database failures under the public API: keycustody's errors carry the driver's message
only, never SQLAlchemy's text, which echoes the statement's parameters (blind indexes, record
ids, wrapped keys).
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

import keycustody as kc
from keycustody.storage.engine import db_message


def test_db_message_leaves_out_the_values_of_a_violated_key(vault: kc.Vault) -> None:
    """PostgreSQL's DETAIL quotes the duplicate key's value (on records: the record id);
    SQLite names the columns only."""
    insert = text("INSERT INTO vault_meta (key, value) VALUES (:k, 'v')")
    with vault._engine.begin() as conn:
        conn.execute(insert, {"k": "a-value-that-must-not-leak"})
    with pytest.raises(SQLAlchemyError) as info, vault._engine.begin() as conn:
        conn.execute(insert, {"k": "a-value-that-must-not-leak"})
    assert "a-value-that-must-not-leak" in str(info.value)  # SQLAlchemy's text has it
    message = db_message(info.value)
    assert "vault_meta" in message
    assert "a-value-that-must-not-leak" not in message
