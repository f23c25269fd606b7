"""Lineage: which keys protect a record and what happened to them, and what a key protects.

A record's history is its own events (sealed, re-encrypted) plus the scope-level events that
moved every record of its key version (a rewrap batch names its from/to versions) and the KEK
moves of its tenant. So a rewrap of 100,000 records writes one event per batch, not one per
record, and the lineage of any one record is still exact.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, cast, overload

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from keycustody import derived
from keycustody.errors import InvalidInputError, NotFoundError, ShreddedError
from keycustody.keys.hierarchy import ScopeRef, load_scope
from keycustody.storage.models import (
    LineageEventRow,
    RecordRow,
    ScopeKeyRow,
    ScopeKeyWrapRow,
    ScopeRow,
    TenantKekRow,
)
from keycustody.storage.repository import in_chunks
from keycustody.types import KeyVersionInfo, utc

if TYPE_CHECKING:
    from keycustody.vault import Vault


def _utc(ts: datetime | None) -> datetime | None:
    return None if ts is None else utc(ts)


@dataclass(frozen=True, slots=True)
class LineageEvent:
    """One event in a record's key history."""

    at: datetime
    event: str
    """sealed, rewrapped, reencrypted, kek_rotated, key_rotated, key_compromised, ..."""
    scope: str
    from_version: int | None = None
    to_version: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KeyLink:
    """One link of the key chain above a record: a scope key version and what wraps it."""

    scope: str
    version: int
    state: str
    wrapped_by: str
    also_wrapped_by: tuple[str, ...] = ()
    """A tenant key version's wraps by the tenant's other KEKs (``kek:<id>#<version>``, in
    failover order); any one of them unwraps it too."""


@dataclass(frozen=True, slots=True)
class RecordLineage(Sequence[LineageEvent]):
    """A record's key custody: its DEK, the key chain up to the KEK, and its history.

    It is also the sequence of its lineage events, oldest first.
    """

    name: str
    scope: str
    dek_id: str
    """The record id: each record has its own DEK, made with it."""
    key_version: int
    sealed_version: int
    kek_id: str
    kek_version: str
    chain: list[KeyLink]
    events: list[LineageEvent]
    derivatives: list[str] = field(default_factory=list)
    """Names of the records derived from this one (they die with it)."""
    source: str | None = None
    """For a derived record: the record id of its source."""
    keks: list[str] = field(default_factory=list)
    """Every KEK wrap of the tenant key version at the top of the chain, as
    ``<KEK id>#<version>``, primary first (``kek_id``/``kek_version`` name the primary)."""

    @overload
    def __getitem__(self, index: int) -> LineageEvent: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[LineageEvent]: ...
    def __getitem__(self, index: int | slice) -> LineageEvent | Sequence[LineageEvent]:
        return self.events[index]

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[LineageEvent]:
        return iter(self.events)


@dataclass(frozen=True, slots=True)
class Protection:
    """The records a key protects."""

    key: str
    records: int
    by_scope: dict[str, int]
    key_versions: list[str]
    """The scope key versions below the key, as ``path#version``."""


def _extra(
    s: Session, scope_ids: list[bytes] | None = None
) -> dict[tuple[bytes, int], tuple[str, ...]]:
    """``kek:<id>#<version>`` of the additional KEK wraps of tenant key versions (of these
    scopes, or all), in each tenant's KEK order."""
    query = select(
        ScopeKeyWrapRow.scope_id,
        ScopeKeyWrapRow.version,
        ScopeKeyWrapRow.kek_id,
        ScopeKeyWrapRow.kek_version,
        TenantKekRow.position,
    ).outerjoin(
        TenantKekRow,
        (TenantKekRow.scope_id == ScopeKeyWrapRow.scope_id)
        & (TenantKekRow.kek_id == ScopeKeyWrapRow.kek_id),
    )
    if scope_ids is not None:
        query = query.where(ScopeKeyWrapRow.scope_id.in_(scope_ids))
    rows = sorted(s.execute(query).all(), key=lambda r: (r.position is None, r.position or 0))
    out: dict[tuple[bytes, int], tuple[str, ...]] = {}
    for r in rows:
        key = (r.scope_id, r.version)
        out[key] = (*out.get(key, ()), f"kek:{r.kek_id}#{r.kek_version}")
    return out


def _chain(s: Session, ref: ScopeRef, version: int) -> list[KeyLink]:
    links: list[KeyLink] = []
    scope_id: bytes | None = ref.id
    while scope_id is not None:
        scope = s.get(ScopeRow, scope_id)
        row = s.get(ScopeKeyRow, (scope_id, version))
        if scope is None or row is None:
            raise NotFoundError("a key of the record's chain is missing")
        also: tuple[str, ...] = ()
        if scope.parent_id is None:
            wrapped_by = f"kek:{row.kek_id}#{row.kek_version}"
            also = _extra(s, [scope_id]).get((scope_id, version), ())
        else:
            parent = s.get(ScopeRow, scope.parent_id)
            wrapped_by = f"scope:{parent.path if parent else '?'}#v{row.parent_version}"
        links.append(KeyLink(scope.path, version, row.state, wrapped_by, also))
        scope_id = scope.parent_id
        version = row.parent_version or 0
    return links


def _event(row: LineageEventRow, scope: str) -> LineageEvent:
    at = _utc(row.at)
    assert at is not None  # noqa: S101 - the column is NOT NULL
    return LineageEvent(
        at, row.event, scope, row.from_version, row.to_version, json.loads(row.details)
    )


def _scope_events(s: Session, path: str, event: str, since: datetime) -> list[LineageEvent]:
    """The scope-level ``event`` events of scope ``path`` from ``since`` on, oldest first."""
    scope = load_scope(s, path)
    rows = s.scalars(
        select(LineageEventRow)
        .where(
            LineageEventRow.scope_id == scope.id,
            LineageEventRow.event == event,
            LineageEventRow.at >= since,
        )
        .order_by(LineageEventRow.id)
    ).all()
    return [_event(e, scope.path) for e in rows]


def record_lineage(vault: Vault, ref: ScopeRef, name: str, name_index: bytes) -> RecordLineage:
    """The lineage of the record with ``name_index`` in ``ref``."""
    with vault._read() as s:
        row = s.execute(
            select(
                RecordRow.record_id,
                RecordRow.key_version,
                RecordRow.sealed_version,
                RecordRow.created_at,
                RecordRow.header,
                RecordRow.source_id,
            ).where(RecordRow.scope_id == ref.id, RecordRow.name_index == name_index)
        ).one_or_none()
        if row is None:
            raise NotFoundError(f"no record of that name in scope {ref.path!r}")
        source_id = row.source_id
        if source_id is not None:  # a derived record's key path is its source's
            source = s.execute(
                select(RecordRow.key_version).where(RecordRow.record_id == source_id)
            ).one_or_none()
            if source is None or source.key_version is None:
                raise ShreddedError("the source record of this derived record was deleted")
            chain = _chain(s, ref, source.key_version)
            derivatives: list[str] = []
        else:
            assert row.key_version is not None  # noqa: S101 - only derived rows lack it
            chain = _chain(s, ref, row.key_version)
            keys = vault._keys.keys(s, ref, {row.key_version})
            derivatives = derived.derivatives(s, ref.id, row.record_id, row.header, keys)
        created = _utc(row.created_at)
        assert created is not None  # noqa: S101 - NOT NULL
        events = [LineageEvent(created, "sealed", ref.path, None, row.sealed_version)]
        own = s.scalars(
            select(LineageEventRow).where(LineageEventRow.record_id == row.record_id)
        ).all()
        events += [_event(e, ref.path) for e in own]
        # Scope-level events that moved this record's version, walked forward in time.
        scoped = s.scalars(
            select(LineageEventRow)
            .where(
                LineageEventRow.scope_id == ref.id,
                LineageEventRow.record_id.is_(None),
                LineageEventRow.at >= row.created_at,
                LineageEventRow.event == "rewrapped",
            )
            .order_by(LineageEventRow.id)
        ).all()
        current = row.sealed_version
        for e in [e for e in own if e.event == "reencrypted"]:
            current = e.to_version or current
        seen: set[tuple[int | None, int | None]] = set()
        for e in scoped:
            if e.from_version == current and (e.from_version, e.to_version) not in seen:
                seen.add((e.from_version, e.to_version))
                events.append(_event(e, ref.path))
                current = e.to_version or current
        # KEK moves of the tenant at the top of the chain.
        events += _scope_events(s, chain[-1].scope, "kek_rotated", row.created_at)
        # Moves of the key chain above the record: each ancestor rewrapping its children's
        # keys (after a rotation, a rewrap or an erasure's re-key) changed this record's path.
        for link in chain[1:]:
            events += _scope_events(s, link.scope, "child_keys_rewrapped", row.created_at)
    events.sort(key=lambda e: e.at)
    kek_id, _, kek_version = chain[-1].wrapped_by.removeprefix("kek:").rpartition("#")
    keks = [w.removeprefix("kek:") for w in (chain[-1].wrapped_by, *chain[-1].also_wrapped_by)]
    return RecordLineage(
        name,
        ref.path,
        row.record_id.hex(),
        row.key_version or 0,
        row.sealed_version,
        kek_id,
        kek_version,
        chain,
        events,
        derivatives,
        source_id.hex() if source_id is not None else None,
        keks,
    )


class _VersionRow(Protocol):
    version: int
    state: str
    kek_id: str | None
    kek_version: str | None
    parent_version: int | None
    created_at: datetime
    deactivated_at: datetime | None
    compromised_at: datetime | None
    destroyed_at: datetime | None


_VERSION_COLUMNS = (
    ScopeKeyRow.scope_id,
    ScopeKeyRow.version,
    ScopeKeyRow.state,
    ScopeKeyRow.kek_id,
    ScopeKeyRow.kek_version,
    ScopeKeyRow.parent_version,
    ScopeKeyRow.created_at,
    ScopeKeyRow.deactivated_at,
    ScopeKeyRow.compromised_at,
    ScopeKeyRow.destroyed_at,
)
"""Every column of a key version but the wrapped key itself."""


def _version_info(
    r: _VersionRow,
    path: str,
    parent_path: str | None,
    records: int,
    also: tuple[str, ...] = (),
) -> KeyVersionInfo:
    wrapped_by = (
        f"kek:{r.kek_id}#{r.kek_version}"
        if parent_path is None
        else f"scope:{parent_path}#v{r.parent_version}"
    )
    created = _utc(r.created_at)
    assert created is not None  # noqa: S101 - NOT NULL
    return KeyVersionInfo(
        path,
        r.version,
        r.state,
        wrapped_by,
        records,
        created,
        _utc(r.deactivated_at),
        _utc(r.compromised_at),
        _utc(r.destroyed_at),
        also,
    )


def key_versions(vault: Vault, ref: ScopeRef) -> list[KeyVersionInfo]:
    """Every version of a scope's key with its state, wrapper and record count."""
    with vault._read() as s:
        counts = dict(
            s.execute(
                select(RecordRow.key_version, func.count())
                .where(RecordRow.scope_id == ref.id)
                .group_by(RecordRow.key_version)
            ).all()
        )
        parent = s.get(ScopeRow, ref.parent_id) if ref.parent_id else None
        rows = s.execute(
            select(*_VERSION_COLUMNS)
            .where(ScopeKeyRow.scope_id == ref.id)
            .order_by(ScopeKeyRow.version)
        ).all()
        extra = _extra(s, [ref.id]) if ref.parent_id is None else {}
        return [
            _version_info(
                r,
                ref.path,
                parent.path if parent else None,
                int(counts.get(r.version, 0)),
                extra.get((ref.id, r.version), ()),
            )
            for r in rows
        ]


def all_key_versions(vault: Vault) -> dict[str, list[KeyVersionInfo]]:
    """:func:`key_versions` of every scope, by path, in three queries whatever the number of
    scopes and records (records are counted with one ``GROUP BY scope, version``)."""
    with vault._read() as s:
        scopes = {
            scope_id: (path, parent_id)
            for scope_id, path, parent_id in s.execute(
                select(ScopeRow.id, ScopeRow.path, ScopeRow.parent_id)
            ).all()
        }
        counts = {
            (scope_id, version): int(n)
            for scope_id, version, n in s.execute(
                select(RecordRow.scope_id, RecordRow.key_version, func.count()).group_by(
                    RecordRow.scope_id, RecordRow.key_version
                )
            ).all()
        }
        rows = s.execute(
            select(*_VERSION_COLUMNS).order_by(ScopeKeyRow.scope_id, ScopeKeyRow.version)
        ).all()
        extra = _extra(s)
    out: dict[str, list[KeyVersionInfo]] = {path: [] for path, _ in scopes.values()}
    for r in rows:
        path, parent_id = scopes[r.scope_id]
        parent_path = scopes[parent_id][0] if parent_id is not None else None
        out[path].append(
            _version_info(
                r,
                path,
                parent_path,
                counts.get((r.scope_id, r.version), 0),
                extra.get((r.scope_id, r.version), ()),
            )
        )
    return dict(sorted(out.items()))


def _subtree(
    s: Session, roots: list[tuple[bytes, set[int] | None]]
) -> dict[bytes, set[int] | None]:
    """Scope ids below the given (scope, versions) roots, with the versions that hang below
    (None: every version); a level of the tree at a time, a chunk of parents a statement."""
    found: dict[bytes, set[int] | None] = {}
    level: dict[bytes, set[int] | None] = {}
    for scope_id, versions in roots:
        known = level.get(scope_id, set())
        level[scope_id] = None if versions is None or known is None else known | versions
    while level:
        found.update(level)
        below: dict[bytes, set[int]] = {}
        for ids in in_chunks(level):
            for child_id, child_version, parent_id, parent_version in s.execute(
                select(
                    ScopeKeyRow.scope_id,
                    ScopeKeyRow.version,
                    ScopeRow.parent_id,
                    ScopeKeyRow.parent_version,
                )
                .join(ScopeRow, ScopeRow.id == ScopeKeyRow.scope_id)
                .where(ScopeRow.parent_id.in_(ids))
            ):
                versions = level[cast(bytes, parent_id)]  # a child's parent_id is set
                if versions is None or parent_version in versions:
                    below.setdefault(child_id, set()).add(child_version)
        level = dict(below)
    return found


def protected_by(vault: Vault, key: str) -> Protection:
    """See :meth:`keycustody.Vault.protected_by`."""
    with vault._read() as s:
        if ":" in key:  # a KEK id
            rows = s.execute(
                select(ScopeKeyRow.scope_id, ScopeKeyRow.version)
                .join(ScopeRow, ScopeRow.id == ScopeKeyRow.scope_id)
                .where(
                    ScopeRow.parent_id.is_(None),
                    ScopeKeyRow.kek_id == key,
                    ScopeKeyRow.wrapped.is_not(None),
                )
            ).all()
            rows = [
                *rows,
                *s.execute(
                    select(ScopeKeyWrapRow.scope_id, ScopeKeyWrapRow.version).where(
                        ScopeKeyWrapRow.kek_id == key
                    )
                ).all(),
            ]
            per_scope: dict[bytes, set[int]] = {}
            for scope_id, version in rows:
                per_scope.setdefault(scope_id, set()).add(version)
            roots: list[tuple[bytes, set[int] | None]] = list(per_scope.items())
        else:
            path, _, version_text = key.partition("#")
            ref = load_scope(s, path)
            if version_text:
                try:
                    version = int(version_text.removeprefix("v"))
                except ValueError:
                    raise InvalidInputError(f"bad key version in {key!r}") from None
                roots = [(ref.id, {version})]
            else:
                roots = [(ref.id, None)]
        tree = _subtree(s, roots)
        paths: dict[bytes, str] = {}
        counts: dict[bytes, dict[int | None, int]] = {}
        for ids in in_chunks(tree):
            query = select(ScopeRow.id, ScopeRow.path).where(ScopeRow.id.in_(ids))
            paths.update((scope_id, path) for scope_id, path in s.execute(query))
            for scope_id, key_version, n in s.execute(
                select(RecordRow.scope_id, RecordRow.key_version, func.count())
                .where(RecordRow.scope_id.in_(ids))
                .group_by(RecordRow.scope_id, RecordRow.key_version)
            ):
                counts.setdefault(scope_id, {})[key_version] = n
    by_scope: dict[str, int] = {}
    versions_out: list[str] = []
    for scope_id, versions in tree.items():
        path = paths.get(scope_id, scope_id.hex())
        per_version = counts.get(scope_id, {})
        if versions is None:
            versions_out.append(f"{path}#*")
            by_scope[path] = sum(per_version.values())
        else:
            versions_out += [f"{path}#{v}" for v in sorted(versions)]
            by_scope[path] = sum(per_version.get(v, 0) for v in versions)
    total = sum(by_scope.values())
    return Protection(key, total, dict(sorted(by_scope.items())), sorted(versions_out))
