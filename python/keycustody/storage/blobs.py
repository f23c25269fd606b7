"""Blob stores: where the ciphertext of large records lives outside the database.

A blob store holds opaque objects under string keys. keycustody only ever hands it ciphertext
(AES-256-GCM bodies and sealed stream segments); the headers with the wrapped DEKs stay in the
database, so an object on its own opens with no key. Two stores ship:

- :class:`LocalBlobStore`: files in a directory. Layout: ``ROOT/<key dirs>/<fanout>/<name>``
  where ``name`` is the key's last segment and ``fanout`` its first two characters (for
  keycustody's keys, ``ROOT/<scope id>/<2 hex>/<record id>``): one directory per scope, so a
  scope's objects are listed in one place, and at most 256 subdirectories under it, so no
  directory grows without bound. A write goes to a temporary file in the same directory
  (``.<name>.<random>.tmp``, mode 0600), is fsynced, renamed over the final name, and the
  directory is fsynced: a crash leaves the old state or the new one, never half a file.
- :class:`S3BlobStore`: objects in an S3 bucket under a prefix (boto3, ``keycustody[aws]``).
  Objects larger than one part are written with a multipart upload, aborted on failure, so
  memory stays at one part whatever the object's size.

Keys are ``/``-separated segments of ``A-Z a-z 0-9 . _ -`` that do not start with a dot, so a
key can never climb out of the store's root (no ``..``, no absolute paths) or collide with a
temporary file. Stores are addressed by URL in the CLI (:func:`open_blob_store`):
``file:///var/lib/keycustody/blobs`` or ``s3://bucket/prefix``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from typing_extensions import Buffer

from keycustody import awssdk
from keycustody._core import SEGMENT_LEN, TAG_LEN
from keycustody.durable import Writeback, fsync_dir
from keycustody.errors import BlobMissingError, ConfigError, InvalidInputError, StorageError

_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
_MAX_KEY = 1024
_TMP_SUFFIX = ".tmp"
_READ_CHUNK = 1024 * 1024

S3_MIN_PART = 5 * 1024 * 1024
"""S3's smallest part (every part of a multipart upload but the last)."""
DEFAULT_PART_SIZE = 8 * (SEGMENT_LEN + TAG_LEN)
"""8 sealed stream segments (8 MiB + 128 B): at least 8 MiB, and a multiple of the sealed
segment size so that no stream segment straddles two parts."""
DEFAULT_ORPHAN_GRACE = timedelta(hours=24)
"""Unreferenced objects younger than this are left alone by the sweep: they may belong to a
write whose transaction has not committed yet. It must exceed the longest write transaction."""


def check_key(key: str) -> str:
    """Returns ``key`` if it is a valid blob key (see the module docstring).

    Raises:
        InvalidInputError: the key is empty, too long, or could escape the store's root.
    """
    if not isinstance(key, str) or len(key) > _MAX_KEY or not _KEY.fullmatch(key):
        raise InvalidInputError(
            "a blob key is '/'-separated segments of A-Z a-z 0-9 . _ - not starting with '.'"
        )
    return key


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One stored object, as listed."""

    key: str
    size: int
    modified: datetime
    """When the object was last written (UTC)."""


class BlobWriter(Protocol):
    """An object being written: :meth:`write` any number of times, then :meth:`commit` (the
    object exists, durably, once it returns) or :meth:`abort` (nothing is left behind)."""

    def write(self, data: Buffer, /) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    """Where large ciphertexts are kept (see :mod:`keycustody.storage.blobs`).

    Every method raises :class:`~keycustody.errors.StorageError` when the store fails, and
    :class:`~keycustody.errors.InvalidInputError` for a malformed key.
    """

    def put(self, key: str, data: Buffer | Iterable[Buffer], /) -> None:
        """Stores ``data`` (bytes, or an iterable of chunks) under ``key``, replacing any
        object there; durable when it returns."""
        ...

    def writer(self, key: str, /) -> BlobWriter:
        """Starts writing the object ``key`` chunk by chunk (constant memory)."""
        ...

    def get(self, key: str, /, start: int = 0, length: int | None = None) -> bytes:
        """The object's bytes from ``start``, ``length`` of them (all by default; fewer if the
        object ends first).

        Raises:
            BlobMissingError: no object under ``key``.
        """
        ...

    def exists(self, key: str, /) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def delete(self, key: str, /) -> None:
        """Removes the object; a missing object is not an error."""
        ...

    def delete_many(self, keys: Iterable[str], /) -> None:
        """Removes every object of ``keys`` (missing ones are not an error)."""
        ...

    def list(self, prefix: str = "", /) -> Iterator[BlobInfo]:
        """The objects whose keys start with ``prefix``."""
        ...

    def remove_incomplete(self, prefix: str, older_than: datetime, /) -> int:
        """Removes what interrupted writes under ``prefix`` left behind (temporary files,
        unfinished multipart uploads) that started before ``older_than``; returns how many."""
        ...


def _chunks(data: Buffer | Iterable[Buffer]) -> Iterable[Buffer]:
    if isinstance(data, bytes | bytearray | memoryview):
        return (data,)
    return data  # type: ignore[return-value]


def _put(store: BlobStore, key: str, data: Buffer | Iterable[Buffer]) -> None:
    writer = store.writer(key)
    try:
        for chunk in _chunks(data):
            writer.write(chunk)
        writer.commit()
    except BaseException:
        writer.abort()
        raise


# -- local directory ------------------------------------------------------------------------


class _LocalWriter:
    def __init__(self, store: LocalBlobStore, key: str) -> None:
        self._key = key
        self._path = store.path_of(key)
        store._make_dirs(self._path.parent)
        self._tmp = self._path.with_name(f".{self._path.name}.{secrets.token_hex(8)}{_TMP_SUFFIX}")
        self._fd: int | None = os.open(
            self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600
        )
        self._writeback = Writeback(self._fd)

    def write(self, data: Buffer) -> None:
        if self._fd is None:
            raise StorageError("the blob writer is already closed")
        view = memoryview(data).cast("B")
        n = len(view)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise StorageError(f"cannot write blob {self._key}: {exc.strerror}") from exc
        self._writeback.wrote(n)

    def commit(self) -> None:
        if self._fd is None:
            raise StorageError("the blob writer is already closed")
        fd, self._fd = self._fd, None
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self._path)
            fsync_dir(self._path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            raise StorageError(f"cannot write blob {self._key}: {exc.strerror}") from exc

    def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self._tmp.unlink()


class LocalBlobStore:
    """Objects as files under a directory (created 0700 if missing), written atomically and
    durably; files are 0600, directories 0700."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """
        Args:
            path: The store's root directory.

        Raises:
            ConfigError: ``path`` exists and is not a directory, or cannot be created.
        """
        root = Path(path).expanduser()
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use {root} as a blob store: {exc.strerror}") from exc
        self.root = root.resolve()

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def path_of(self, key: str) -> Path:
        """The file that holds (or would hold) object ``key``.

        Raises:
            InvalidInputError: ``key`` is not a valid object key.
        """
        *dirs, name = check_key(key).split("/")
        return self.root.joinpath(*dirs, name[:2], name)

    def _make_dirs(self, folder: Path) -> None:
        # Each directory created is fsynced into its parent, so a committed file's path
        # survives a power loss too.
        missing: list[Path] = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot create {path}: {exc.strerror}") from exc
            fsync_dir(path.parent)

    def writer(self, key: str) -> BlobWriter:
        """See :meth:`BlobStore.writer`."""
        try:
            return _LocalWriter(self, key)
        except OSError as exc:
            raise StorageError(f"cannot write blob {key}: {exc.strerror}") from exc

    def put(self, key: str, data: Buffer | Iterable[Buffer]) -> None:
        """See :meth:`BlobStore.put`."""
        _put(self, key, data)

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """See :meth:`BlobStore.get`."""
        path = self.path_of(key)
        try:
            with path.open("rb") as f:
                f.seek(start)
                return f.read(-1 if length is None else length)
        except FileNotFoundError:
            raise BlobMissingError(f"blob {key} does not exist in {self!r}") from None
        except OSError as exc:
            raise StorageError(f"cannot read blob {key}: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        """See :meth:`BlobStore.exists`."""
        return self.path_of(key).is_file()

    def delete(self, key: str) -> None:
        """See :meth:`BlobStore.delete`."""
        path = self.path_of(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete blob {key}: {exc.strerror}") from exc

    def delete_many(self, keys: Iterable[str]) -> None:
        """See :meth:`BlobStore.delete_many`."""
        for key in keys:
            self.delete(key)

    def _walk(self, prefix: str) -> Iterator[tuple[Path, os.stat_result]]:
        base = prefix.rpartition("/")[0]
        start = self.root.joinpath(*check_key(base).split("/")) if base else self.root
        for folder, dirs, files in os.walk(start):
            dirs.sort()
            for name in sorted(files):
                path = Path(folder, name)
                try:
                    yield path, path.stat()
                except FileNotFoundError:
                    continue  # deleted while listing

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """See :meth:`BlobStore.list`."""
        for path, st in self._walk(prefix):
            parts = path.relative_to(self.root).parts
            name = parts[-1]
            # Only files laid out as this store writes them; anything else is not ours.
            if len(parts) < 2 or name.startswith(".") or parts[-2] != name[:2]:
                continue
            key = "/".join((*parts[:-2], name))
            if key.startswith(prefix) and _KEY.fullmatch(key):
                yield BlobInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def remove_incomplete(self, prefix: str, older_than: datetime) -> int:
        """See :meth:`BlobStore.remove_incomplete`: stale temporary files of crashed writes."""
        removed = 0
        cutoff = older_than.timestamp()
        for path, st in self._walk(prefix):
            stale = path.name.startswith(".") and path.name.endswith(_TMP_SUFFIX)
            if stale and st.st_mtime < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed


# -- S3 -------------------------------------------------------------------------------------


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class _RangeError(StorageError):
    """A ranged GET that starts past the object's end (S3's InvalidRange)."""


class _S3Writer:
    def __init__(self, store: S3BlobStore, key: str) -> None:
        self._store = store
        self._key = key
        self._name = store._name(key)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._closed = False

    def _upload_part(self, data: Buffer) -> None:
        store = self._store
        if self._upload_id is None:
            started = store._call(
                self._key,
                store.client.create_multipart_upload,
                Bucket=store.bucket,
                Key=self._name,
            )
            self._upload_id = str(started["UploadId"])
        number = len(self._parts) + 1
        answer = store._call(
            self._key,
            store.client.upload_part,
            Bucket=store.bucket,
            Key=self._name,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=bytes(data),
        )
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})

    def write(self, data: Buffer) -> None:
        if self._closed:
            raise StorageError("the blob writer is already closed")
        part = self._store.part_size
        view = memoryview(data).cast("B")
        while view:
            if not self._buffer and len(view) >= part:
                self._upload_part(view[:part])  # a whole part: no copy into the buffer
                view = view[part:]
                continue
            take = min(part - len(self._buffer), len(view))
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) == part:
                self._upload_part(self._buffer)
                self._buffer.clear()

    def commit(self) -> None:
        if self._closed:
            raise StorageError("the blob writer is already closed")
        store = self._store
        if self._upload_id is None:  # one part or less: a plain PUT
            store._call(
                self._key,
                store.client.put_object,
                Bucket=store.bucket,
                Key=self._name,
                Body=bytes(self._buffer),
            )
        else:
            if self._buffer:
                self._upload_part(self._buffer)
            store._call(
                self._key,
                store.client.complete_multipart_upload,
                Bucket=store.bucket,
                Key=self._name,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._closed = True
        self._buffer = bytearray()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer = bytearray()
        if self._upload_id is not None:
            # Best effort: remove_incomplete() aborts what is left after a failure here.
            store = self._store
            with contextlib.suppress(StorageError):
                store._call(
                    self._key,
                    store.client.abort_multipart_upload,
                    Bucket=store.bucket,
                    Key=self._name,
                    UploadId=self._upload_id,
                )


class S3BlobStore:
    """Objects in an S3 bucket (or an S3-compatible service) under a key prefix.

    Objects larger than ``part_size`` are written with a multipart upload (aborted on
    failure); reads of a byte range use ranged GETs. Server-side encryption and versioning
    are the bucket's settings; note that with versioning on, a deleted object's ciphertext
    stays as a noncurrent version until the bucket's lifecycle rules expire it.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        """
        Args:
            bucket: The bucket name.
            prefix: Key prefix inside the bucket (e.g. ``keycustody/prod``).
            client: A boto3 S3 client to use (its own retry and timeout settings apply);
                by default one is made from the environment's AWS configuration.
            endpoint_url: For S3-compatible services or a local test server.
            region: The bucket's region (default: the environment's).
            part_size: Bytes per part of a multipart upload (at least 5 MiB, S3's minimum).

        Raises:
            ConfigError: boto3 is missing, or a setting is invalid.
        """
        if not bucket or "/" in bucket:
            raise ConfigError(f"invalid S3 bucket name {bucket!r}")
        if not S3_MIN_PART <= part_size <= 5 * 1024**3:
            raise ConfigError("part_size must be between 5 MiB and 5 GiB (S3's part limits)")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.part_size = part_size
        self._sdk = awssdk.load("S3BlobStore")
        if client is None:
            config = self._sdk.Config(
                retries={"max_attempts": 5, "mode": "standard"},
                user_agent_extra="keycustody",
            )
            try:
                client = self._sdk.boto3.client(
                    "s3", region_name=region, endpoint_url=endpoint_url, config=config
                )
            except Exception as exc:  # botocore: bad region, endpoint or profile
                raise ConfigError(
                    f"cannot create an S3 client: {type(exc).__name__}: {exc}"
                ) from None
        self.client = client

    def __repr__(self) -> str:
        return f"S3BlobStore({self.bucket!r}, {self.prefix!r})"

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, key: str, method: Any, **kwargs: Any) -> Any:
        """Calls the SDK and translates its errors; never lets a botocore error escape."""
        errors = self._sdk.exc
        try:
            return method(**kwargs)
        except (errors.ClientError, errors.BotoCoreError) as exc:
            code = _code(exc)
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise BlobMissingError(f"blob {key} does not exist in {self!r}") from None
            if code == "InvalidRange":
                raise _RangeError(f"blob {key} is shorter than the range read") from None
            detail = code or type(exc).__name__
            message = f"S3 failed on blob {key} in {self!r}: {detail}"
        # Raised outside the except block: the SDK's frames are not kept alive.
        raise StorageError(message)

    def writer(self, key: str) -> BlobWriter:
        """See :meth:`BlobStore.writer`."""
        return _S3Writer(self, key)

    def put(self, key: str, data: Buffer | Iterable[Buffer]) -> None:
        """See :meth:`BlobStore.put`."""
        _put(self, key, data)

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """See :meth:`BlobStore.get`."""
        if length == 0:
            return b""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._name(key)}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            kwargs["Range"] = f"bytes={start}-{end}"
        try:
            answer = self._call(key, self.client.get_object, **kwargs)
        except _RangeError:  # the range starts past the end: like reading a file there
            return b""
        errors = self._sdk.exc
        try:
            data: bytes = answer["Body"].read()
        except (errors.BotoCoreError, OSError) as exc:
            message = f"S3 failed reading blob {key} in {self!r}: {type(exc).__name__}"
        else:
            return data
        raise StorageError(message)

    def exists(self, key: str) -> bool:
        """See :meth:`BlobStore.exists`."""
        try:
            self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._name(key))
        except BlobMissingError:
            return False
        return True

    def delete(self, key: str) -> None:
        """See :meth:`BlobStore.delete`."""
        self._call(key, self.client.delete_object, Bucket=self.bucket, Key=self._name(key))

    def delete_many(self, keys: Iterable[str]) -> None:
        """See :meth:`BlobStore.delete_many`: DeleteObjects, 1000 keys a request."""
        batch: list[str] = []
        for key in [*keys, None]:
            if key is not None:
                batch.append(self._name(key))
            if batch and (key is None or len(batch) == 1000):
                answer = self._call(
                    batch[0],
                    self.client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
                failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
                if failed:
                    raise StorageError(
                        f"S3 did not delete {len(failed)} blobs in {self!r}: "
                        f"{failed[0].get('Code')}"
                    )
                batch = []

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """See :meth:`BlobStore.list`."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        for page in self._pages(prefix, pages):
            for item in page.get("Contents", []):
                key = str(item["Key"])[len(self.prefix) :]
                if _KEY.fullmatch(key):
                    yield BlobInfo(key, int(item["Size"]), item["LastModified"])

    def _pages(self, prefix: str, pages: Iterable[Any]) -> Iterator[Any]:
        iterator = iter(pages)
        while True:
            page = self._call(prefix or "(all)", lambda: next(iterator, None))
            if page is None:
                return
            yield page

    def remove_incomplete(self, prefix: str, older_than: datetime) -> int:
        """See :meth:`BlobStore.remove_incomplete`: aborts unfinished multipart uploads."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        removed = 0
        for page in self._pages(prefix, pages):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < older_than:
                    key = str(upload["Key"])
                    self._call(
                        key,
                        self.client.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload["UploadId"],
                    )
                    removed += 1
        return removed


# -- URLs -----------------------------------------------------------------------------------


def open_blob_store(url: str) -> BlobStore:
    """The blob store named by a URL.

    ``file:///ABSOLUTE/PATH`` is a :class:`LocalBlobStore`; ``s3://BUCKET/PREFIX`` is an
    :class:`S3BlobStore`, with optional ``?region=REGION&endpoint=URL`` (otherwise boto3's
    environment settings apply, e.g. ``AWS_REGION`` and ``AWS_ENDPOINT_URL_S3``).

    Raises:
        ConfigError: the URL is malformed or its scheme is not supported.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"a file blob store URL is file:///ABSOLUTE/PATH, not {url!r}")
        return LocalBlobStore(unquote(parts.path))
    if parts.scheme == "s3":
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"region", "endpoint"}
        if unknown or not parts.netloc:
            raise ConfigError(
                f"an S3 blob store URL is s3://BUCKET/PREFIX[?region=R&endpoint=URL], not {url!r}"
            )
        return S3BlobStore(
            parts.netloc,
            unquote(parts.path),
            region=query.get("region"),
            endpoint_url=query.get("endpoint"),
        )
    raise ConfigError(
        f"unsupported blob store URL {url!r}: use file:///PATH or s3://BUCKET/PREFIX"
    )
