"""Where record ciphertext lives: inline in the database, or in a blob store above a threshold.

Stored format. A record whose payload is larger than the vault's ``blob_threshold`` (and a
blob store is configured) keeps its row in ``records`` (header with the wrapped DEK,
encrypted name, size) with an empty ``body`` and ``blob_key = "<scope id hex>/<record id
hex>"`` (never the name). The object under that key holds exactly what would otherwise be
in the database: the AES-256-GCM ciphertext and tag of a whole record (suites 1 and 3), or a
stream record's sealed segments concatenated in order (suite 2). Only ciphertext leaves the
database; the AEAD binds it to its header (scope, record id, name, key commitment), so a
tampered, swapped or truncated object fails authentication like a tampered row.

Why one object per stream, not one per segment: one upload (multipart when large), one key to
reference, delete and sweep per record; and since every sealed segment but the last is exactly
``SEGMENT_LEN + TAG_LEN`` bytes, segment ``k`` is a ranged read at ``k * (SEGMENT_LEN +
TAG_LEN)``, so random access by segment stays as cheap as with separate objects.

Ordering, so that a crash leaves orphaned objects but never a row pointing at nothing:

- write: the object is written (and durable) before the transaction holding its row
  commits; if the transaction rolls back, the objects it wrote are deleted (best effort).
- delete, replace, purge: the objects of removed rows are deleted after the commit (best
  effort). The wrapped DEK is in the row, so a leftover object is unreadable at once.
- :meth:`Payloads.sweep` (run by ``purge``): objects of this vault's scopes that no row
  references and that are older than a grace period (so writes in flight are left alone).

The bookkeeping rides on the session: writers register the objects they write or drop in
``Session.info``, and session events on the vault's sessionmaker act after commit or rollback.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, delete, event, select
from sqlalchemy.orm import Session, sessionmaker

from keycustody._core import TAG_LEN, StreamOpener
from keycustody.errors import (
    BlobMissingError,
    ConfigError,
    IntegrityError,
    InvalidInputError,
    KeyCustodyError,
    StorageError,
)
from keycustody.storage.blobs import BlobStore, BlobWriter, LocalBlobStore
from keycustody.storage.engine import raises_storage_errors
from keycustody.storage.models import RecordRow, ScopeRow
from keycustody.storage.repository import RECORD_COLUMNS, RecordStatements, in_chunks
from keycustody.streams import (
    SEALED_SEGMENT_LEN,
    FetchedSegments,
    SegmentSource,
    plain_len,
    segment_count,
)

DEFAULT_THRESHOLD = 4 * 1024 * 1024
"""Payloads larger than this many bytes go to the blob store (when one is configured)."""
READ_BUDGET = 64 * 1024 * 1024
"""Payload bytes a batch job (re-encryption) holds in memory at once, beyond one record."""

_WRITTEN = "keycustody.blobs_written"
_DROPPED = "keycustody.blobs_dropped"
_RECORD, _SCOPE, _NAME_INDEX = (
    RECORD_COLUMNS.index(c) for c in ("record_id", "scope_id", "name_index")
)
_BODY, _SIZE, _BLOB = (RECORD_COLUMNS.index(c) for c in ("body", "size", "blob_key"))
_OUR_KEY = re.compile(r"([0-9a-f]{32})/([0-9a-f]{32})")

T = TypeVar("T")


def blob_key(scope_id: bytes, record_id: bytes) -> str:
    """The blob store key of a record: ``<scope id hex>/<record id hex>``."""
    return f"{scope_id.hex()}/{record_id.hex()}"


def bounded(rows: Sequence[T], size: Callable[[T], int], budget: int = READ_BUDGET) -> list[T]:
    """The first of ``rows`` whose payloads fit in ``budget`` bytes (at least one row)."""
    total = 0
    for i, row in enumerate(rows):
        total += size(row)
        if total > budget and i:
            return list(rows[:i])
    return list(rows)


@dataclass(frozen=True, slots=True)
class BlobSweep:
    """What an orphan sweep of the blob store did."""

    orphans_removed: int
    """Objects no record references, older than the grace period: deleted."""
    incomplete_removed: int
    """Leftovers of interrupted writes (temporary files, unfinished multipart uploads)."""
    recent_kept: int
    """Unreferenced objects younger than the grace period, left alone (maybe in flight)."""


class Payloads:
    """The vault's placement of record ciphertext (inline or in the blob store)."""

    def __init__(self, store: BlobStore | None, threshold: int) -> None:
        if not isinstance(threshold, int) or threshold < 0:
            raise ConfigError("blob_threshold must be a non-negative number of bytes")
        self.store = store
        self.threshold = threshold

    def attach(self, sessions: sessionmaker[Session]) -> None:
        """Acts on the sessions' commits and rollbacks (see the module docstring)."""
        event.listen(sessions, "after_commit", self._after_commit)
        event.listen(sessions, "after_rollback", self._after_rollback)

    def _after_commit(self, s: Session) -> None:
        s.info.pop(_WRITTEN, None)
        self._remove(s.info.pop(_DROPPED, None))

    def _after_rollback(self, s: Session) -> None:
        s.info.pop(_DROPPED, None)
        self._remove(s.info.pop(_WRITTEN, None))

    def _remove(self, keys: set[str] | None) -> None:
        if keys and self.store is not None:
            # Best effort: the rows are settled either way, and purge's sweep removes what a
            # failure here leaves behind.
            with contextlib.suppress(KeyCustodyError):
                self.store.delete_many(sorted(keys))

    @staticmethod
    def _track(s: Session, which: str, key: str) -> None:
        s.info.setdefault(which, set()).add(key)

    def offloads(self, size: int) -> bool:
        """Whether a payload of ``size`` bytes goes to the blob store."""
        return self.store is not None and size > self.threshold

    # -- writes -----------------------------------------------------------------------------

    def place(self, s: Session, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Prepares record rows (tuples in RECORD_COLUMNS order, ``blob_key`` None) for
        :meth:`RecordStatements.replace`: a body above the threshold is written to the blob store
        now, before the row's transaction commits, and its row gets an empty body and the
        key. As in ``replace``, the last row of a name wins (no object for the others)."""
        store = self.store
        if store is None or not any(self.offloads(r[_SIZE]) and r[_BODY] for r in rows):
            return rows  # the common case, on the hot path: untouched
        out: list[tuple[Any, ...]] = []
        for row in {r[_NAME_INDEX]: r for r in rows}.values():
            if self.offloads(row[_SIZE]) and row[_BODY]:
                key = blob_key(row[_SCOPE], row[_RECORD])
                self._track(s, _WRITTEN, key)  # removed again if the transaction fails
                store.put(key, row[_BODY])
                row = (*row[:_BODY], b"", *row[_BODY + 1 : _BLOB], key)
            out.append(row)
        return out

    def replacing(self, s: Session, scope_id: bytes, name_indexes: Collection[bytes]) -> None:
        """Schedules the objects of the records of these names in a scope (about to be
        replaced or deleted in this transaction) for removal after the commit."""
        if self.store is None:
            return
        for chunk in in_chunks(name_indexes):
            self.dropping(s, RecordRow.scope_id == scope_id, RecordRow.name_index.in_(chunk))

    def dropping(self, s: Session, *where: ColumnElement[bool]) -> None:
        """Schedules the objects of the records matching ``where`` (about to be deleted in
        this transaction) for removal after the commit.

        Without a blob store they cannot be removed from here: they stay as orphans for a
        ``purge`` with the store configured (their DEKs go with the rows all the same).
        """
        if self.store is None:
            return
        query = select(RecordRow.blob_key).where(*where, RecordRow.blob_key.is_not(None))
        self.drop(s, s.scalars(query))

    def delete_records(self, s: Session, *where: ColumnElement[bool]) -> int:
        """Deletes the records matching ``where`` in this transaction, and their objects after
        the commit (:meth:`dropping`); returns how many."""
        self.dropping(s, *where)
        result = s.execute(delete(RecordRow).where(*where))
        return int(result.rowcount)  # type: ignore[attr-defined]

    def drop(self, s: Session, keys: Iterable[str | None]) -> None:
        """Schedules these objects (of rows this transaction deletes; None: an inline row)
        for removal after the commit."""
        for key in keys:
            if key is not None and self.store is not None:
                self._track(s, _DROPPED, key)

    def segments(
        self,
        s: Session,
        writer: RecordStatements,
        scope_id: bytes,
        record_id: bytes,
        size: int | None,
    ) -> SegmentSink:
        """Where the sealed segments of stream record ``record_id`` (its row already inserted
        in this transaction) go; ``size`` is the payload size if known in advance."""
        return SegmentSink(self, s, writer, scope_id, record_id, size)

    # -- reads ------------------------------------------------------------------------------

    def _located(self, scope_id: bytes, record_id: bytes, key: str) -> BlobStore:
        if key != blob_key(scope_id, record_id):
            raise IntegrityError("a stored record's blob reference does not match its id")
        if self.store is None:
            raise ConfigError(
                f"record {record_id.hex()} keeps its ciphertext in a blob store: open the "
                "vault with blob_store= (CLI: --blob-store)"
            )
        return self.store

    def _get(self, store: BlobStore, record_id: bytes, key: str, *span: int) -> bytes:
        try:
            return store.get(key, *span)
        except BlobMissingError:
            raise BlobMissingError(
                f"the ciphertext of record {record_id.hex()} is missing from {store!r} (key {key})"
            ) from None

    def body(self, scope_id: bytes, row: Any) -> bytes:
        """The ciphertext of a whole record (suites 1 and 3); ``row`` has ``record_id``,
        ``blob_key`` and ``body``.

        Raises:
            BlobMissingError: the object is gone (the message names the record id).
            ConfigError: it is in a blob store and the vault has none.
        """
        if row.blob_key is None:
            body: bytes = row.body
            return body
        store = self._located(scope_id, row.record_id, row.blob_key)
        return self._get(store, row.record_id, row.blob_key)

    def bodies(self, scope_id: bytes, rows: Sequence[Any]) -> list[bytes]:
        """:meth:`body` of each row; a batch of rows without blob references is read in
        one pass, not one call per row."""
        if any(map(attrgetter("blob_key"), rows)):
            return [self.body(scope_id, r) for r in rows]
        return [r.body for r in rows]

    def segment_reader(
        self,
        scope_id: bytes,
        row: Any,
        read_segments: Callable[[bytes, int, int], list[tuple[int, bytes]]],
        *,
        prefetch: Executor | None,
    ) -> SegmentSource:
        """Where the sealed segments of a stream record are read from (``row`` has
        ``record_id``, ``size`` and ``blob_key``): ``segments``, by ``read_segments(record_id,
        first, n)`` (:meth:`RecordStatements.read_segments`, bound to a connection or not); a
        local blob store's file, read by the Rust tasks that open the segments; or a ranged
        read of another store's object. Each raises StorageError when the store fails (a
        StreamReader reads long after the call that opened it: its reads need their own
        conversion). ``prefetch``: where the next window is fetched ahead (only where
        ``read_segments`` uses a connection of its own per call)."""
        record_id: bytes = row.record_id
        if row.blob_key is None:

            @raises_storage_errors("reading a stream record's segments")
            def fetch_rows(first: int, n: int) -> list[bytes]:
                rows = read_segments(record_id, first, n)
                if [seq for seq, _ in rows] != list(range(first, first + n)):
                    raise IntegrityError("a segment of the stream record is missing")
                return [body for _, body in rows]

            return FetchedSegments(fetch_rows, row.size, prefetch)
        key: str = row.blob_key
        store = self._located(scope_id, record_id, key)
        if isinstance(store, LocalBlobStore):
            return _FileSegments(store, record_id, key, row.size)
        size: int = row.size

        def fetch_range(first: int, n: int) -> bytes:
            length = plain_len(size, first, n) + n * TAG_LEN
            return self._get(store, record_id, key, first * SEALED_SEGMENT_LEN, length)

        return FetchedSegments(fetch_range, size, prefetch)

    # -- orphans ----------------------------------------------------------------------------

    def sweep(self, read: Callable[[], Session], grace: timedelta) -> BlobSweep:
        """Removes the objects of this vault's scopes that no record references and that are
        older than ``grace``, and the leftovers of interrupted writes.

        Only keys of the form ``<scope id>/<record id>`` under this vault's scope ids are
        considered, so objects of another vault sharing the store are never touched.
        """
        if self.store is None:
            raise ConfigError("no blob store is configured (Vault.open(blob_store=...))")
        if grace < timedelta(0):
            raise InvalidInputError("the grace period must not be negative")
        store = self.store
        cutoff = datetime.now(UTC) - grace
        with read() as s:
            scope_ids = sorted(s.scalars(select(ScopeRow.id)))
        removed = incomplete = recent = 0
        for scope_id in scope_ids:
            prefix = f"{scope_id.hex()}/"
            incomplete += store.remove_incomplete(prefix, cutoff)
            # Listed before the rows are looked up: an object whose row commits after the
            # lookup belongs to a write in flight, and is younger than the grace period.
            for batch in in_chunks(store.list(prefix)):
                listed = {}
                for info in batch:
                    m = _OUR_KEY.fullmatch(info.key)
                    if m is not None and m.group(1) == scope_id.hex():
                        listed[bytes.fromhex(m.group(2))] = info
                with read() as s:
                    referenced = set(
                        s.scalars(
                            select(RecordRow.blob_key).where(
                                RecordRow.record_id.in_(list(listed)),
                                RecordRow.blob_key.is_not(None),
                            )
                        )
                    )
                orphans = [i for i in listed.values() if i.key not in referenced]
                old = [i.key for i in orphans if i.modified < cutoff]
                store.delete_many(old)
                removed += len(old)
                recent += len(orphans) - len(old)
        return BlobSweep(removed, incomplete, recent)


class SegmentSink:
    """Stores a stream record's sealed segments, given in order: as rows of ``segments``
    when the stream is small, as one object in the blob store when it is larger than the
    threshold. Use it as a context manager: leaving it normally finishes the object (durable
    before the transaction commits), an exception aborts it.

    With the size unknown in advance (put_stream), segments are held in memory until the
    stream passes the threshold (then they and the rest go to the blob store) or ends (then
    they become rows): memory stays under the threshold plus a segment (plus one S3 part).
    """

    def __init__(
        self,
        payloads: Payloads,
        s: Session,
        writer: RecordStatements,
        scope_id: bytes,
        record_id: bytes,
        size: int | None,
    ) -> None:
        self._payloads = payloads
        self._session = s
        self._conn = s.connection()
        self._writer = writer
        self._scope_id = scope_id
        self._record_id = record_id
        self._held: list[tuple[bytes, int, bytes]] = []
        self._plain = 0
        self._blob: BlobWriter | None = None
        self.blob_key: str | None = None
        """The object's key once the segments go to the blob store."""
        self._hold = payloads.store is not None and size is None
        if size is not None and payloads.offloads(size):
            self._open_blob()

    def _open_blob(self) -> BlobWriter:
        store = self._payloads.store
        if store is None:
            raise ConfigError("no blob store is configured")
        self.blob_key = blob_key(self._scope_id, self._record_id)
        self._payloads._track(self._session, _WRITTEN, self.blob_key)
        self._blob = store.writer(self.blob_key)
        return self._blob

    def add(self, seq: int, sealed: bytes) -> None:
        """Stores sealed segment ``seq`` (segments come in order)."""
        self._plain += len(sealed) - TAG_LEN
        if self._blob is not None:
            self._blob.write(sealed)
        elif not self._hold:
            self._writer.add_segments(self._conn, [(self._record_id, seq, sealed)])
        else:
            self._held.append((self._record_id, seq, sealed))
            if self._payloads.offloads(self._plain):
                blob = self._open_blob()
                for _, _, held in self._held:
                    blob.write(held)
                self._held = []

    def __enter__(self) -> SegmentSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            if self._blob is not None:
                self._blob.abort()
            return
        if self._blob is not None:
            self._blob.commit()
        elif self._held:
            self._writer.add_segments(self._conn, self._held)
        self._held = []


class _FileSegments:
    """The segments of a stream in a local blob store's file, read in Rust by the tasks that
    open them (each segment is decrypted while it is still in cache). A sequential open of
    one segment also reads the next one on the other core, for the next open."""

    fetches_ahead = True

    def __init__(self, store: LocalBlobStore, record_id: bytes, key: str, size: int) -> None:
        self._store = store
        self._record_id = record_id
        self._key = key
        self._path = store.path_of(key)
        self._size = size
        self._count = segment_count(size)
        self._next = 0  # the segment after the last one opened

    def open_into(
        self, opener: StreamOpener, first: int, last: bool, outs: list[memoryview]
    ) -> None:
        """See :meth:`~keycustody.streams.SegmentSource.open_into`."""
        following = first + segment_count(sum(len(out) for out in outs))
        ahead = 0
        if following == first + 1 and first == self._next and following < self._count:
            ahead = plain_len(self._size, following, 1) + TAG_LEN
        self._next = following
        try:
            opener.read_segments_into(self._path, first, last, outs, ahead)
        except FileNotFoundError:
            raise BlobMissingError(
                f"the ciphertext of record {self._record_id.hex()} is missing from "
                f"{self._store!r} (key {self._key})"
            ) from None
        except OSError as exc:
            raise StorageError(f"cannot read blob {self._key}: {exc.strerror}") from exc

    def close(self) -> None:
        """See :meth:`~keycustody.streams.SegmentSource.close`."""
