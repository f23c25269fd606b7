"""Bulk statements on the records table, compiled once per dialect.

The hot path (put_many) bypasses per-row ORM and Core parameter processing: rows are plain
tuples handed to the driver's executemany, with the one non-trivial bind (the batch timestamp)
processed once per batch. A record replacing one of the same name deletes it (and its
segments, by cascade) before it is inserted, so the old wrapped DEK is overwritten rather than
left behind. On SQLite a batch is inserted first, skipping names that exist, and only those
are then deleted and inserted: new names, the common case of an ingest, cost no lookup of
their own. On PostgreSQL, where record writers run side by side, writers of one scope's names
take turns and delete first.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import datetime
from itertools import islice
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    Insert,
    Table,
    bindparam,
    delete,
    insert,
    select,
)
from sqlalchemy.dialects import sqlite

from keycustody.errors import IntegrityError
from keycustody.storage.engine import (
    driver_connection,
    driver_cursor,
    driver_errors,
    driver_rows,
)
from keycustody.storage.models import RecordRow, SegmentRow

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
    "sealed_version",
    "source_id",
    "blob_key",
)
"""Order of the values in a record row tuple."""

IN_LIST_CHUNK = 500
"""Values per ``IN (...)`` list of one statement (record ids, blind indexes, blob keys):
within the 999 parameters SQLite allowed per statement before 3.32, with room for the
statement's others."""

T = TypeVar("T")


def in_chunks(values: Iterable[T]) -> Iterator[list[T]]:
    """``values`` in lists of at most :data:`IN_LIST_CHUNK`, one per ``IN (...)`` list: a
    statement takes at most 32,766 parameters on SQLite (999 before 3.32) and 65,535 on
    PostgreSQL, and a tenant can have more scopes, or a batch more records, than that."""
    iterator = iter(values)
    while chunk := list(islice(iterator, IN_LIST_CHUNK)):
        yield chunk


SCOPE_LOCK_SPACE = 0x6B63
"""First key of the two-key PostgreSQL advisory locks on a scope's names (the second is the
scope id's first four bytes; the two-key space never meets the one-key locks of engine.py)."""


_COPY_STATEMENTS: dict[tuple[Table, tuple[str, ...]], tuple[str, list[str]]] = {}


def _copy_statement(
    table: Table, columns: tuple[str, ...], dialect: Dialect
) -> tuple[str, list[str]]:
    """The binary COPY into ``table``'s ``columns`` and psycopg's name of each column's type
    (bytea, integer, ...), which binary COPY needs; made once per table and columns."""
    found = _COPY_STATEMENTS.get((table, columns))
    if found is None:
        types = [table.c[c].type.compile(dialect=dialect).split("(")[0].lower() for c in columns]
        sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        found = _COPY_STATEMENTS[(table, columns)] = (sql, types)
    return found


def copy_rows(
    conn: Connection, table: Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> int:
    """PostgreSQL: inserts ``rows`` (tuples in ``columns`` order, values as the driver takes
    them) by one binary COPY, in ``conn``'s transaction; all or none. Returns their number.

    executemany sends one INSERT per row (pipelined); the server's per-statement work made
    put_many of 4,096 records of 4 KiB 30% slower than a COPY of the same rows.
    """
    sql, types = _copy_statement(table, columns, conn.dialect)
    with driver_errors(conn.dialect, sql):
        driver: Any = conn.connection.driver_connection
        cursor = driver.cursor()
        try:
            with cursor.copy(sql) as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()
    return len(rows)


class _Insert:
    """An INSERT compiled for one dialect, executed with tuples in a fixed column order.

    With ``copy``, on PostgreSQL the rows go in by :func:`copy_rows` instead (for stream
    segments, a few 1 MiB rows at a time, COPY was 10% slower than INSERT).
    """

    def __init__(
        self, dialect: Dialect, statement: Insert, columns: Sequence[str], *, copy: bool = False
    ) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(columns))
        self._sql = str(compiled)
        self._columns = tuple(columns)
        self._order: list[int] | None = None
        if compiled.positional:
            order = [self._columns.index(name) for name in compiled.positiontup or []]
            self._order = None if order == list(range(len(order))) else order
        self._positional = compiled.positional
        self._copy_into = (
            cast(Table, statement.table) if copy and dialect.name == "postgresql" else None
        )

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
        """Inserts ``rows``; returns how many were inserted."""
        if not rows:
            return 0
        if self._copy_into is not None:
            return copy_rows(conn, self._copy_into, self._columns, rows)
        params: list[Any]
        if not self._positional:
            params = [dict(zip(self._columns, r, strict=True)) for r in rows]
        elif self._order is not None:
            params = [tuple(r[i] for i in self._order) for r in rows]
        else:
            params = list(rows)
        return int(conn.exec_driver_sql(self._sql, params).rowcount)


class FoundRecord(NamedTuple):
    """A record row found by name (:meth:`RecordStatements.find_by_names`).

    A plain named tuple: attribute access on SQLAlchemy rows costs more per record than
    decrypting one.
    """

    record_id: bytes
    name_index: bytes
    key_version: int | None
    size: int
    header: bytes
    body: bytes
    source_id: bytes | None
    blob_key: str | None


class DerivedRecord(NamedTuple):
    """A derived record found by its source (:meth:`RecordStatements.find_derived`)."""

    record_id: bytes
    source_id: bytes
    header: bytes
    name_ct: bytes
    body: bytes
    blob_key: str | None


class ListedRecord(NamedTuple):
    """A record row as :meth:`RecordStatements.list_records` reads it (a plain named tuple,
    as :class:`FoundRecord`)."""

    record_id: bytes
    name_index: bytes
    header: bytes
    name_ct: bytes
    size: int
    key_version: int | None
    created_at: datetime
    source_id: bytes | None


class RecordStatements:
    """Bulk statements on record and segment rows, compiled for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._postgres = dialect.name == "postgresql"
        self._records = _Insert(dialect, insert(RecordRow), RECORD_COLUMNS, copy=True)
        # SQLite: inserts the rows whose names are new and skips the others (replace()).
        self._new_records = (
            None
            if self._postgres
            else _Insert(
                dialect,
                sqlite.insert(RecordRow).on_conflict_do_nothing(
                    index_elements=["scope_id", "name_index"]
                ),
                RECORD_COLUMNS,
            )
        )
        self._segments = _Insert(dialect, insert(SegmentRow), ("record_id", "seq", "body"))
        # The dialect's own DateTime processor (the generic type has none), so sqlite3's
        # deprecated default datetime adapter is never used.
        created_at = RecordRow.__table__.c.created_at.type
        self._timestamp: Callable[[Any], Any] | None = created_at.dialect_impl(
            dialect
        ).bind_processor(dialect)
        # SQLite stores it as text: the dialect's parser, as the ORM would use.
        self._read_timestamp: Callable[[Any], Any] | None = created_at.dialect_impl(
            dialect
        ).result_processor(dialect, None)
        compiled = (
            delete(RecordRow)
            .where(
                RecordRow.scope_id == bindparam("scope_id"),
                RecordRow.name_index == bindparam("name_index"),
            )
            .compile(dialect=dialect)
        )
        self._delete_sql = str(compiled)
        self._delete_order = list(compiled.positiontup or []) if compiled.positional else None
        # Constant identifiers only; every value is a bound parameter. SQLite: the rowids,
        # whose bodies read_segments reads as blobs.
        self._segments_sql = (
            "SELECT seq, body FROM segments WHERE record_id = %(record_id)s"
            " AND seq BETWEEN %(first)s AND %(last)s ORDER BY seq"
            if self._postgres
            else "SELECT seq, rowid FROM segments WHERE record_id = ? AND seq BETWEEN ? AND ?"
            " ORDER BY seq"
        )
        self._find_sql = (
            f"SELECT {', '.join(FoundRecord._fields)} FROM {RecordRow.__tablename__} "  # noqa: S608
            "WHERE scope_id = "
            + (
                # %b: the array of indexes in binary; psycopg escapes a text one element by
                # element, with a regular expression each.
                "%(scope_id)b AND name_index = ANY(%(indexes)b)"
                if self._postgres
                else "? AND name_index IN ({})"
            )
        )

        # PostgreSQL's delete_names; %b as in the lookup: the array in binary, one parameter
        # however many names.
        self._delete_any_sql = (
            f"DELETE FROM {RecordRow.__tablename__} WHERE scope_id = %(scope_id)b"  # noqa: S608
            " AND name_index = ANY(%(indexes)b)"
        )
        self._delete_unchanged_sql = (
            f"DELETE FROM {RecordRow.__tablename__} WHERE record_id = ANY(%(ids)b)"  # noqa: S608
            " AND header = ANY(%(headers)b)"
        )
        self._swap_headers_sql = (
            f"UPDATE {RecordRow.__tablename__} SET header = v.new, key_version = %(version)s"  # noqa: S608
            " FROM unnest(%(rids)b::bytea[], %(olds)b::bytea[], %(news)b::bytea[])"
            f" AS v(rid, old, new) WHERE {RecordRow.__tablename__}.record_id = v.rid"
            f" AND {RecordRow.__tablename__}.header = v.old"
            if self._postgres
            else f"UPDATE {RecordRow.__tablename__} SET header = ?, key_version = ?"  # noqa: S608
            " WHERE record_id = ? AND header = ?"
        )
        self._derived_sql = (
            f"SELECT {', '.join(DerivedRecord._fields)} FROM {RecordRow.__tablename__} "  # noqa: S608
            + ("WHERE source_id = ANY(%(ids)b)" if self._postgres else "WHERE source_id IN ({})")
        )
        self._list_sql = (
            f"SELECT {', '.join(ListedRecord._fields)} FROM {RecordRow.__tablename__} "  # noqa: S608
            + ("WHERE scope_id = %(scope_id)b" if self._postgres else "WHERE scope_id = ?")
        )

    def read_segments(
        self, conn: Connection, record_id: bytes, first: int, n: int
    ) -> list[tuple[int, bytes]]:
        """``(seq, body)`` of segments ``first`` to ``first + n - 1`` of a stream record, in
        order (fewer if some are missing), in ``conn``'s transaction (a session's).

        SQLite reads each body as a blob (incremental I/O) into the bytes returned, with the
        GIL released. Selecting the bodies copies each into a buffer of SQLite's first, then
        into Python with the GIL held: 1.4 GiB/s here, against 3.5 for blobs.
        """
        return self._read_segments(conn.connection.driver_connection, record_id, first, n)

    def _read_segments(
        self, driver: Any, record_id: bytes, first: int, n: int
    ) -> list[tuple[int, bytes]]:
        """:meth:`read_segments` on a driver connection, in the transaction it has open."""
        if self._postgres:
            params: Any = {"record_id": record_id, "first": first, "last": first + n - 1}
        else:
            params = (record_id, first, first + n - 1)
        rows = driver_rows(driver, self._dialect, self._segments_sql, params)
        if self._postgres:
            return rows
        bodies = []
        with driver_errors(self._dialect, "blob read of segments.body"):
            for seq, rowid in rows:
                with driver.blobopen("segments", "body", rowid, readonly=True) as blob:
                    bodies.append((seq, blob.read()))
        return bodies

    def read_segments_alone(
        self, engine: Engine, record_id: bytes, first: int, n: int
    ) -> list[tuple[int, bytes]]:
        """:meth:`read_segments` in a read transaction of its own, on a pooled driver
        connection: a stream read issues one per window, and a Connection's setup and
        teardown cost more than the SELECT."""
        with driver_connection(engine) as driver:
            if not self._postgres:
                driver.execute("BEGIN")  # the blobs read are those of the rows found
            try:
                return self._read_segments(driver, record_id, first, n)
            finally:
                driver.rollback()

    def find_by_names(
        self, conn: Connection, scope_id: bytes, indexes: Sequence[bytes]
    ) -> list[FoundRecord]:
        """The records of ``scope_id`` with these name indexes, in no particular order.

        One statement with driver parameters, on the driver's cursor: read-heavy callers
        (get_many) would otherwise spend more time building an ORM select of hundreds of
        binds, and reading its rows, than the database spends answering it.
        """
        if not indexes:
            return []
        if self._postgres:
            params: Any = {"scope_id": scope_id, "indexes": list(indexes)}
            sql = self._find_sql
        else:
            params = (scope_id, *indexes)
            sql = self._find_sql.format(",".join("?" * len(indexes)))
        driver = conn.connection.driver_connection
        return list(map(FoundRecord._make, driver_rows(driver, self._dialect, sql, params)))

    def find_derived(self, conn: Connection, source_ids: Sequence[bytes]) -> list[DerivedRecord]:
        """The records derived from any of these source records, in no particular order: on
        the driver's cursor, on PostgreSQL with the ids as one binary array (an IN list of
        500 parameters cost 20 ms a statement to build and parse, the lookup itself 0.4)."""
        driver = conn.connection.driver_connection
        if self._postgres:
            params: Any = {"ids": list(source_ids)}
            rows = driver_rows(driver, self._dialect, self._derived_sql, params)
        else:
            rows = []
            for chunk in in_chunks(source_ids):
                sql = self._derived_sql.format(",".join("?" * len(chunk)))
                rows += driver_rows(driver, self._dialect, sql, tuple(chunk))
        return list(map(DerivedRecord._make, rows))

    def list_records(
        self, conn: Connection, scope_id: bytes, batch: int
    ) -> Iterator[list[ListedRecord]]:
        """The records of ``scope_id``, ``batch`` rows at a time, in no particular order, on
        the driver's cursor (listing 20,000 records through the ORM: 0.7 s, most of it
        SQLAlchemy's row objects). Consume it inside ``conn``'s transaction.

        Raises:
            IntegrityError: a row's created_at is not a time (altered in the database).
        """
        params: Any = {"scope_id": scope_id} if self._postgres else (scope_id,)
        parse = self._read_timestamp
        driver = conn.connection.driver_connection
        with driver_cursor(driver, self._dialect, self._list_sql, params) as cursor:
            while rows := cursor.fetchmany(batch):
                if parse is not None:
                    try:
                        rows = [(*r[:6], parse(r[6]), r[7]) for r in rows]
                    except (TypeError, ValueError):
                        message = "a stored record's created_at is not a time"
                        raise IntegrityError(message) from None
                yield list(map(ListedRecord._make, rows))

    def lock_names(self, conn: Connection, scope_id: bytes) -> None:
        """Makes this transaction the only one replacing or deleting records by name in the
        scope until it ends (PostgreSQL; SQLite has one writer anyway). Without it, two
        writers of the same names deadlock between their deletes and inserts."""
        if self._postgres:
            conn.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(%(space)s, %(scope)s)",
                {"space": SCOPE_LOCK_SPACE, "scope": int.from_bytes(scope_id[:4], signed=True)},
            )

    def timestamp(self, when: datetime) -> Any:
        """``when`` as the driver expects it for the created_at column."""
        return when if self._timestamp is None else self._timestamp(when)

    def replace(self, conn: Connection, scope_id: bytes, rows: Sequence[tuple[Any, ...]]) -> None:
        """Inserts ``rows`` (tuples in :data:`RECORD_COLUMNS` order), replacing any record of
        the same name, which is deleted first. Within ``rows`` the last record of a name
        wins."""
        latest = list({row[2]: row for row in rows}.values())
        if self._new_records is None:
            self.delete_names(conn, scope_id, [r[2] for r in latest])  # takes the name lock
            self._records.run(conn, latest)
            return
        if self._new_records.run(conn, latest) == len(latest):
            return
        inserted: set[bytes] = set()
        for ids in in_chunks(r[0] for r in latest):
            found = conn.execute(select(RecordRow.record_id).where(RecordRow.record_id.in_(ids)))
            inserted.update(found.scalars())
        replacing = [r for r in latest if r[0] not in inserted]
        self.delete_names(conn, scope_id, [r[2] for r in replacing])
        self._records.run(conn, replacing)

    def delete_names(self, conn: Connection, scope_id: bytes, indexes: Collection[bytes]) -> int:
        """Deletes the records with these name indexes (one executemany; on PostgreSQL one
        statement); returns how many there were."""
        if not indexes:
            return 0
        self.lock_names(conn, scope_id)
        if self._postgres:  # one statement with an array, not one per name
            params: Any = {"scope_id": scope_id, "indexes": list(indexes)}
            return int(conn.exec_driver_sql(self._delete_any_sql, params).rowcount)
        rows = [{"scope_id": scope_id, "name_index": index} for index in indexes]
        params = (
            rows
            if self._delete_order is None
            else [tuple(r[k] for k in self._delete_order) for r in rows]
        )
        result = conn.exec_driver_sql(self._delete_sql, params)
        return int(result.rowcount)

    def delete_unchanged(
        self, conn: Connection, record_ids: Sequence[bytes], headers: Sequence[bytes]
    ) -> int:
        """Deletes the records with these ids whose headers are still these (a job that read
        them finds out, by the count returned, whether another writer got there first)."""
        if self._postgres:  # two arrays in binary, not an IN list of a parameter per value
            params = {"ids": list(record_ids), "headers": list(headers)}
            return int(conn.exec_driver_sql(self._delete_unchanged_sql, params).rowcount)
        deleted = 0
        for pairs in in_chunks(zip(record_ids, headers, strict=True)):
            ids, olds = zip(*pairs, strict=True)
            where = RecordRow.record_id.in_(ids), RecordRow.header.in_(olds)
            deleted += int(conn.execute(delete(RecordRow).where(*where)).rowcount)
        return deleted

    def swap_headers(
        self, conn: Connection, version: int, changes: Sequence[tuple[bytes, bytes, bytes]]
    ) -> int:
        """For each ``(record_id, old, new)``: the record's header becomes ``new`` and its key
        version ``version``, if its header is still ``old`` (compare and swap: a record
        replaced or deleted meanwhile is left alone). Returns how many changed."""
        if not changes:
            return 0
        if self._postgres:  # one statement over three arrays, not one UPDATE per record
            rids, olds, news = (list(column) for column in zip(*changes, strict=True))
            params: Any = {"version": version, "rids": rids, "olds": olds, "news": news}
            return int(conn.exec_driver_sql(self._swap_headers_sql, params).rowcount)
        params = [(new, version, rid, old) for rid, old, new in changes]
        return int(conn.exec_driver_sql(self._swap_headers_sql, params).rowcount)

    def add_segments(self, conn: Connection, rows: Sequence[tuple[bytes, int, bytes]]) -> None:
        """Inserts ``(record_id, seq, body)`` segment rows."""
        self._segments.run(conn, rows)
