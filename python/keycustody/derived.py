"""Derived records: embeddings, chunks and summaries that die with their source record.

A derived record's DEK is wrapped under a key derived from its source record's DEK (suite 3,
see ``rust/keycustody-core/src/derived.rs``). Deleting, replacing or shredding the source
destroys that key in the same step, so every derivative becomes unreadable at once, without
touching its rows (``purge`` removes them later). "Forget this file" then really forgets its
embeddings too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from keycustody import _core
from keycustody.errors import IntegrityError, NotFoundError, ShreddedError
from keycustody.storage.models import RecordRow
from keycustody.storage.repository import RecordStatements, in_chunks
from keycustody.types import RecordInfo
from keycustody.validation import Data, check_items, encode_name, size_of

if TYPE_CHECKING:
    from keycustody.payloads import Payloads
    from keycustody.scope import Scope

SUITE_DERIVED = 3


def _source_row(
    s: Session, scope: Scope, *, name_index: bytes | None = None, record_id: bytes | None = None
) -> Any:
    query = select(RecordRow.record_id, RecordRow.header, RecordRow.key_version).where(
        RecordRow.scope_id == scope._ref.id
    )
    query = (
        query.where(RecordRow.name_index == name_index)
        if name_index is not None
        else query.where(RecordRow.record_id == record_id)
    )
    # FOR SHARE (PostgreSQL): the source cannot be deleted until the derivatives commit.
    return s.execute(query.with_for_update(read=True)).one_or_none()


def put_derived(scope: Scope, items: Iterable[tuple[str, Data]], source: str) -> list[RecordInfo]:
    """Stores records derived from record ``source`` of the same scope (one transaction)."""
    raw_source = encode_name(source)
    vault = scope._vault
    names, raws, datas = check_items(list(items), vault.max_record_bytes)
    writer = vault._records
    with vault._write_records() as s, s.begin():
        _, key = scope._active_key(s)
        row = _source_row(s, scope, name_index=key.name_index(raw_source))
        if row is None:
            raise NotFoundError(f"no source record of that name in scope {scope.path!r}")
        if row.key_version is None:
            raise IntegrityError("a derived record cannot be the source of another")
        keys = vault._keys.keys(s, scope._ref, {row.key_version})
        headers, name_cts, bodies = _core.seal_derived(
            scope._ref.id, keys, raw_source, row.header, raws, datas
        )
        now = datetime.now(UTC)
        ts = writer.timestamp(now)
        sizes = [size_of(d) for d in datas]
        rows = [
            (h[24:40], scope._ref.id, h[40:72], None, h, n, b, size, ts, 0, row.record_id, None)
            for h, n, b, size in zip(headers, name_cts, bodies, sizes, strict=True)
        ]
        vault._payloads.replacing(s, scope._ref.id, [h[40:72] for h in headers])
        writer.replace(s.connection(), scope._ref.id, vault._payloads.place(s, rows))
        vault._audit_change(
            s,
            "record.put_derived",
            scope.path,
            details={"records": len(headers), "source_record": row.record_id.hex()},
        )
    return [
        RecordInfo(name, h[24:40].hex(), size, 0, now)
        for name, h, size in zip(names, headers, sizes, strict=True)
    ]


def _source_for(s: Session, scope: Scope, source_id: bytes | None) -> tuple[bytes, dict[int, Any]]:
    row = _source_row(s, scope, record_id=source_id) if source_id is not None else None
    if row is None or row.key_version is None:
        raise ShreddedError(
            "the source record of this derived record was deleted or replaced: the key that "
            "protected it is gone, so it can never be read again"
        )
    return row.header, scope._vault._keys.keys(s, scope._ref, {row.key_version})


def _by_source(rows: Sequence[Any]) -> dict[bytes | None, list[int]]:
    """Positions of ``rows`` grouped by source record: one key lookup and one parallel Rust
    call per source."""
    groups: dict[bytes | None, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.source_id, []).append(i)
    return groups


def open_payloads(
    s: Session, scope: Scope, rows: Sequence[Any], raw_names: Sequence[bytes]
) -> list[bytes]:
    """Opens derived records (``rows`` with record_id, source_id, header, body, blob_key) by
    name."""
    out: list[bytes] = [b""] * len(rows)
    payloads = scope._vault._payloads
    for source_id, positions in _by_source(rows).items():
        header, keys = _source_for(s, scope, source_id)
        group = [rows[i] for i in positions]
        opened = _core.open_derived(
            scope._ref.id,
            keys,
            header,
            [raw_names[i] for i in positions],
            [r.header for r in group],
            payloads.bodies(scope._ref.id, group),
        )
        for i, data in zip(positions, opened, strict=True):
            out[i] = data
    return out


def open_names(s: Session, scope: Scope, rows: Sequence[Any]) -> list[bytes | None]:
    """Decrypts the names of derived records (``rows`` with source_id, header, name_ct);
    None for a record whose source is gone (unreadable for good; ``purge`` removes it)."""
    out: list[bytes | None] = [None] * len(rows)
    for source_id, positions in _by_source(rows).items():
        try:
            header, keys = _source_for(s, scope, source_id)
        except ShreddedError:
            continue
        headers = [rows[i].header for i in positions]
        name_cts = [rows[i].name_ct for i in positions]
        opened = _core.open_derived(scope._ref.id, keys, header, None, headers, name_cts)
        for i, name in zip(positions, opened, strict=True):
            out[i] = name
    return out


def derivatives(
    s: Session, scope_id: bytes, record_id: bytes, header: bytes, keys: dict[int, Any]
) -> list[str]:
    """Names of the records derived from record ``record_id`` (its ``header`` and keys)."""
    rows = s.execute(
        select(RecordRow.header, RecordRow.name_ct).where(RecordRow.source_id == record_id)
    ).all()
    if not rows:
        return []
    names = _core.open_derived(
        scope_id, keys, header, None, [r.header for r in rows], [r.name_ct for r in rows]
    )
    return sorted(n.decode("utf-8") for n in names)


def rederive(
    writer: RecordStatements,
    payloads: Payloads,
    s: Session,
    scope_id: bytes,
    keys: tuple[dict[int, Any], dict[int, Any]],
    sources: Sequence[tuple[bytes, bytes, bytes]],
) -> int:
    """Re-seals the derivatives of source records that got new DEKs (re-encryption) under the
    new sources, in the caller's transaction; returns how many. ``keys`` are the old and new
    scope keys, ``sources`` ``(old source header, new source header, source name)`` triples.
    One query and one write for them all: a batch of sources may have no derivatives at all."""
    old_keys, new_keys = keys
    by_id: dict[bytes | None, tuple[bytes, bytes, bytes]] = {
        old[24:40]: (old, new, name) for old, new, name in sources
    }
    rows = writer.find_derived(s.connection(), [old[24:40] for old, _, _ in sources])
    if not rows:
        return 0
    ts = writer.timestamp(datetime.now(UTC))
    new_rows: list[tuple[Any, ...]] = []
    for source_id, positions in _by_source(rows).items():
        old_header, new_header, source_name = by_id[source_id]
        group = [rows[i] for i in positions]
        headers = [r.header for r in group]
        names = _core.open_derived(
            scope_id, old_keys, old_header, None, headers, [r.name_ct for r in group]
        )
        datas = _core.open_derived(
            scope_id,
            old_keys,
            old_header,
            names,
            headers,
            payloads.bodies(scope_id, group),
        )
        new_headers, name_cts, bodies = _core.seal_derived(
            scope_id, new_keys, source_name, new_header, names, datas
        )
        new_rows += [
            (h[24:40], scope_id, h[40:72], None, h, n, b, len(d), ts, 0, new_header[24:40], None)
            for h, n, b, d in zip(new_headers, name_cts, bodies, datas, strict=True)
        ]
    for old_ids in in_chunks(r.record_id for r in rows):
        payloads.delete_records(s, RecordRow.record_id.in_(old_ids))
    writer.replace(s.connection(), scope_id, payloads.place(s, new_rows))
    return len(rows)


def purge_orphans(s: Session, payloads: Payloads) -> int:
    """Deletes derived records whose source record is gone (unreadable for good), and their
    blob store objects after the commit."""
    sources = select(RecordRow.record_id).scalar_subquery()
    orphaned = (RecordRow.source_id.is_not(None), RecordRow.source_id.not_in(sources))
    return payloads.delete_records(s, *orphaned)
