"""Usage per scope for chargeback and showback: records, stored bytes, key versions, key
operations and KMS calls, over a period.

Counts of stored data come from the tables; operations come from the audit trail (so they are
as tamper-evident as the trail); KMS calls are counted per scope in each process and written to
the trail as ``kms.usage`` events when the vault closes (and by :func:`flush_kms_usage`).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from keycustody.storage.models import RecordRow, ScopeKeyRow, ScopeRow

if TYPE_CHECKING:
    from keycustody.vault import Vault

KEY_ACTIONS = ("key.", "kek.", "scope.", "erasure.", "records.purge")


@dataclass(frozen=True, slots=True)
class ScopeUsage:
    """One scope's usage: what it stores now, and what happened to it in the period."""

    scope: str
    records: int
    bytes: int
    key_versions: dict[str, int]
    """Key versions by state (ACTIVE, DEACTIVATED, DESTROYED, ...)."""
    writes: int = 0
    """Records written in the period."""
    key_operations: int = 0
    """Key lifecycle events in the period (create, rotate, rewrap, suspend, shred, ...)."""
    kms_calls: int = 0
    """KMS wrap/unwrap calls made for this scope's keys in the period."""
    denied: int = 0
    """Denied or failed accesses recorded in the period."""
    actions: dict[str, int] = field(default_factory=dict)


class KmsUsage:
    """Per-scope KMS call counter of one process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, scope: str, n: int = 1) -> None:
        """Counts ``n`` KMS calls for ``scope``."""
        with self._lock:
            self._counts[scope] += n

    def take(self) -> dict[str, int]:
        """The counts so far, resetting them."""
        with self._lock:
            counts = dict(self._counts)
            self._counts.clear()
        return counts

    def peek(self) -> dict[str, int]:
        """The counts so far."""
        with self._lock:
            return dict(self._counts)


def flush_kms_usage(vault: Vault) -> None:
    """Writes this process's KMS call counts to the audit trail (one event per scope)."""
    counts = vault._keys.kms_usage.take()
    if not counts:
        return
    # One transaction for them all: a commit each took 3.4 ms, 34 s at close for 10,000 scopes.
    with vault._write() as s, s.begin():
        for scope, calls in sorted(counts.items()):
            vault.audit.append(
                s, action="kms.usage", subject=scope, outcome="ok", details={"kms_calls": calls}
            )


def _subject_scope(subject: str) -> str:
    # Subjects are "path", "path#version" or "path:operation".
    return subject.split("#", 1)[0].split(":", 1)[0]


def usage(
    vault: Vault, *, since: datetime | None = None, until: datetime | None = None
) -> list[ScopeUsage]:
    """See :meth:`keycustody.Vault.usage`."""
    with vault._read() as s:
        paths = dict(s.execute(select(ScopeRow.id, ScopeRow.path)).all())
        stored = {
            scope_id: (int(n), int(b or 0))
            for scope_id, n, b in s.execute(
                select(RecordRow.scope_id, func.count(), func.sum(RecordRow.size)).group_by(
                    RecordRow.scope_id
                )
            ).all()
        }
        versions: dict[bytes, Counter[str]] = {}
        for scope_id, state, n in s.execute(
            select(ScopeKeyRow.scope_id, ScopeKeyRow.state, func.count()).group_by(
                ScopeKeyRow.scope_id, ScopeKeyRow.state
            )
        ).all():
            versions.setdefault(scope_id, Counter())[state] += int(n)
    writes: Counter[str] = Counter()
    key_ops: Counter[str] = Counter()
    kms: Counter[str] = Counter()
    denied: Counter[str] = Counter()
    actions: dict[str, Counter[str]] = {}
    for event in vault.audit.events():
        if (since is not None and event.at < since) or (until is not None and event.at >= until):
            continue
        scope = _subject_scope(event.subject)
        actions.setdefault(scope, Counter())[event.action] += 1
        if event.action in ("record.put", "record.put_stream"):
            writes[scope] += int(event.details_dict().get("records", 0))
        elif event.action == "kms.usage":
            kms[scope] += int(event.details_dict().get("kms_calls", 0))
        elif event.outcome != "ok":
            denied[scope] += 1
        elif event.action.startswith(KEY_ACTIONS):
            key_ops[scope] += 1
    if until is None:
        for scope, calls in vault._keys.kms_usage.peek().items():
            kms[scope] += calls
    out = []
    for scope_id, path in sorted(paths.items(), key=lambda item: item[1]):
        records, size = stored.get(scope_id, (0, 0))
        out.append(
            ScopeUsage(
                path,
                records,
                size,
                dict(sorted(versions.get(scope_id, Counter()).items())),
                writes[path],
                key_ops[path],
                kms[path],
                denied[path],
                dict(sorted(actions.get(path, Counter()).items())),
            )
        )
    return out
