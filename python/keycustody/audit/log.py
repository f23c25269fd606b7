"""AuditLog: the append-only, hash-chained, MAC-sealed audit trail of one vault.

Each event is written in the transaction of the change it records, so a change is never
committed without its event (fail closed). Events form a SHA-256 chain (see
:mod:`keycustody.audit.events`); each link is sealed with HMAC-SHA-256 under the audit key, a
random 256-bit key stored only wrapped by the audit KEK in the KMS and held unwrapped in a
Rust :class:`~keycustody._core.KeyHandle` (its bytes never enter Python). Someone with write
access to the database but not to the KMS can therefore not edit, insert, delete, reorder or
re-chain events without :meth:`AuditLog.verify` noticing; dropping events from the tail is
noticed against a head anchored outside the database (``expected_head``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, event, insert, select, type_coerce, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.types import NullType

from keycustody._core import KeyHandle
from keycustody.audit.events import (
    GENESIS,
    HASH_LEN,
    MAX_ACTION,
    MAX_ACTOR,
    MAX_KMS_KEY_ID,
    MAX_KMS_KEY_VERSION,
    MAX_SUBJECT,
    OUTCOMES,
    AuditEvent,
    AuditReport,
    canonical_details,
    check_text,
    event_hash,
)
from keycustody.durable import fsync_dir
from keycustody.errors import AuditError, IntegrityError, InvalidInputError, KeyCustodyError
from keycustody.kms.registry import ProviderRegistry
from keycustody.storage.engine import db_message, lock_audit_head
from keycustody.storage.models import AuditEventRow, AuditKeyRow
from keycustody.types import EncryptionContext, KeyId, WrappedKey, utc

AUDIT_KEY_LEN = 32
_AUDIT_KEY_ID = 1
_CHUNK = 1000

_T = AuditEventRow.__table__.c
_EVENT_COLUMNS = (
    _T.seq,
    _T.at,
    _T.actor,
    _T.action,
    _T.subject,
    _T.kms_key_id,
    _T.kms_key_version,
    _T.outcome,
    _T.details,
    _T.prev_hash,
    _T.hash,
    _T.mac,
)


def _raw(*columns: Any) -> list[ColumnElement[Any]]:
    # Read stored values exactly as the driver returns them (no type processing), so a row a
    # tamperer filled with values of the wrong type is reported by verify instead of crashing it.
    return [type_coerce(c, NullType()).label(c.name) for c in columns]


class _MalformedError(Exception):
    """A stored row whose values cannot be an event (wrong types or sizes)."""


@dataclass(frozen=True, slots=True)
class _Unreadable:
    """A row the database driver cannot even return (e.g. text that is not UTF-8)."""

    seq: int | None


def _text(value: object, column: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _MalformedError(f"column {column!r} is not text")
    return value


def _digest(value: object, column: str) -> bytes:
    if isinstance(value, memoryview | bytearray):
        value = bytes(value)
    if not isinstance(value, bytes) or len(value) != HASH_LEN:
        raise _MalformedError(f"column {column!r} is not {HASH_LEN} bytes")
    return value


def _timestamp(value: object) -> datetime:
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, str):
        try:
            return utc(datetime.fromisoformat(value))
        except ValueError:
            pass
    raise _MalformedError("column 'at' is not a timestamp")


def _decode(row: Sequence[Any]) -> AuditEvent:
    """An event from raw column values (in ``_EVENT_COLUMNS`` order).

    Raises:
        _MalformedError: a value has the wrong type or size.
    """
    seq, at, actor, action, subject, kms_id, kms_version, outcome, details, prev, digest, mac = row
    if type(seq) is not int:
        raise _MalformedError("column 'seq' is not an integer")
    return AuditEvent(
        seq=seq,
        at=_timestamp(at),
        actor=_text(actor, "actor"),
        action=_text(action, "action"),
        subject=_text(subject, "subject"),
        outcome=_text(outcome, "outcome"),
        kms_key_id=_text(kms_id, "kms_key_id", optional=True),
        kms_key_version=_text(kms_version, "kms_key_version", optional=True),
        details=_text(details, "details"),
        prev_hash=_digest(prev, "prev_hash"),
        hash=_digest(digest, "hash"),
        mac=_digest(mac, "mac"),
    )


def _recompute(ev: AuditEvent) -> bytes:
    return event_hash(
        seq=ev.seq,
        at=ev.at,
        actor=ev.actor,
        action=ev.action,
        subject=ev.subject,
        kms_key_id=ev.kms_key_id,
        kms_key_version=ev.kms_key_version,
        outcome=ev.outcome,
        details=ev.details,
        prev_hash=ev.prev_hash,
    )


class AuditLog:
    """The audit trail of one vault: append events, verify the chain, export it.

    Args:
        vault_id: The vault's id; binds the wrapped audit key to this vault.
        actor: Who acts, recorded in every event this instance appends.
        sessions: Makes write sessions (SQLite: ``BEGIN IMMEDIATE``) for :meth:`record`,
            :meth:`ensure_key` and :meth:`rewrap_key`.
        registry: The vault's KMS providers.
        audit_kek: Id of the KEK that wraps the audit key when it is first created (e.g.
            ``local:audit``). An existing audit key is unwrapped with the KEK that wrapped it.
        read_sessions: Makes read-only sessions for :meth:`verify`, :meth:`events`,
            :meth:`tail` and :meth:`export` (default: ``sessions``, which on SQLite briefly
            takes the write lock for each chunk read).
    """

    def __init__(
        self,
        vault_id: str,
        actor: str,
        sessions: Callable[[], Session],
        registry: ProviderRegistry,
        audit_kek: str,
        *,
        read_sessions: Callable[[], Session] | None = None,
    ) -> None:
        check_text(actor, "actor", MAX_ACTOR)
        self.vault_id = vault_id
        self.actor = actor
        self.audit_kek = audit_kek
        self._sessions = sessions
        self._read_sessions = read_sessions or sessions
        self._registry = registry
        self._key: KeyHandle | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<AuditLog vault={self.vault_id} kek={self.audit_kek!r}>"

    # -- the audit key --------------------------------------------------------------------

    def _context(self, key_id: int) -> EncryptionContext:
        return EncryptionContext(
            {"keycustody": "audit-key/v1", "vault": self.vault_id, "id": str(key_id)}
        )

    def _cached(self) -> KeyHandle | None:
        with self._lock:
            return self._key

    def _adopt(self, handle: KeyHandle) -> KeyHandle:
        with self._lock:
            if self._key is None:
                self._key = handle
            return self._key

    def _forget(self, *_: object) -> None:
        with self._lock:
            self._key = None

    @staticmethod
    def _stored(session: Session) -> AuditKeyRow | None:
        return session.scalars(select(AuditKeyRow).order_by(AuditKeyRow.id).limit(1)).first()

    def _unwrap(self, row: AuditKeyRow) -> KeyHandle:
        wrapped = WrappedKey(KeyId(row.kek_id), row.kek_version, bytes(row.wrapped))
        handle = self._registry.unwrap(wrapped, self._context(row.id))
        if handle.size != AUDIT_KEY_LEN:
            raise IntegrityError("the stored audit key has the wrong size")
        return handle

    def _new_key(self) -> tuple[KeyHandle, dict[str, Any]]:
        handle = KeyHandle.generate(AUDIT_KEY_LEN)
        wrapped = self._registry.wrap(KeyId(self.audit_kek), handle, self._context(_AUDIT_KEY_ID))
        values = {
            "id": _AUDIT_KEY_ID,
            "kek_id": wrapped.key_id,
            "kek_version": wrapped.key_version,
            "wrapped": wrapped.ciphertext,
            "created_at": datetime.now(UTC),
        }
        return handle, values

    def _key_in(self, session: Session) -> KeyHandle:
        """The audit key, unwrapped once per instance; created inside ``session`` on first use.

        A key created here belongs to the caller's transaction: it is forgotten again if that
        transaction rolls back, so no event is ever sealed with a key that was not stored.
        """
        cached = self._cached()
        if cached is not None:
            return cached
        row = self._stored(session)
        if row is not None:
            return self._adopt(self._unwrap(row))
        # First event of this vault. The KMS call happens under the caller's write lock, once;
        # ensure_key() at vault open keeps it out of write transactions altogether.
        handle, values = self._new_key()
        session.execute(insert(AuditKeyRow).values(**values))
        event.listen(session, "after_soft_rollback", self._forget, once=True)
        return self._adopt(handle)

    def ensure_key(self) -> None:
        """Creates the audit key (first use) or unwraps it, outside any caller's transaction.

        Call it when the vault opens so that :meth:`append` never waits for the KMS while the
        caller holds the database's write lock.

        Raises:
            AuditError: the KMS or the database failed (the cause is chained).
        """
        if self._cached() is not None:
            return
        try:
            with self._read_sessions() as s:
                row = self._stored(s)
            if row is not None:
                self._adopt(self._unwrap(row))
                return
            handle, values = self._new_key()  # no lock held across the KMS call
            with self._sessions() as s, s.begin():
                row = self._stored(s)
                if row is None:
                    s.execute(insert(AuditKeyRow).values(**values))
            # Another process may have stored its key first: use theirs.
            self._adopt(handle if row is None else self._unwrap(row))
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot store the audit key: {db_message(exc)}") from exc
        except KeyCustodyError as exc:
            raise AuditError(f"the audit key is unavailable: {exc}") from exc

    def rewrap_key(self, audit_kek: str) -> AuditEvent:
        """Rewraps the audit key under another KEK (the key itself, and every MAC, stay).

        The change and its ``audit.key.rewrap`` event are written in one transaction.

        Args:
            audit_kek: Id of the new audit KEK.

        Returns:
            The event recording the rewrap.

        Raises:
            AuditError: the KMS or the database failed (the cause is chained).
        """
        self.ensure_key()
        key = self._cached()
        if key is None:  # pragma: no cover - ensure_key either caches a key or raises
            raise AuditError("the audit key is unavailable")
        try:
            wrapped = self._registry.wrap(KeyId(audit_kek), key, self._context(_AUDIT_KEY_ID))
            with self._sessions() as s, s.begin():
                old = self._stored(s)
                old_kek = old.kek_id if old is not None else None
                s.execute(
                    update(AuditKeyRow)
                    .where(AuditKeyRow.id == _AUDIT_KEY_ID)
                    .values(
                        kek_id=wrapped.key_id,
                        kek_version=wrapped.key_version,
                        wrapped=wrapped.ciphertext,
                    )
                )
                ev = self.append(
                    s,
                    action="audit.key.rewrap",
                    subject="audit-key",
                    kms_key_id=wrapped.key_id,
                    kms_key_version=wrapped.key_version,
                    details={"from_kek": old_kek},
                )
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot rewrap the audit key: {db_message(exc)}") from exc
        except (AuditError, InvalidInputError):
            raise
        except KeyCustodyError as exc:
            raise AuditError(f"cannot rewrap the audit key: {exc}") from exc
        self.audit_kek = audit_kek
        return ev

    # -- writing --------------------------------------------------------------------------

    def append(
        self,
        session: Session,
        *,
        action: str,
        subject: str,
        outcome: str = "ok",
        kms_key_id: str | None = None,
        kms_key_version: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> AuditEvent:
        """Appends an event in the caller's transaction (fail closed).

        Use it inside the write transaction of the change the event records: if the append
        fails, the exception propagates and the caller's change rolls back with it; if the
        change rolls back, so does the event.

        Args:
            session: The caller's write session (SQLite: ``BEGIN IMMEDIATE``).
            action: What happened, e.g. ``scope.create``, ``key.rotate``, ``kek.rotate``.
            subject: What it happened to: a scope path, key id or record range.
            outcome: ``ok``, ``denied`` or ``failed``.
            kms_key_id: The KMS key involved, if any.
            kms_key_version: Its version, if known.
            details: Extra facts (str/int/float/bool/None, in lists and dicts; never bytes,
                plaintext or record names).

        Returns:
            The event as stored.

        Raises:
            InvalidInputError: a field is invalid or ``details`` holds bytes or other types.
            AuditError: the event could not be written (database or KMS failure).
        """
        check_text(action, "action", MAX_ACTION)
        check_text(subject, "subject", MAX_SUBJECT)
        check_text(kms_key_id, "kms_key_id", MAX_KMS_KEY_ID, optional=True)
        check_text(kms_key_version, "kms_key_version", MAX_KMS_KEY_VERSION, optional=True)
        if outcome not in OUTCOMES:
            raise InvalidInputError(f"audit outcome must be one of {sorted(OUTCOMES)}")
        check_text(self.actor, "actor", MAX_ACTOR)
        details_text = canonical_details(details)
        try:
            key = self._key_in(session)
            # invariant(audit-serial): no other writer appends between this read of the head
            # and the insert. On SQLite the caller's transaction began with BEGIN IMMEDIATE
            # and holds the database's write lock; on PostgreSQL record writers run side by
            # side, so the head has an advisory lock of its own, held until commit. The seq
            # primary key would in any case turn a lost race into a failed append.
            lock_audit_head(session.connection())
            head = session.execute(
                select(*_raw(_T.seq, _T.hash)).order_by(_T.seq.desc()).limit(1)
            ).first()
            if head is None:
                seq, prev = 1, GENESIS
            else:
                if type(head[0]) is not int:
                    raise AuditError("the last audit event is malformed; run audit verify")
                seq = head[0] + 1
                try:
                    prev = _digest(head[1], "hash")
                except _MalformedError:
                    raise AuditError(
                        f"audit event {head[0]} has a malformed hash; run audit verify"
                    ) from None
            at = datetime.now(UTC)
            digest = event_hash(
                seq=seq,
                at=at,
                actor=self.actor,
                action=action,
                subject=subject,
                kms_key_id=kms_key_id,
                kms_key_version=kms_key_version,
                outcome=outcome,
                details=details_text,
                prev_hash=prev,
            )
            mac = key.mac(digest)
            session.execute(
                insert(AuditEventRow).values(
                    seq=seq,
                    at=at,
                    actor=self.actor,
                    action=action,
                    subject=subject,
                    kms_key_id=kms_key_id,
                    kms_key_version=kms_key_version,
                    outcome=outcome,
                    details=details_text,
                    prev_hash=prev,
                    hash=digest,
                    mac=mac,
                )
            )
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot append audit event {action!r}: {db_message(exc)}") from exc
        except (AuditError, InvalidInputError):
            raise
        except KeyCustodyError as exc:
            raise AuditError(
                f"cannot append audit event {action!r}: the audit key is unavailable: {exc}"
            ) from exc
        return AuditEvent(
            seq=seq,
            at=at,
            actor=self.actor,
            action=action,
            subject=subject,
            outcome=outcome,
            kms_key_id=kms_key_id,
            kms_key_version=kms_key_version,
            details=details_text,
            prev_hash=prev,
            hash=digest,
            mac=mac,
        )

    def record(
        self,
        action: str,
        subject: str,
        *,
        outcome: str,
        kms_key_id: str | None = None,
        kms_key_version: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> AuditEvent:
        """Appends an event in a write transaction of its own.

        For events with no change to go with, such as a denied decrypt or a failed operation
        whose own transaction rolled back. Call it after that transaction has ended: on
        SQLite a second write transaction waits for the first (and fails after the busy
        timeout). Arguments are those of :meth:`append`.

        Returns:
            The event as stored.

        Raises:
            InvalidInputError: a field is invalid or ``details`` holds bytes or other types.
            AuditError: the event could not be written.
        """
        try:
            with self._sessions() as s, s.begin():
                return self.append(
                    s,
                    action=action,
                    subject=subject,
                    outcome=outcome,
                    kms_key_id=kms_key_id,
                    kms_key_version=kms_key_version,
                    details=details,
                )
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot append audit event {action!r}: {db_message(exc)}") from exc

    # -- reading --------------------------------------------------------------------------

    def _rows(self, after: int) -> Iterator[Sequence[Any] | _Unreadable]:
        """Raw rows with seq > ``after`` in seq order, a chunk per short read transaction.

        The trail is append-only, so paging by seq across transactions sees a consistent
        prefix and memory stays constant however long the trail is.
        """
        slow = 0  # rows left to read one at a time, after a chunk the driver could not return
        while True:
            chunk = 1 if slow else _CHUNK
            query: Select[Any] = (
                select(*_raw(*_EVENT_COLUMNS)).where(_T.seq > after).order_by(_T.seq).limit(chunk)
            )
            try:
                with self._read_sessions() as s:
                    rows = s.execute(query).all()
            except DBAPIError:
                if not slow:  # find the row the driver cannot return
                    slow = _CHUNK
                    continue
                with self._read_sessions() as s:
                    seq = s.execute(
                        select(*_raw(_T.seq)).where(_T.seq > after).order_by(_T.seq).limit(1)
                    ).scalar()
                yield _Unreadable(seq if type(seq) is int else None)
                return
            if not rows:
                return
            for row in rows:
                yield tuple(row)
            last = rows[-1][0]
            if type(last) is not int:
                return  # a non-integer seq sorts last; the caller reports it
            after = last
            slow = max(0, slow - len(rows))

    def events(self, since: int | None = None) -> Iterator[AuditEvent]:
        """Events in seq order, streamed in chunks.

        Args:
            since: Only events after this sequence number (e.g. the last one exported).

        Raises:
            InvalidInputError: ``since`` is negative.
            AuditError: a stored event is malformed or unreadable (run :meth:`verify`), or
                the database failed.
        """
        after = _check_since(since)
        try:
            for row in self._rows(after):
                if isinstance(row, _Unreadable):
                    raise AuditError(f"audit event {row.seq} is unreadable; run audit verify")
                try:
                    yield _decode(row)
                except _MalformedError as bad:
                    raise AuditError(
                        f"audit event {row[0]!r} is malformed ({bad}); run audit verify"
                    ) from None
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the audit trail: {db_message(exc)}") from exc

    def tail(self, n: int = 20) -> list[AuditEvent]:
        """The last ``n`` events, oldest first.

        Raises:
            InvalidInputError: ``n`` is negative.
            AuditError: a stored event is malformed, or the database failed.
        """
        if type(n) is not int or n < 0:
            raise InvalidInputError("n must be a non-negative int")
        query = select(*_raw(*_EVENT_COLUMNS)).order_by(_T.seq.desc()).limit(n)
        try:
            with self._read_sessions() as s:
                rows = s.execute(query).all()
            return [_decode(tuple(r)) for r in reversed(rows)]
        except _MalformedError as bad:
            raise AuditError(f"an audit event is malformed ({bad}); run audit verify") from None
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the audit trail: {db_message(exc)}") from exc

    def export(self, path: str | os.PathLike[str], since: int | None = None) -> int:
        """Writes events as JSON Lines for a SIEM, atomically (temp file, fsync, rename).

        One event per line, keys sorted: ``vault``, ``seq``, ``at`` (ISO-8601 UTC), ``actor``,
        ``action``, ``subject``, ``outcome``, ``kms_key_id``, ``kms_key_version``, ``details``
        (an object), and ``prev_hash``, ``hash``, ``mac`` in hex. The SHA-256 chain can be
        recomputed from the file with :func:`keycustody.audit.events.event_hash`.

        Args:
            path: The file to write (replaced if it exists; created with mode 0600).
            since: Only events after this sequence number.

        Returns:
            How many events were written.

        Raises:
            InvalidInputError: ``since`` is negative.
            AuditError: an event is malformed, the database failed, or the file could not
                be written.
        """
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        count = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                for ev in self.events(since):
                    try:
                        line = {"vault": self.vault_id, **ev.to_dict()}
                    except ValueError:
                        raise AuditError(
                            f"audit event {ev.seq} has malformed details; run audit verify"
                        ) from None
                    f.write(json.dumps(line, sort_keys=True, separators=(",", ":")))
                    f.write("\n")
                    count += 1
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise AuditError(f"cannot write the audit export {str(target)!r}: {exc}") from exc
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return count

    # -- verification ---------------------------------------------------------------------

    def _verify_key(self) -> KeyHandle | str:
        """The audit key for verification, or why there is none that can be trusted."""
        cached = self._cached()
        if cached is not None:
            return cached
        try:
            with self._read_sessions() as s:
                row = self._stored(s)
            if row is None:
                return "no audit key is stored (the audit_keys table was emptied)"
            return self._adopt(self._unwrap(row))
        except (IntegrityError, TypeError, ValueError):
            return "the stored audit key does not unwrap under its KEK (audit_keys was altered)"
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the audit key: {db_message(exc)}") from exc
        except KeyCustodyError as exc:
            raise AuditError(f"cannot verify: the audit key is unavailable: {exc}") from exc

    def verify(self, expected_head: tuple[int, str] | None = None) -> AuditReport:
        """Recomputes every hash and MAC in seq order and reports the first broken link.

        Detects edited columns, deleted, inserted, reordered and swapped events, and events
        sealed without the audit key (forged, or the chain recomputed after an edit). A
        truncated tail is internally consistent; it is detected only against
        ``expected_head``, a ``(head_seq, head_hash)`` kept outside the database from an
        earlier report or export. Streams the trail in chunks, in constant memory.

        Args:
            expected_head: ``(seq, hash hex)`` of an event the chain must still contain.

        Returns:
            The report; ``ok`` is False and ``first_bad_seq`` set if anything is wrong.

        Raises:
            InvalidInputError: ``expected_head`` is malformed.
            AuditError: the database or the KMS failed, so nothing could be decided.
        """
        anchor = _check_anchor(expected_head)
        checked = 0
        head_seq = 0
        head_hash = GENESIS
        key: KeyHandle | None = None

        def fail(seq: int, reason: str) -> AuditReport:
            return AuditReport(False, checked, head_seq, head_hash.hex(), seq, reason)

        try:
            for row in self._rows(0):
                expected = head_seq + 1
                if isinstance(row, _Unreadable):
                    at = row.seq if row.seq is not None else expected
                    return fail(at, f"event {at} cannot be read from the database")
                try:
                    ev = _decode(row)
                except _MalformedError as bad:
                    at = row[0] if type(row[0]) is int else expected
                    return fail(at, f"event {at} is malformed: {bad}")
                if ev.seq > expected:
                    return fail(expected, f"event {expected} is missing (the next is {ev.seq})")
                if ev.seq < expected:
                    return fail(ev.seq, f"event has invalid sequence number {ev.seq}")
                if ev.prev_hash != head_hash:
                    what = "the genesis hash" if ev.seq == 1 else f"the hash of event {ev.seq - 1}"
                    return fail(ev.seq, f"event {ev.seq}: prev_hash does not match {what}")
                try:
                    recomputed = _recompute(ev)
                except (ValueError, struct.error):
                    return fail(ev.seq, f"event {ev.seq} cannot be encoded")
                if not hmac.compare_digest(recomputed, ev.hash):
                    return fail(ev.seq, f"event {ev.seq}: contents do not match its hash")
                if key is None:
                    found = self._verify_key()
                    if isinstance(found, str):
                        return fail(ev.seq, found)
                    key = found
                if not hmac.compare_digest(key.mac(ev.hash), ev.mac):
                    return fail(
                        ev.seq,
                        f"event {ev.seq}: MAC does not verify under the audit key "
                        "(forged, or the chain was recomputed without the key)",
                    )
                if anchor is not None and ev.seq == anchor[0] and ev.hash != anchor[1]:
                    return fail(
                        ev.seq,
                        f"event {ev.seq} no longer has the expected head's hash "
                        "(history was rewritten)",
                    )
                checked += 1
                head_seq, head_hash = ev.seq, ev.hash
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the audit trail: {db_message(exc)}") from exc
        if anchor is not None and head_seq < anchor[0]:
            return fail(
                head_seq + 1,
                f"the trail ends at event {head_seq} but the expected head is event "
                f"{anchor[0]}: events {head_seq + 1}..{anchor[0]} were removed (truncated)",
            )
        return AuditReport(True, checked, head_seq, head_hash.hex(), None, None)


def _check_since(since: int | None) -> int:
    if since is None:
        return 0
    if type(since) is not int or since < 0:
        raise InvalidInputError("since must be a non-negative int (a sequence number)")
    return since


def _check_anchor(expected: tuple[int, str] | None) -> tuple[int, bytes] | None:
    if expected is None:
        return None
    try:
        seq, digest_hex = expected
        digest = bytes.fromhex(digest_hex)
    except (TypeError, ValueError):
        raise InvalidInputError("expected_head must be (seq, hash hex)") from None
    if type(seq) is not int or seq < 0 or len(digest) != HASH_LEN:
        raise InvalidInputError("expected_head must be (seq >= 0, 64 hex digits)")
    if seq == 0 and digest != GENESIS:
        raise InvalidInputError("an expected head at seq 0 must be the genesis hash (64 zeros)")
    return seq, digest
