"""Scope: a node of the scope tree, where records are put, read, listed and deleted.

Records are sealed in Rust (a fresh DEK each, wrapped by the scope key), names are stored
encrypted and looked up by a keyed blind index, and every read authenticates the header, the
key commitment and the ciphertext before returning a byte.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from keycustody import _core, derived
from keycustody.derived import SUITE_DERIVED
from keycustody.errors import (
    ConcurrentRotationError,
    IntegrityError,
    InvalidInputError,
    KeyCustodyError,
    KeyRevokedError,
    NotFoundError,
    ShreddedError,
    StorageError,
)
from keycustody.keys import lineage, rotation
from keycustody.keys.hierarchy import ScopeRef, peek_scope, read_scope, records_failovers
from keycustody.keys.states import ACTIVE, SUSPENDED
from keycustody.storage import repository
from keycustody.storage.engine import (
    bulk_write_cache,
    db_message,
    public_methods_raise_storage_errors,
)
from keycustody.storage.models import RecordRow, ScopeKeyRow
from keycustody.storage.repository import FoundRecord
from keycustody.streams import SUITE_SEGMENTED, Readable, StreamReader, read_segments
from keycustody.types import KeyVersionInfo, RecordInfo, utc
from keycustody.validation import Data, check_items, encode_name, encode_names, size_of

if TYPE_CHECKING:
    from keycustody.vault import Vault

BATCH_RECORDS = 1000
BATCH_BYTES = 64 * 1024 * 1024
_TAG_LEN = _core.TAG_LEN
_SEPARATE_SUITES = (SUITE_SEGMENTED, SUITE_DERIVED)
"""Suites get_many opens record by record (streams) or through their source (derived)."""
_Batch = tuple[list[str], list[bytes], list[Data]]


def _now() -> datetime:
    return datetime.now(UTC)


class _CheckedRow(Protocol):
    @property
    def record_id(self) -> bytes: ...
    @property
    def name_index(self) -> bytes: ...
    @property
    def key_version(self) -> int | None: ...
    @property
    def header(self) -> bytes: ...


class _StoredRow(_CheckedRow, Protocol):
    @property
    def size(self) -> int: ...
    @property
    def blob_key(self) -> str | None: ...


def _check_rows(rows: Sequence[_CheckedRow]) -> bytes:
    """The suite of each row's header; the lookup columns of record rows must agree with
    their authenticated headers."""
    try:
        return _core.check_rows(rows)
    except IntegrityError:
        raise IntegrityError("a stored record's columns do not match its header") from None


def _key_versions(headers: Sequence[Data]) -> set[int]:
    try:
        return _core.header_key_versions(headers)
    except IntegrityError:
        raise IntegrityError("a stored record header is malformed") from None


_F = TypeVar("_F", bound=Callable[..., Any])


def _audit_failures(action: str) -> Callable[[_F], _F]:
    """Records denied access and failed authentication of a Scope operation in the audit
    trail (in a transaction of its own, after the operation's has rolled back)."""

    def decorate(method: _F) -> _F:
        @functools.wraps(method)
        def wrapper(self: Scope, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except (IntegrityError, KeyRevokedError, ShreddedError) as exc:
                failure = (
                    "integrity.failure" if isinstance(exc, IntegrityError) else "access.denied"
                )
                self._vault._audit_failure(failure, f"{self.path}:{action}", exc)
                raise

        return records_failovers(cast(_F, wrapper))

    return decorate


@public_methods_raise_storage_errors
class Scope:
    """A node of the scope tree: where records are put, read, listed and deleted.

    Every method that touches the database raises :class:`~keycustody.errors.StorageError`
    when it fails, with the driver's message only (never the statement's parameters), chained
    to the SQLAlchemy error.
    """

    def __init__(self, vault: Vault, ref: ScopeRef) -> None:
        self._vault = vault
        self._ref = ref

    def __repr__(self) -> str:
        return f"<Scope {self._ref.path!r}>"

    @property
    def path(self) -> str:
        """The scope's path."""
        return self._ref.path

    @property
    def id(self) -> str:
        """The scope's id (hex)."""
        return self._ref.id.hex()

    # -- keys ---------------------------------------------------------------------------

    def _fresh(self, s: Session) -> ScopeRef:
        return self._adopt(read_scope(s, self._ref.id))

    def _peek(self) -> ScopeRef:
        """:meth:`_fresh` outside a session (see :func:`peek_scope`), for seal and open."""
        return self._adopt(peek_scope(self._vault._engine, self._ref.id))

    def _adopt(self, ref: ScopeRef | None) -> ScopeRef:
        """Keeps the scope's facts as just read; raises if the scope is gone."""
        if ref is None:
            raise NotFoundError(f"scope {self._ref.path!r} no longer exists")
        self._ref = ref
        return ref

    def _active_key(self, s: Session) -> tuple[int, _core.KeyHandle]:
        ref = self._fresh(s)
        return ref.active_version, self._vault._keys.key(s, ref, ref.active_version)

    def _rotate_if_due(self) -> None:
        """Automatic rotation by age (Vault.open(rotation_period=...)), checked on writes."""
        period = self._vault.rotation_period
        if period is None:
            return
        with self._vault._read() as s:
            ref = self._fresh(s)
            created = s.scalar(
                select(ScopeKeyRow.created_at).where(
                    ScopeKeyRow.scope_id == ref.id, ScopeKeyRow.version == ref.active_version
                )
            )
        if created is not None and _now() - utc(created) >= period:
            # Another process may rotate it first: that is what was due anyway.
            with contextlib.suppress(ConcurrentRotationError):
                rotation.rotate_key(self._vault, ref)

    def _keys_for(self, s: Session, headers: Sequence[Data]) -> dict[int, _core.KeyHandle]:
        """Handles of the key versions ``headers`` name (or blobs starting with a header)."""
        return self._vault._keys.keys(s, self._ref, _key_versions(headers))

    # -- encryption only (caller stores the blobs) --------------------------------------

    def seal(self, name: str, data: Data) -> bytes:
        """Encrypts one record into a self-contained blob (v1 header + ciphertext).

        The blob opens only in this scope and only under ``name``.
        """
        return self.seal_many([(name, data)])[0]

    @_audit_failures("seal_many")
    def seal_many(self, items: Iterable[tuple[str, Data]]) -> list[bytes]:
        """Encrypts records into blobs, in one Rust call per batch; same order as ``items``."""
        pairs = items if isinstance(items, list) else list(items)
        self._rotate_if_due()
        ref = self._peek()
        version, key = ref.active_version, self._vault._keys.cached_key(ref, ref.active_version)
        if key is None:
            with self._vault._read() as s:
                version, key = self._active_key(s)
        limit = self._vault.max_record_bytes
        # The pairs are checked in the same Rust call; None means one is invalid: say which.
        sealed = _core.seal_items(key, self._ref.id, version, pairs, limit)
        if sealed is None:
            _, names, datas = check_items(pairs, limit)
            sealed = _core.seal_blobs(key, self._ref.id, version, names, datas)
        return sealed

    def open(self, name: str, blob: Data) -> bytes:
        """Decrypts a blob made by :meth:`seal` under the same name.

        Raises:
            IntegrityError: the blob was altered, or belongs to another name or scope.
        """
        return self.open_many([(name, blob)])[0]

    @_audit_failures("open_many")
    def open_many(self, items: Iterable[tuple[str, Data]]) -> list[bytes]:
        """Decrypts blobs; same order as ``items``."""
        pairs = items if isinstance(items, list) else list(items)
        limit = self._vault.max_record_bytes + 256
        opened = _core.open_items(self._ref.id, self._cached_or_read_keys, pairs, limit)
        if opened is None:  # a pair is invalid: say which
            _, names, blobs = check_items(pairs, limit)
            opened = _core.open_blobs(
                self._ref.id, self._cached_or_read_keys(_key_versions(blobs)), names, blobs
            )
        return opened

    def _cached_or_read_keys(self, versions: set[int]) -> dict[int, _core.KeyHandle]:
        """The handles of these key versions of this scope, from the cache when it has them."""
        keys = self._vault._keys.cached_keys(self._peek(), versions)
        if keys is None:
            with self._vault._read() as s:
                keys = self._vault._keys.keys(s, self._fresh(s), versions)
        return keys

    # -- storage ------------------------------------------------------------------------

    @records_failovers
    def put(self, name: str, data: Data, *, derived_from: str | None = None) -> RecordInfo:
        """Stores one record, replacing (and destroying the DEK of) any record of that name.

        Args:
            derived_from: Name of a record of this scope that this one is derived from (an
                embedding, chunk or summary of it). Its DEK is then wrapped under a key bound
                to the source: deleting, replacing or shredding the source makes it unreadable
                in the same step.
        """
        return self.put_many([(name, data)], derived_from=derived_from)[0]

    @_audit_failures("put_many")
    def put_many(
        self,
        items: Iterable[tuple[str, Data]],
        *,
        commit_every: int | None = None,
        derived_from: str | None = None,
    ) -> list[RecordInfo]:
        """Stores records; all in one transaction unless ``commit_every`` is given.

        Records are sealed in Rust a batch at a time (GIL released, across cores) while the
        previous batch is written with one executemany. A record whose name exists replaces it.

        Args:
            items: ``(name, data)`` pairs; any iterable, consumed batch by batch.
            commit_every: Commit after about this many records (for very large ingests); a
                failure then keeps the batches already committed, each record whole.
            derived_from: Name of the record of this scope these records derive from (chunks,
                embeddings, summaries of it), as in :meth:`put`. They are held in memory
                and stored in one transaction.

        Raises:
            InvalidInputError: a name or payload is invalid; nothing of the failed
                transaction is written.
            StorageError: the database failed; the error says how many records were
                committed before it.
        """
        if commit_every is not None and commit_every < 1:
            raise InvalidInputError("commit_every must be a positive number of records")
        if derived_from is not None:
            if commit_every is not None:
                raise InvalidInputError("derived records are stored in one transaction")
            return derived.put_derived(self, items, derived_from)
        self._rotate_if_due()
        infos: list[RecordInfo] = []
        iterator = iter(items)
        try:
            while (first := next(iterator, None)) is not None:
                # One transaction per commit_every records (or for everything).
                chunk = islice(chain([first], iterator), commit_every)
                with (
                    self._vault._write_records() as s,
                    s.begin(),
                    bulk_write_cache(s.connection()),
                ):
                    version, key = self._active_key(s)
                    self._write_pipelined(s, key, version, self._batches(chunk), infos)
            return infos
        except KeyCustodyError:
            raise
        except SQLAlchemyError as exc:
            raise StorageError(
                f"storing records failed after {len(infos)} were committed: {db_message(exc)}"
            ) from exc

    def _batches(self, iterator: Iterator[tuple[str, Data]]) -> Iterator[_Batch]:
        """Groups items by count and bytes, and validates each group."""
        limit = self._vault.max_record_bytes
        while True:
            items: list[tuple[str, Data]] = []
            total = 0
            for item in islice(iterator, BATCH_RECORDS):
                items.append(item)
                try:
                    total += size_of(item[1])
                except (TypeError, IndexError, KeyError):
                    break  # not a (name, data) pair: check_items says so
                if total >= BATCH_BYTES:
                    break
            if not items:
                return
            yield check_items(items, limit)

    def _write_pipelined(
        self,
        s: Session,
        key: _core.KeyHandle,
        version: int,
        batches: Iterator[_Batch],
        infos: list[RecordInfo],
    ) -> None:
        """Seals batch k+1 on a worker thread while batch k is written, appending to infos.

        Both halves release the GIL (Rust while sealing, sqlite3 while stepping), so they
        overlap on two cores.
        """
        conn = s.connection()
        writer = self._vault._records
        payloads = self._vault._payloads
        seal = partial(_core.seal_records, key, self._ref.id, version)
        first = next(batches, None)
        if first is None:
            return
        stored = stored_bytes = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="keycustody-seal") as pool:
            batch: _Batch | None = first
            sealing = pool.submit(seal, first[1], first[2])
            while batch is not None:
                headers, name_cts, bodies = sealing.result()
                following = next(batches, None)
                if following is not None:
                    sealing = pool.submit(seal, following[1], following[2])
                now = _now()
                ts = writer.timestamp(now)
                names, _, datas = batch
                sizes = [size_of(d) for d in datas]
                scope_id = self._ref.id
                rows = [
                    (h[24:40], scope_id, h[40:72], version, h, n, b, size, ts, version, None, None)
                    for h, n, b, size in zip(headers, name_cts, bodies, sizes, strict=True)
                ]
                payloads.replacing(s, self._ref.id, [h[40:72] for h in headers])
                writer.replace(conn, self._ref.id, payloads.place(s, rows))
                infos.extend(
                    RecordInfo(name, h[24:40].hex(), size, version, now)
                    for name, h, size in zip(names, headers, sizes, strict=True)
                )
                stored += len(names)
                stored_bytes += sum(sizes)
                batch = following
        self._vault._audit_change(
            s,
            "record.put",
            self.path,
            version=version,
            details={"records": stored, "bytes": stored_bytes},
        )

    def get(self, name: str) -> bytes:
        """The payload of record ``name``.

        Raises:
            NotFoundError: no such record.
            IntegrityError: the stored record was altered or misplaced.
            StorageError: the database failed.
        """
        return self.get_many([name])[name]

    @_audit_failures("get_many")
    def get_many(self, names: Iterable[str]) -> dict[str, bytes]:
        """Payloads of several records by name.

        Names are looked up some hundreds at a time; Rust opens one group (GIL released,
        across cores) while the database reads the next.

        Raises:
            NotFoundError: any name has no record (the error counts how many).
            IntegrityError: a stored record was altered or misplaced.
            StorageError: the database failed.
        """
        wanted = list(dict.fromkeys(names))
        raw = encode_names(wanted)
        out: dict[str, bytes] = {}
        # The vault's background threads (None for an in-memory database): a call of one
        # group opens it inline, as does the last group of any call.
        group = repository.IN_LIST_CHUNK  # read now, as in_chunks reads it
        pool = self._vault._prefetch if len(wanted) > group else None
        opening: tuple[Future[dict[str, bytes]], Callable[[], dict[str, bytes]]] | None = None
        with self._vault._read() as s:
            _, key = self._active_key(s)
            for start in range(0, len(wanted), group):
                stop = start + group
                open_group = self._read_group(s, key, wanted[start:stop], raw[start:stop], out)
                if opening is not None:
                    # Still queued behind other work (stream fetches): opened here instead.
                    future, previous = opening
                    out.update(previous() if future.cancel() else future.result())
                    opening = None
                if pool is not None and stop < len(wanted):
                    with contextlib.suppress(RuntimeError):  # shut down: the vault is closing
                        opening = pool.submit(open_group), open_group
                if opening is None:
                    out.update(open_group())
        return out

    def _read_group(
        self,
        s: Session,
        key: _core.KeyHandle,
        names: list[str],
        raw: list[bytes],
        out: dict[str, bytes],
    ) -> Callable[[], dict[str, bytes]]:
        """Reads the records of ``names`` (at most IN_LIST_CHUNK); streams and derived
        records go into ``out`` now, and the function returned opens the others."""
        scope_id = self._ref.id
        index = dict(zip(key.name_indexes(raw), range(len(raw)), strict=True))
        rows = self._vault._records.find_by_names(s.connection(), scope_id, list(index))
        if len(rows) != len(names):
            if len(names) == 1:
                raise NotFoundError(f"no record of that name in scope {self.path!r}")
            raise NotFoundError(f"{len(names) - len(rows)} of the requested records do not exist")
        suites = _check_rows(rows)
        if any(suite in suites for suite in _SEPARATE_SUITES):  # one pass per suite, in C
            rows = self._read_separate(s, rows, suites, index, names, raw, out)
        bodies = self._vault._payloads.bodies(scope_id, rows)
        if [len(b) for b in bodies] != [r.size + _TAG_LEN for r in rows]:
            raise IntegrityError("a stored record's size does not match its body")
        order = [index[r.name_index] for r in rows]
        headers = [r.header for r in rows]
        keys = self._keys_for(s, headers)
        raw_names = [raw[i] for i in order]

        def open_group() -> dict[str, bytes]:
            try:
                plain = _core.open_records(scope_id, keys, raw_names, headers, bodies)
            except IntegrityError as exc:
                raise IntegrityError(
                    "a stored record failed authentication: it was altered or does not "
                    "belong to this name and scope"
                ) from exc
            return {names[i]: data for i, data in zip(order, plain, strict=True)}

        return open_group

    def _read_separate(
        self,
        s: Session,
        rows: list[FoundRecord],
        suites: bytes,
        index: dict[bytes, int],
        names: list[str],
        raw: list[bytes],
        out: dict[str, bytes],
    ) -> list[FoundRecord]:
        """Reads the streams and derived records among ``rows`` into ``out``; the others
        are returned, for one batch call to open."""
        kept: list[FoundRecord] = []
        deriv: list[FoundRecord] = []
        for r, suite in zip(rows, suites, strict=True):
            if suite == SUITE_SEGMENTED:
                i = index[r.name_index]
                with self._open_stream_row(s, raw[i], r, in_session=True) as reader:
                    out[names[i]] = reader.readall()
            else:
                (deriv if suite == SUITE_DERIVED else kept).append(r)
        opened = derived.open_payloads(s, self, deriv, [raw[index[r.name_index]] for r in deriv])
        for r, data in zip(deriv, opened, strict=True):
            out[names[index[r.name_index]]] = data
        return kept

    # -- streams ------------------------------------------------------------------------

    @_audit_failures("put_stream")
    def put_stream(self, name: str, fileobj: Readable) -> RecordInfo:
        """Stores a payload of any size from a binary file object, 1 MiB segment at a time.

        Memory stays constant; the record replaces any record of that name. It is written in
        one transaction: a failure (or a crash) leaves the previous state. With a blob store,
        a stream larger than the vault's ``blob_threshold`` goes there as one object.

        Raises:
            InvalidInputError: ``fileobj`` is not a binary file object.
        """
        raw = encode_name(name)
        writer = self._vault._records
        payloads = self._vault._payloads
        self._rotate_if_due()
        try:
            with self._vault._write_records() as s, s.begin():
                version, key = self._active_key(s)
                header, name_ct, sealer = _core.begin_stream(key, self._ref.id, version, raw)
                record_id = header[24:40]
                conn = s.connection()
                now = _now()
                row = (record_id, self._ref.id, header[40:72], version, header, name_ct, b"")
                payloads.replacing(s, self._ref.id, [header[40:72]])
                writer.replace(
                    conn, self._ref.id, [(*row, 0, writer.timestamp(now), version, None, None)]
                )
                size = 0
                with payloads.segments(s, writer, self._ref.id, record_id, None) as sink:
                    for seq, (segment, last) in enumerate(read_segments(fileobj)):
                        sink.add(seq, sealer.seal_segment(segment, last))
                        size += len(segment)
                s.execute(
                    update(RecordRow)
                    .where(RecordRow.record_id == record_id)
                    .values(size=size, blob_key=sink.blob_key)
                )
                self._vault._audit_change(
                    s,
                    "record.put_stream",
                    self.path,
                    version=version,
                    details={"records": 1, "bytes": size, "segments": sealer.segments},
                )
        except SQLAlchemyError as exc:
            raise StorageError(
                f"storing the stream failed; nothing was written: {db_message(exc)}"
            ) from exc
        return RecordInfo(name, record_id.hex(), size, version, now)

    @_audit_failures("open_stream")
    def open_stream(self, name: str) -> StreamReader:
        """A seekable, read-only binary file over stream record ``name``.

        Only the segments a read touches are decrypted. Sequential reads of segments in the
        database or a network blob store fetch up to eight more ahead, on a background
        thread (at most 15 sealed MiB per reader); those of a local blob store read the next
        segment's ciphertext on the other core while they decrypt.

        Raises:
            NotFoundError: no such record.
            InvalidInputError: the record was stored whole (use get); only records written
                by put_stream are streams.
            StorageError: the database failed (here, or in a later read of the reader).
        """
        raw = encode_name(name)
        with self._vault._read() as s:
            _, key = self._active_key(s)
            row = s.execute(
                select(
                    RecordRow.record_id,
                    RecordRow.name_index,
                    RecordRow.key_version,
                    RecordRow.size,
                    RecordRow.header,
                    RecordRow.blob_key,
                ).where(
                    RecordRow.scope_id == self._ref.id,
                    RecordRow.name_index == key.name_index(raw),
                )
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"no record of that name in scope {self.path!r}")
            _check_rows([row])
            if row.header[3] != SUITE_SEGMENTED:
                raise InvalidInputError("this record was stored whole; read it with get()")
            return self._open_stream_row(s, raw, row)

    def _open_stream_row(
        self, s: Session, raw: bytes, row: _StoredRow, *, in_session: bool = False
    ) -> StreamReader:
        """A reader of stream record ``row``. Each window of segments is read in a short
        transaction of its own, or from the blob store (see Payloads.segment_reader),
        sequential ones fetched ahead; ``in_session``: in ``s``'s transaction instead, the
        snapshot its caller sees (and the only connection of an in-memory database)."""
        keys = self._keys_for(s, [row.header])
        opener = _core.open_stream(self._ref.id, keys, raw, row.header)
        vault = self._vault
        records = vault._records
        if in_session:
            read, prefetch = functools.partial(records.read_segments, s.connection()), None
        else:
            read = functools.partial(records.read_segments_alone, vault._engine)
            prefetch = vault._prefetch
        source = vault._payloads.segment_reader(self._ref.id, row, read, prefetch=prefetch)
        return StreamReader(opener, row.size, source, vault._check_open)

    # -- key lifecycle ------------------------------------------------------------------

    def keys(self) -> list[KeyVersionInfo]:
        """Every version of this scope's key: state (SP 800-57), wrapper, record count."""
        with self._vault._read() as s:
            ref = self._fresh(s)
        return lineage.key_versions(self._vault, ref)

    @records_failovers
    def rotate_key(self) -> int:
        """Makes a new ACTIVE key version for new writes (O(1)); the old one becomes
        DEACTIVATED and still decrypts until :meth:`rewrap` moves its records.

        Returns:
            The new version.

        Raises:
            ConcurrentRotationError: another process rotated this scope at the same moment.
        """
        return rotation.rotate_key(self._vault, self._ref)

    @records_failovers
    def rewrap(
        self,
        *,
        batch_size: int = rotation.DEFAULT_BATCH,
        progress: rotation.Progress | None = None,
        dry_run: bool = False,
    ) -> rotation.JobReport:
        """Moves every record's DEK to the active key version (no payload is re-encrypted),
        then destroys the emptied old versions. Resumable: rerun after any crash.

        Args:
            batch_size: Records per transaction.
            progress: Called as ``progress(done, total)`` after each batch.
            dry_run: Only count what would move, per version.
        """
        return rotation.rewrap(
            self._vault, self._ref, batch_size=batch_size, progress=progress, dry_run=dry_run
        )

    @records_failovers
    def mark_compromised(self, version: int | None = None, *, reason: str) -> int:
        """Marks a key version COMPROMISED (the active one by default, after rotating).

        Its records refuse to decrypt until :meth:`reencrypt` gives them new DEKs.
        """
        return rotation.mark_compromised(self._vault, self._ref, version, reason)

    @records_failovers
    def reencrypt(
        self,
        *,
        batch_size: int = 1000,
        progress: rotation.Progress | None = None,
        dry_run: bool = False,
    ) -> rotation.JobReport:
        """Re-encrypts every record under a COMPROMISED version with a new DEK under the active
        version, then destroys the compromised versions. Resumable: rerun after any crash."""
        return rotation.reencrypt(
            self._vault, self._ref, batch_size=batch_size, progress=progress, dry_run=dry_run
        )

    def suspend(self, *, reason: str | None = None) -> None:
        """Revokes the scope and its subtree: nothing under it encrypts or decrypts
        (KeyRevokedError) until :meth:`resume`. Other processes stop within the vault's
        ``revalidate_s`` bound; this one at once."""
        rotation.set_scope_state(self._vault, self._ref, SUSPENDED, reason)

    def resume(self, *, reason: str | None = None) -> None:
        """Lifts a suspension."""
        rotation.set_scope_state(self._vault, self._ref, ACTIVE, reason)

    @records_failovers
    def lineage(self, name: str) -> lineage.RecordLineage:
        """The key custody of record ``name``: its DEK, key chain up to the KEK, and every
        key event since it was sealed (oldest first)."""
        raw = encode_name(name)
        with self._vault._read() as s:
            _, key = self._active_key(s)
        return lineage.record_lineage(self._vault, self._ref, name, key.name_index(raw))

    @_audit_failures("delete")
    def delete(self, name: str) -> None:
        """Deletes record ``name``: its wrapped DEK and ciphertext are overwritten on disk (a
        blob store object is deleted after the commit).

        Raises:
            NotFoundError: no such record.
        """
        raw = encode_name(name)
        with self._vault._write_records() as s, s.begin():
            _, key = self._active_key(s)
            index = key.name_index(raw)
            self._vault._payloads.replacing(s, self._ref.id, [index])
            deleted = self._vault._records.delete_names(s.connection(), self._ref.id, [index])
            if deleted == 0:
                raise NotFoundError(f"no record of that name in scope {self.path!r}")
            self._vault._audit_change(s, "record.delete", self.path, details={"records": 1})

    @_audit_failures("list")
    def list(self, prefix: str = "") -> list[RecordInfo]:
        """Records whose names start with ``prefix``, sorted by name.

        Names are stored encrypted, so listing decrypts them (in Rust, batched). Derived
        records whose source was deleted cannot be decrypted any more and are left out.

        Raises:
            IntegrityError: a stored name or row was altered.
            StorageError: the database failed.
        """
        if not isinstance(prefix, str):
            raise InvalidInputError("prefix must be a str")
        infos: list[RecordInfo] = []
        with self._vault._read() as s:
            self._vault._keys.check_usable(s, self._fresh(s))
            records = self._vault._records
            for batch in records.list_records(s.connection(), self._ref.id, BATCH_RECORDS):
                suites = _check_rows(batch)
                rows = [r for r, kind in zip(batch, suites, strict=True) if kind != SUITE_DERIVED]
                deriv = [r for r, kind in zip(batch, suites, strict=True) if kind == SUITE_DERIVED]
                headers = [r.header for r in rows]
                keys = self._keys_for(s, headers)
                try:
                    names: list[bytes | None] = list(
                        _core.open_names(self._ref.id, keys, headers, [r.name_ct for r in rows])
                    )
                    names += derived.open_names(s, self, deriv)
                except IntegrityError as exc:
                    raise IntegrityError("a stored record name failed authentication") from exc
                for r, raw in zip([*rows, *deriv], names, strict=True):
                    if raw is None:
                        continue  # a derivative whose source is gone: unreadable for good
                    name = raw.decode("utf-8")
                    if name.startswith(prefix):
                        infos.append(
                            RecordInfo(
                                name,
                                r.record_id.hex(),
                                r.size,
                                r.key_version or 0,
                                utc(r.created_at),
                            )
                        )
        infos.sort(key=lambda i: i.name)
        return infos
