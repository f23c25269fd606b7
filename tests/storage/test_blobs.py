"""Blob stores: LocalBlobStore on the filesystem, S3BlobStore against moto's server over real
HTTP, and a vault that keeps the ciphertext of large payloads in them."""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import os
import random
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

import keycustody as kc
from keycustody._core import SEGMENT_LEN, TAG_LEN
from keycustody.durable import WRITEBACK_CHUNK
from keycustody.errors import BlobMissingError
from keycustody.payloads import DEFAULT_THRESHOLD, blob_key
from keycustody.storage.blobs import (
    DEFAULT_PART_SIZE,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    open_blob_store,
)

MiB = 1024 * 1024
SMALL = 64 * 1024
"""Threshold of the tests that are not about the default one: fast, and still segmented."""
AWS_REGION = "eu-west-1"


def _payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_admin(moto_url: str) -> Any:
    """A boto3 S3 client straight to moto (the bucket owner's console)."""
    import boto3

    return boto3.client("s3", region_name=AWS_REGION, endpoint_url=moto_url)


@pytest.fixture
def bucket(s3_admin: Any) -> str:
    name = f"kc-{uuid.uuid4().hex[:20]}"
    s3_admin.create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": AWS_REGION}
    )
    return name


@pytest.fixture
def s3_store(bucket: str, moto_url: str) -> S3BlobStore:
    return S3BlobStore(bucket, "vaults/test", endpoint_url=moto_url, region=AWS_REGION)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> BlobStore:
    """Each blob store in turn."""
    result: BlobStore = request.getfixturevalue(f"{request.param}_store")
    return result


@pytest.fixture
def open_vault(db_url: str, kms: kc.LocalKMS) -> Iterator[Callable[..., kc.Vault]]:
    opened: list[kc.Vault] = []

    def opener(store: BlobStore | str | None, threshold: int = SMALL) -> kc.Vault:
        vault = kc.Vault.open(db_url, kms=kms, blob_store=store, blob_threshold=threshold)
        opened.append(vault)
        return vault

    yield opener
    for vault in opened:
        vault.close()


@pytest.fixture
def vault(open_vault: Callable[..., kc.Vault], store: BlobStore) -> kc.Vault:
    """A vault over ``store`` with a 64 KiB threshold."""
    return open_vault(store)


@pytest.fixture
def acme(vault: kc.Vault) -> kc.Scope:
    return vault.scope("acme", create=True)


def _keys(store: BlobStore) -> set[str]:
    return {info.key for info in store.list()}


def _rows(db_path: Path) -> dict[str, tuple[str | None, int]]:
    """record id (hex) -> (blob_key, len(body)) straight from the database."""
    conn = sqlite3.connect(db_path)
    try:
        return {
            rid.hex(): (key, n)
            for rid, key, n in conn.execute(
                "SELECT record_id, blob_key, length(body) FROM records"
            )
        }
    finally:
        conn.close()


def _tamper(store: BlobStore, key: str, offset: int) -> None:
    data = bytearray(store.get(key))
    data[offset] ^= 0x01
    store.put(key, bytes(data))


# -- the stores themselves ------------------------------------------------------------------


def test_store_contract(store: BlobStore) -> None:
    data = _payload(3 * MiB + 7)
    store.put("aa11/bb22", data)
    store.put("aa11/cc33", [b"one", bytearray(b"two"), memoryview(b"three")])

    assert store.get("aa11/bb22") == data
    assert store.get("aa11/bb22", 5, 10) == data[5:15]
    assert store.get("aa11/bb22", len(data) - 3, 10) == data[-3:]  # fewer when the end comes
    assert store.get("aa11/bb22", len(data) + 10, 10) == b""
    assert store.get("aa11/cc33") == b"onetwothree"
    assert store.exists("aa11/bb22") and not store.exists("aa11/nope")
    listed = {i.key: i for i in store.list("aa11/")}
    assert set(listed) == {"aa11/bb22", "aa11/cc33"}
    assert listed["aa11/bb22"].size == len(data)
    assert abs(listed["aa11/bb22"].modified - datetime.now(UTC)) < timedelta(minutes=5)
    assert {i.key for i in store.list("aa11/b")} == {"aa11/bb22"}
    assert list(store.list("zz99/")) == []

    store.put("aa11/bb22", b"replaced")
    assert store.get("aa11/bb22") == b"replaced"
    store.delete("aa11/bb22")
    store.delete("aa11/bb22")  # missing is fine
    with pytest.raises(BlobMissingError, match="aa11/bb22"):
        store.get("aa11/bb22")
    store.delete_many(["aa11/cc33", "aa11/never"])
    assert _keys(store) == set()


def test_aborted_writer_leaves_nothing(store: BlobStore) -> None:
    writer = store.writer("aa11/dd44")
    writer.write(_payload(DEFAULT_PART_SIZE + 10))  # past one part: S3 has an upload open
    writer.abort()
    assert not store.exists("aa11/dd44")
    assert store.remove_incomplete("", datetime.now(UTC) + timedelta(seconds=1)) == 0


@pytest.mark.parametrize(
    "key", ["", "../x", "a/../../x", "/etc/passwd", ".hidden", "a/.b", "a//b", "a\\b", "a b"]
)
def test_keys_that_could_escape_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(kc.InvalidInputError):
        store.put(key, b"x")
    with pytest.raises(kc.InvalidInputError):
        store.get(key)


def test_local_layout_and_permissions(local_store: LocalBlobStore) -> None:
    scope, record = "ab" * 16, "cd" * 16
    local_store.put(f"{scope}/{record}", b"ciphertext")

    path = local_store.root / scope / record[:2] / record
    assert path.read_bytes() == b"ciphertext"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (local_store.root, path.parent, path.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [record]  # no temporary file left
    # Files not laid out as the store writes them are not listed (never swept).
    (local_store.root / scope / "stray").write_bytes(b"x")
    assert _keys(local_store) == {f"{scope}/{record}"}


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
def test_a_large_local_write_starts_its_writeback_before_the_fsync(
    local_store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each WRITEBACK_CHUNK written starts its own writeback, in order, before the commit's
    fsync. A spy records the calls and makes them for real (the kernel's writeback itself
    cannot be observed from here: nothing in /proc says which pages of a file are dirty)."""
    calls: list[tuple[int, int, int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((fd, offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    chunk = SEGMENT_LEN + TAG_LEN
    data = _payload(20 * chunk + 5)
    writer = local_store.writer("ab12/ef56")
    for start in range(0, len(data), chunk):
        writer.write(data[start : start + chunk])
    spans = [(offset, length) for _, offset, length, _ in calls]
    assert {(fd, advice) for fd, _, _, advice in calls} == {
        (writer._fd, os.POSIX_FADV_DONTNEED)  # type: ignore[attr-defined]
    }
    assert spans[0][0] == 0 and len(spans) == 2  # 8 MiB, 8 MiB, then the rest for the fsync
    assert all(length >= WRITEBACK_CHUNK for _, length in spans)
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
    writer.commit()
    assert local_store.get("ab12/ef56") == data


def test_a_local_write_does_not_depend_on_its_early_writeback(
    local_store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting writeback early is only an optimisation: where the call fails (an injected
    error) or is missing (not Linux), the object is written and committed all the same."""

    def failing(fd: int, offset: int, length: int, advice: int) -> None:
        raise OSError(errno.EINVAL, "injected")

    data = _payload(3 * WRITEBACK_CHUNK)
    monkeypatch.setattr(os, "posix_fadvise", failing)
    local_store.put("ab12/aa01", [data[:WRITEBACK_CHUNK], data[WRITEBACK_CHUNK:]])
    monkeypatch.delattr(os, "posix_fadvise")
    local_store.put("ab12/aa02", [data[:WRITEBACK_CHUNK], data[WRITEBACK_CHUNK:]])
    assert local_store.get("ab12/aa01") == local_store.get("ab12/aa02") == data


def test_local_removes_stale_temporary_files(local_store: LocalBlobStore) -> None:
    writer = local_store.writer("ab12/cd34")
    writer.write(b"half a write")  # then the process dies: the temporary file stays
    folder = local_store.root / "ab12" / "cd"
    (tmp,) = folder.iterdir()
    assert tmp.name.startswith(".cd34.") and tmp.name.endswith(".tmp")
    assert _keys(local_store) == set()

    assert local_store.remove_incomplete("ab12/", datetime.now(UTC) - timedelta(hours=1)) == 0
    assert tmp.exists(), "a write in flight is left alone"
    old = time.time() - 7200
    os.utime(tmp, (old, old))
    assert local_store.remove_incomplete("ab12/", datetime.now(UTC) - timedelta(hours=1)) == 1
    assert not tmp.exists()
    writer.abort()


def test_s3_multipart_upload_of_a_20_mib_object(s3_store: S3BlobStore, s3_admin: Any) -> None:
    calls: list[str] = []
    client = s3_store.client
    for method in ("put_object", "create_multipart_upload", "upload_part"):
        original = getattr(client, method)

        def spy(*args: Any, _name: str = method, _f: Any = original, **kwargs: Any) -> Any:
            calls.append(_name)
            return _f(*args, **kwargs)

        setattr(client, method, spy)
    data = _payload(20 * MiB, seed=20)

    s3_store.put("ab/cdef", (data[i : i + MiB] for i in range(0, len(data), MiB)))

    assert 8 * MiB <= DEFAULT_PART_SIZE
    assert DEFAULT_PART_SIZE % (SEGMENT_LEN + TAG_LEN) == 0
    assert calls == ["create_multipart_upload"] + ["upload_part"] * 3
    head = s3_admin.head_object(Bucket=s3_store.bucket, Key="vaults/test/ab/cdef")
    assert head["ContentLength"] == len(data)
    assert "-3" in head["ETag"], "a multipart object of three parts"
    assert s3_store.get("ab/cdef") == data
    assert s3_store.get("ab/cdef", 9 * MiB - 5, 10) == data[9 * MiB - 5 : 9 * MiB + 5]


def test_s3_failed_multipart_upload_is_aborted(s3_store: S3BlobStore, s3_admin: Any) -> None:
    client = s3_store.client
    original = client.upload_part
    seen = 0

    def failing(**kwargs: Any) -> Any:
        nonlocal seen
        seen += 1
        if seen == 2:
            kwargs["PartNumber"] = 0  # S3 refuses part number 0
        return original(**kwargs)

    client.upload_part = failing
    with pytest.raises(kc.StorageError, match="S3 failed on blob ab/cdef"):
        s3_store.put("ab/cdef", _payload(3 * DEFAULT_PART_SIZE))
    uploads = s3_admin.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", [])
    assert uploads == []
    assert not s3_store.exists("ab/cdef")


def test_s3_remove_incomplete_aborts_old_uploads(s3_store: S3BlobStore, s3_admin: Any) -> None:
    s3_admin.create_multipart_upload(Bucket=s3_store.bucket, Key="vaults/test/ab12/cd34")
    s3_admin.create_multipart_upload(Bucket=s3_store.bucket, Key="vaults/test/ef56/gh78")
    # moto (5.2) reports every upload as initiated in 2010, so only the old side is tested.
    (upload,) = s3_admin.list_multipart_uploads(
        Bucket=s3_store.bucket, Prefix="vaults/test/ab12/"
    )["Uploads"]
    cutoff = upload["Initiated"] + timedelta(seconds=1)
    assert s3_store.remove_incomplete("ab12/", cutoff - timedelta(seconds=2)) == 0
    assert s3_store.remove_incomplete("ab12/", cutoff) == 1
    assert s3_store.remove_incomplete("ef56/", cutoff) == 1
    assert s3_admin.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", []) == []


def test_s3_unreachable_is_a_storage_error(dead_s3: S3BlobStore) -> None:
    with pytest.raises(kc.StorageError, match="S3 failed on blob ab/cd"):
        dead_s3.get("ab/cd")


@pytest.fixture
def dead_s3(aws_env: None) -> S3BlobStore:
    import socket

    import botocore.config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import boto3

    client = boto3.client(
        "s3",
        region_name=AWS_REGION,
        endpoint_url=f"http://127.0.0.1:{port}",
        config=botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    return S3BlobStore("bucket", client=client)


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(kc.ConfigError, match=r"pip install 'keycustody\[aws\]'"):
        S3BlobStore("bucket")
    with pytest.raises(kc.ConfigError, match=r"keycustody\[aws\]"):
        open_blob_store("s3://bucket/prefix")


def test_blob_store_urls(tmp_path: Path, bucket: str, moto_url: str) -> None:
    local = open_blob_store(f"file://{tmp_path}/b")
    assert isinstance(local, LocalBlobStore) and local.root == (tmp_path / "b").resolve()
    s3 = open_blob_store(f"s3://{bucket}/a/b/?region={AWS_REGION}&endpoint={moto_url}")
    assert isinstance(s3, S3BlobStore) and (s3.bucket, s3.prefix) == (bucket, "a/b/")
    s3.put("ab/cd", b"over http")
    assert s3.get("ab/cd") == b"over http"
    for bad in ("file://host/x", "file:relative", "s3:///nobucket", "s3://b/p?x=1", "ftp://x"):
        with pytest.raises(kc.ConfigError):
            open_blob_store(bad)


# -- a vault with a blob store --------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [DEFAULT_THRESHOLD - 1, DEFAULT_THRESHOLD, DEFAULT_THRESHOLD + 1, 20 * MiB]
)
def test_round_trip_around_the_default_threshold(
    open_vault: Callable[..., kc.Vault], store: BlobStore, db_path: Path, size: int
) -> None:
    vault = open_vault(store, DEFAULT_THRESHOLD)
    acme = vault.scope("acme", create=True)
    data = _payload(size, seed=size)

    info = acme.put("big.bin", data)
    acme.put_many([("other.bin", data[::-1]), ("small.txt", b"small")])

    assert acme.get("big.bin") == data
    assert acme.get_many(["big.bin", "other.bin", "small.txt"]) == {
        "big.bin": data,
        "other.bin": data[::-1],
        "small.txt": b"small",
    }
    key, body_len = _rows(db_path)[info.record_id]
    if size > DEFAULT_THRESHOLD:
        assert key == blob_key(bytes.fromhex(acme.id), bytes.fromhex(info.record_id))
        assert body_len == 0, "only the header stays in the database"
        assert store.get(key) and len(store.get(key)) == size + TAG_LEN
        assert len(_keys(store)) == 2
    else:
        assert (key, body_len) == (None, size + TAG_LEN)
        assert _keys(store) == set()
    assert [i.size for i in acme.list()] == [size, size, 5]


def test_the_blob_holds_ciphertext_only(acme: kc.Scope, store: BlobStore) -> None:
    marker = b"PLAINTEXT-MARKER-7f3a9c-"
    data = marker * (200_000 // len(marker))
    acme.put("secret.txt", data)
    acme.put_stream("stream.txt", io.BytesIO(data * 5))
    needles = [marker, marker[:16], marker[-16:], b"secret.txt", b"stream.txt"]

    keys = _keys(store)
    assert len(keys) == 2
    for key in keys:
        blob = store.get(key)
        assert not any(n in blob for n in needles)
        assert "secret" not in key and "stream" not in key


def test_stream_above_the_threshold_is_one_object_with_random_access(
    acme: kc.Scope, store: BlobStore, db_path: Path
) -> None:
    data = _payload(3 * SEGMENT_LEN + 12345, seed=3)
    info = acme.put_stream("video.bin", io.BytesIO(data))

    key, _ = _rows(db_path)[info.record_id]
    assert key is not None and _keys(store) == {key}
    assert len(store.get(key)) == len(data) + 4 * TAG_LEN  # four sealed segments, in order
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM segments").fetchone()[0] == 0
    conn.close()
    reader = acme.open_stream("video.bin")
    rng = random.Random(4)
    for _ in range(20):
        start = rng.randrange(len(data))
        n = rng.randrange(1, 2 * SEGMENT_LEN)
        reader.seek(start)
        assert reader.read(n) == data[start : start + n]
    reader.seek(-10, io.SEEK_END)
    assert reader.read() == data[-10:]
    assert acme.get("video.bin") == data


def test_stream_below_the_threshold_stays_in_the_database(
    acme: kc.Scope, store: BlobStore, db_path: Path
) -> None:
    data = _payload(SMALL - 1)
    info = acme.put_stream("small.bin", io.BytesIO(data))

    assert _rows(db_path)[info.record_id][0] is None
    assert _keys(store) == set()
    assert acme.open_stream("small.bin").read() == data


def test_replace_and_delete_remove_the_blobs(acme: kc.Scope, store: BlobStore) -> None:
    acme.put("a.bin", _payload(SMALL + 1))
    first = _keys(store)
    acme.put("a.bin", _payload(SMALL + 2, seed=1))  # replaced: new record id, new object
    second = _keys(store)
    assert len(first) == len(second) == 1 and first != second
    acme.put("a.bin", b"now small")  # replaced by an inline record
    assert _keys(store) == set()

    acme.put_stream("s.bin", io.BytesIO(_payload(2 * SEGMENT_LEN)))
    acme.put_stream("s.bin", io.BytesIO(_payload(2 * SEGMENT_LEN, seed=2)))
    assert len(_keys(store)) == 1
    acme.delete("s.bin")
    acme.put_many([("m.bin", _payload(SMALL + 1)), ("m.bin", _payload(SMALL + 3, seed=3))])
    assert len(_keys(store)) == 1, "only the record that was stored has an object"
    acme.delete("m.bin")
    assert _keys(store) == set()
    assert acme.get("a.bin") == b"now small"


def test_a_failed_transaction_removes_the_blobs_it_wrote(
    acme: kc.Scope, store: BlobStore, vault: kc.Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme.put("keep.bin", _payload(SMALL + 1))
    before = _keys(store)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(vault._records, "replace", broken)
    with pytest.raises(kc.StorageError):
        acme.put("new.bin", _payload(SMALL + 5))
    with pytest.raises(kc.StorageError):
        acme.put("keep.bin", _payload(SMALL + 6))  # a failed replace keeps the old object
    monkeypatch.undo()

    assert _keys(store) == before
    assert acme.get("keep.bin") == _payload(SMALL + 1)


def test_tampered_blob_fails_authentication(
    acme: kc.Scope, store: BlobStore, vault: kc.Vault
) -> None:
    acme.put("doc.bin", _payload(SMALL + 100))
    acme.put_stream("stream.bin", io.BytesIO(_payload(2 * SEGMENT_LEN + 5)))
    doc, stream = (acme.list()[i].record_id for i in (0, 1))
    doc_key = blob_key(bytes.fromhex(acme.id), bytes.fromhex(doc))
    stream_key = blob_key(bytes.fromhex(acme.id), bytes.fromhex(stream))

    _tamper(store, doc_key, 1000)
    with pytest.raises(kc.IntegrityError):
        acme.get("doc.bin")
    _tamper(store, stream_key, SEGMENT_LEN + TAG_LEN + 7)  # inside the second segment
    reader = acme.open_stream("stream.bin")
    assert len(reader.read(SEGMENT_LEN)) == SEGMENT_LEN  # the first segment is intact
    with pytest.raises(kc.IntegrityError):
        reader.read(10)
    # Objects swapped between records fail too: the header binds the record id.
    other = store.get(stream_key)
    store.put(doc_key, other[: SMALL + 100 + TAG_LEN])
    with pytest.raises(kc.IntegrityError):
        acme.get("doc.bin")
    failures = [e for e in vault.audit.tail(10) if e.action == "integrity.failure"]
    assert failures


def test_missing_blob_names_the_record_not_the_name(acme: kc.Scope, store: BlobStore) -> None:
    info = acme.put("customer-secret-name.bin", _payload(SMALL + 1))
    store.delete(blob_key(bytes.fromhex(acme.id), bytes.fromhex(info.record_id)))

    with pytest.raises(BlobMissingError) as caught:
        acme.get("customer-secret-name.bin")
    assert isinstance(caught.value, kc.IntegrityError | kc.StorageError)
    assert info.record_id in str(caught.value)
    assert "customer-secret" not in str(caught.value)


def test_a_local_blob_streams_failures_name_the_record(
    open_vault: Callable[..., kc.Vault], local_store: LocalBlobStore
) -> None:
    """A stream read from a local blob store reads the file in Rust: a missing file, one cut
    short and one that cannot be read each raise keycustody's own error, never an OSError
    or a short read, and never with the record's name."""
    acme = open_vault(local_store).scope("acme", create=True)
    data = _payload(2 * SEGMENT_LEN + 5)
    info = acme.put_stream("customer-secret.bin", io.BytesIO(data))
    path = local_store.path_of(blob_key(bytes.fromhex(acme.id), bytes.fromhex(info.record_id)))
    sealed = path.read_bytes()

    reader = acme.open_stream("customer-secret.bin")
    path.write_bytes(sealed[:-3])
    assert reader.read(SEGMENT_LEN) == data[:SEGMENT_LEN]
    with pytest.raises(kc.IntegrityError, match="shorter than its size"):
        reader.read()
    path.unlink()
    path.mkdir()
    with pytest.raises(kc.StorageError, match="cannot read blob") as unreadable:
        acme.open_stream("customer-secret.bin").read()
    path.rmdir()
    with pytest.raises(BlobMissingError) as missing:
        acme.open_stream("customer-secret.bin").read()
    for caught in (unreadable, missing):
        assert "customer-secret" not in str(caught.value)
    assert info.record_id in str(missing.value)


def test_a_blob_stream_reader_refuses_once_its_vault_is_closed(
    vault: kc.Vault, acme: kc.Scope
) -> None:
    """A reader over a blob store reads the store, not the database, so the engine's own
    refusal does not reach it: it checks the vault before each read, like every other call
    of a closed vault."""
    data = _payload(3 * SEGMENT_LEN + 5)
    acme.put_stream("video.bin", io.BytesIO(data))
    reader = acme.open_stream("video.bin")
    assert reader.read(SEGMENT_LEN) == data[:SEGMENT_LEN]
    vault.close()
    with pytest.raises(kc.InvalidInputError, match="this vault is closed"):
        reader.read()
    reader.close()


def test_blob_records_need_the_store_configured(
    open_vault: Callable[..., kc.Vault], local_store: LocalBlobStore
) -> None:
    info = open_vault(local_store).scope("acme", create=True).put("a.bin", _payload(SMALL + 1))
    plain = open_vault(None)
    assert plain.blob_store is None

    with pytest.raises(kc.ConfigError, match=f"record {info.record_id} .*blob_store="):
        plain.scope("acme").get("a.bin")
    plain.scope("acme").put("b.bin", _payload(SMALL + 1))  # no store: inline, as before
    assert len(_keys(local_store)) == 1


def test_shred_then_purge_removes_the_tenants_blobs(
    open_vault: Callable[..., kc.Vault], store: BlobStore, kms: kc.LocalKMS
) -> None:
    vault = open_vault(store)
    acme = vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
    alice = vault.scope("acme/subjects/alice", create=True)
    globex = vault.scope("globex", kek=kms.create_key("globex-kek"), create=True)
    for scope in (acme, alice, globex):
        scope.put("big.bin", _payload(SMALL + 1))
        scope.put_stream("s.bin", io.BytesIO(_payload(2 * SEGMENT_LEN)))
    assert len(_keys(store)) == 6

    vault.shred("acme", reason="contract ended #42")
    with pytest.raises(kc.ShreddedError):
        acme.get("big.bin")
    assert len(_keys(store)) == 6, "phase 1 destroys keys, not ciphertext"
    assert vault.purge(orphan_grace=timedelta(0)) == 4

    assert {k.split("/")[0] for k in _keys(store)} == {globex.id}
    assert globex.get("big.bin") == _payload(SMALL + 1)


def test_purge_sweeps_orphans_after_the_grace_period(
    acme: kc.Scope, store: BlobStore, vault: kc.Vault
) -> None:
    acme.put("live.bin", _payload(SMALL + 1))
    live = _keys(store)
    orphan = blob_key(bytes.fromhex(acme.id), os.urandom(16))  # a crash before the commit
    store.put(orphan, b"ciphertext of a record that never committed")
    foreign = [blob_key(os.urandom(16), os.urandom(16)), f"{acme.id}/not-a-record-id"]
    for key in foreign:  # another vault's scope sharing the store; not our naming
        store.put(key, b"not ours")

    vault.purge()  # default grace: a write in flight could own it
    assert orphan in _keys(store)
    sweep = vault.sweep_blobs(grace=timedelta(0))

    assert (sweep.orphans_removed, sweep.recent_kept) == (1, 0)
    assert _keys(store) == live | set(foreign)
    assert acme.get("live.bin") == _payload(SMALL + 1)
    assert vault.audit.tail(1)[0].action == "blobs.sweep"


def test_derived_and_reencrypted_records_move_their_blobs(
    acme: kc.Scope, store: BlobStore, vault: kc.Vault
) -> None:
    source, summary = _payload(SMALL + 1), _payload(SMALL + 2, seed=2)
    stream = _payload(2 * SEGMENT_LEN + 3, seed=3)
    acme.put("src.py", source)
    acme.put("summary.md", summary, derived_from="src.py")
    acme.put_stream("big.log", io.BytesIO(stream))
    before = _keys(store)
    assert len(before) == 3

    acme.mark_compromised(reason="leaked laptop #7")
    acme.reencrypt()

    after = _keys(store)
    assert len(after) == 3 and not after & before, "new record ids, old objects removed"
    assert acme.get_many(["src.py", "summary.md"]) == {"src.py": source, "summary.md": summary}
    assert acme.get("big.log") == stream
    acme.delete("src.py")  # the derivative is unreadable now; purge removes its row and blob
    assert vault.purge(orphan_grace=timedelta(0)) == 1
    assert len(_keys(store)) == 1


# -- kill -9 --------------------------------------------------------------------------------

WRITER = """
import os, sys, keycustody as kc
from keycustody.storage.blobs import LocalBlobStore
db, kms_dir, blobs, mode = sys.argv[1:5]
vault = kc.Vault.open(db, kms=kc.LocalKMS(kms_dir), blob_store=LocalBlobStore(blobs),
                      blob_threshold=65536)
scope = vault.scope("acme")
if mode == "stall":
    # Die deterministically between writing the objects and committing their rows.
    replace = vault._records.replace
    def stalled(*args, **kwargs):
        print("IN-TRANSACTION", flush=True)
        sys.stdin.readline()
    vault._records.replace = stalled
i = 0
while True:
    name = f"rec-{os.getpid()}-{i}"
    size = 65536 + 1 + (i % 7) * 300_000
    data = (name.encode() * (size // len(name) + 1))[:size]
    if i % 3 == 2:
        import io
        scope.put_stream(name, io.BytesIO(data))
    else:
        scope.put_many([(name, data), (name + "-b", data[::-1])])
    print("ACK", name, flush=True)
    i += 1
"""


def _expected(name: str) -> dict[str, bytes]:
    i = int(name.rsplit("-", 1)[1])
    size = 65536 + 1 + (i % 7) * 300_000
    data = (name.encode() * (size // len(name) + 1))[:size]
    return {name: data} if i % 3 == 2 else {name: data, name + "-b": data[::-1]}


@pytest.mark.slow
def test_kill_9_while_writing_big_records(
    db_url: str, kms: kc.LocalKMS, local_store: LocalBlobStore
) -> None:
    with kc.Vault.open(db_url, kms=kms) as vault:
        vault.scope("acme", create=True)
    acknowledged: dict[str, bytes] = {}
    rng = random.Random(9)
    for mode in ["stall"] + ["run"] * 6:
        with subprocess_writer(db_url, kms, local_store, mode) as (child, lines):
            if mode == "stall":
                assert next(lines) == "IN-TRANSACTION"
            else:
                # Once the child is writing (its first acknowledgement: a loaded machine may
                # take seconds to start Python), kill it at a random moment.
                first = next(lines)
                assert first.startswith("ACK "), first
                acknowledged.update(_expected(first.split()[1]))
                time.sleep(rng.uniform(0.0, 0.8))
            child.kill()  # SIGKILL
            child.wait(timeout=60)
            for line in lines:
                if line.startswith("ACK "):
                    acknowledged.update(_expected(line.split()[1]))

    assert acknowledged, "the writers acknowledged nothing before they were killed"
    with kc.Vault.open(db_url, kms=kms, blob_store=local_store) as vault:
        sweep = vault.sweep_blobs(grace=timedelta(0))
        assert sweep.orphans_removed >= 1, "the stalled writer left its objects"
        scope = vault.scope("acme")
        assert scope.get_many(list(acknowledged)) == acknowledged
        referenced = {k for k, _ in _rows_of(db_url).values() if k is not None}
        assert _keys(local_store) == referenced
        assert not any(p.name.endswith(".tmp") for p in local_store.root.rglob("*"))


def _rows_of(db_url: str) -> dict[str, tuple[str | None, int]]:
    """As :func:`_rows`, on either backend."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT record_id, blob_key, length(body) FROM records"))
            return {bytes(rid).hex(): (key, n) for rid, key, n in rows}
    finally:
        engine.dispose()


@contextlib.contextmanager
def subprocess_writer(
    db_url: str, kms: kc.LocalKMS, store: LocalBlobStore, mode: str
) -> Iterator[tuple[subprocess.Popen[str], Iterator[str]]]:
    """The writer script in a child process, and an iterator over its output lines."""
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, db_url, str(kms.path), str(store.root), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        try:
            yield child, (line.strip() for line in child.stdout)
        finally:
            if child.poll() is None:
                child.kill()


def test_rewrap_leaves_the_blobs_alone(acme: kc.Scope, store: BlobStore) -> None:
    data = _payload(SMALL + 1)
    acme.put("a.bin", data)
    acme.put_stream("s.bin", io.BytesIO(_payload(2 * SEGMENT_LEN, seed=5)))
    before = {k: store.get(k) for k in _keys(store)}

    acme.rotate_key()
    acme.rewrap()  # only the wrapped DEKs in the headers change

    assert {k: store.get(k) for k in _keys(store)} == before
    assert acme.get("a.bin") == data
    assert acme.get("s.bin") == _payload(2 * SEGMENT_LEN, seed=5)
