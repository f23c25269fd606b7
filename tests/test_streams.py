"""Segmented stream records (suite 2): put_stream / open_stream on a real vault (SQLite and
PostgreSQL)."""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keycustody as kc
from dbadmin import RawDB, raw_db
from keycustody import _core
from keycustody.payloads import _FileSegments, blob_key
from keycustody.storage.blobs import LocalBlobStore
from keycustody.streams import FETCH_AHEAD, FetchedSegments, StreamReader

SEG = _core.SEGMENT_LEN


class PatternFile(io.RawIOBase):
    """A deterministic pseudo-random file of ``size`` bytes, generated on the fly (constant
    memory), returning short reads on purpose."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        # Content depends only on the position (4 KiB blocks), never on how it is read.
        n = min(len(b), self.size - self.pos, 300_001)
        start, block_size = self.pos, 4096
        first = start // block_size
        last = (start + n - 1) // block_size if n else first
        blocks = b"".join(
            hashlib.shake_256(i.to_bytes(8, "big")).digest(block_size)
            for i in range(first, last + 1)
        )
        offset = start - first * block_size
        b[:n] = blocks[offset : offset + n]
        self.pos += n
        return n


def content(size: int) -> bytes:
    return PatternFile(size).readall() if size else b""


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG + 12345])
def test_stream_round_trip(acme: kc.Scope, size: int) -> None:
    info = acme.put_stream("big.bin", PatternFile(size))
    assert (info.size, info.name) == (size, "big.bin")
    expected = content(size)
    assert acme.get("big.bin") == expected
    with acme.open_stream("big.bin") as reader:
        assert reader.read() == expected
    assert [i.size for i in acme.list()] == [size]


def test_in_memory_vault_reads_streams(kms: kc.LocalKMS) -> None:
    """An in-memory database has one connection. get and get_many read a stream's segments
    in their own transaction on it (they used to begin a second one there, and failed); a
    reader reads after open_stream's transaction has ended."""
    size = 2 * SEG + 9
    with kc.Vault.open("sqlite://", kms=kms) as vault:
        acme = vault.scope("acme", kek=kms.create_key("acme"), create=True)
        acme.put_stream("s.bin", PatternFile(size))
        acme.put("a.txt", b"alpha")
        expected = content(size)
        assert acme.get("s.bin") == expected
        assert acme.get_many(["a.txt", "s.bin"]) == {"a.txt": b"alpha", "s.bin": expected}
        with acme.open_stream("s.bin") as reader:
            assert reader.read() == expected


def test_random_access(acme: kc.Scope) -> None:
    size = 3 * SEG + 777
    acme.put_stream("f", PatternFile(size))
    expected = content(size)
    with acme.open_stream("f") as reader:
        for offset, length in [(0, 10), (SEG - 5, 10), (2 * SEG + 3, SEG), (size - 3, 100)]:
            reader.seek(offset)
            assert reader.read(length) == expected[offset : offset + length][:length]
        reader.seek(-10, io.SEEK_END)
        assert reader.read() == expected[-10:]


def test_close_wipes_the_window(acme: kc.Scope) -> None:
    """The reader's window of opened plaintext, and the buffer read() opens into, are zeroed
    when it closes (and read()'s when a larger one replaces it), not left to the allocator
    (a reference kept to them here stands in for memory read after it is freed)."""
    acme.put_stream("f", PatternFile(4 * SEG))
    expected = content(4 * SEG)
    reader = acme.open_stream("f")
    reader.seek(SEG // 2)  # not at a segment's start: read() opens into its own buffer
    assert reader.read(SEG) == expected[SEG // 2 : SEG + SEG // 2]
    outgrown = reader._scratch  # white box: freed memory
    assert outgrown is not None and any(outgrown)
    assert reader.read(2 * SEG) == expected[SEG + SEG // 2 : 3 * SEG + SEG // 2]  # larger
    window, scratch = reader._buffer, reader._scratch
    assert not any(outgrown)  # replaced by a larger buffer: zeroed first
    assert window is not None and any(window)
    assert scratch is not None and len(scratch) == 2 * SEG and any(scratch)
    reader.close()
    assert not any(window) and not any(scratch)


def test_sequential_reads_cross_read_ahead_windows(acme: kc.Scope, raw: RawDB) -> None:
    """Sequential reads open windows of 1, 2, then 4 segments (or whole segments straight
    into the caller's buffer); bytes come out right across their edges, and an altered
    segment deep in a window fails the read that reaches it."""
    size = 16 * SEG + 5
    rid = bytes.fromhex(acme.put_stream("f", PatternFile(size)).record_id)
    expected = content(size)
    with acme.open_stream("f") as reader:
        chunks = iter(lambda: reader.read(SEG // 2 + 3), b"")
        assert b"".join(chunks) == expected
    row = raw.one("SELECT body FROM segments WHERE record_id = ? AND seq = 13", (rid,))
    assert row is not None
    body = row[0]
    raw.execute(
        "UPDATE segments SET body = ? WHERE record_id = ? AND seq = 13",
        (body[:100] + bytes([body[100] ^ 1]) + body[101:], rid),
    )
    got = bytearray()
    with acme.open_stream("f") as reader, pytest.raises(kc.IntegrityError):
        while chunk := reader.read(SEG // 2 + 3):  # windows 0, 1-2, 3-6, 7-10, then 11-14
            got += chunk
    assert got == expected[: len(got)] and 10 * SEG < len(got) <= 11 * SEG
    with acme.open_stream("f") as reader:
        assert reader.read(12 * SEG) == expected[: 12 * SEG]  # straight into the buffer
        with pytest.raises(kc.IntegrityError):
            reader.read(2 * SEG)  # segments 12-13


class SealedSegments:
    """The sealed segments of a real stream of ``count`` full segments and a short one, and a
    ``fetch(first, n)`` over them that logs its calls and can be made to fail."""

    def __init__(self, count: int) -> None:
        self.size = count * SEG + 10
        self.plain = content(self.size)
        key = _core.KeyHandle.generate()
        header, _, sealer = _core.begin_stream(key, bytes(16), 1, b"s")
        ends = range(0, self.size, SEG)
        self.sealed = [
            sealer.seal_segment(self.plain[i : i + SEG], i + SEG >= self.size) for i in ends
        ]
        self.opener = _core.open_stream(bytes(16), {1: key}, b"s", header)
        self.calls: list[tuple[int, int]] = []
        self.fail_from: int | None = None
        self.cut_in: int | None = None  # a segment whose fetch ends 100 bytes short

    def fetch(self, first: int, n: int) -> bytes:
        self.calls.append((first, n))
        if self.fail_from is not None and first + n > self.fail_from:
            raise kc.StorageError("the database went away")
        joined = b"".join(self.sealed[first : first + n])
        if self.cut_in is not None and first <= self.cut_in < first + n:
            return joined[: (self.cut_in - first + 1) * len(self.sealed[0]) - 100]
        return joined

    def reader(self, prefetch: Executor | None) -> StreamReader:
        source = FetchedSegments(self.fetch, self.size, prefetch)
        return StreamReader(self.opener, self.size, source)

    def in_blob_store(self, root: Path) -> Callable[[], StreamReader]:
        """Writes the segments as a local blob store's object under ``root``; returns a
        function that opens a reader of it (Rust reads the file)."""
        store = LocalBlobStore(root)
        record_id = bytes(range(16))
        key = blob_key(bytes(16), record_id)
        store.put(key, self.sealed)
        return lambda: StreamReader(
            self.opener, self.size, _FileSegments(store, record_id, key, self.size)
        )


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.mark.parametrize("chunk", [SEG, SEG // 2 + 3, 3 * SEG])
def test_sequential_reads_fetch_the_next_window_ahead(
    chunk: int, executor: ThreadPoolExecutor
) -> None:
    """Each read starts fetching the window after it on a background thread; a sequential
    read fetches every segment once, whatever its read size (windows that grow take the
    segments fetched ahead, then fetch the rest)."""
    segments = SealedSegments(9)
    with segments.reader(executor) as reader:
        got = b"".join(iter(lambda: reader.read(chunk), b""))
    assert got == segments.plain
    fetched = sorted(seq for first, n in segments.calls for seq in range(first, first + n))
    assert fetched == list(range(10))
    assert len(segments.calls) > 1


def test_sequential_reads_fetch_blocks_and_hold_what_they_have_not_read(
    executor: ThreadPoolExecutor,
) -> None:
    """Once reads are sequential, FETCH_AHEAD segments are fetched at once, whatever each
    read opens; those not read yet are held for the next reads and dropped by a seek, and
    a fetch that came back short fails the read of the segment it cut."""
    segments = SealedSegments(12)  # thirteen segments, the last one short
    plain = segments.plain
    with segments.reader(executor) as reader:
        got = b"".join(iter(lambda: reader.read(SEG), b""))
    assert got == plain
    assert FETCH_AHEAD == 8  # 0 alone, 1 fetched ahead, then blocks of eight
    assert sorted(segments.calls) == [(0, 1), (1, 1), (2, 8), (10, 3)]

    segments.calls.clear()
    with segments.reader(executor) as reader:
        assert reader.read(3 * SEG) == plain[: 3 * SEG]  # 0-2, then 3-5 fetched ahead
        assert reader.read(SEG) == plain[3 * SEG : 4 * SEG]  # 4-5 held, 6-12 fetched ahead
        reader.seek(5 * SEG)
        assert reader.read(SEG) == plain[5 * SEG : 6 * SEG]  # held: no fetch
        assert segments.calls[:2] == [(0, 3), (3, 3)]
        assert not [first for first, _ in segments.calls if first in (4, 5)]
        reader.seek(SEG)
        assert reader.read(SEG) == plain[SEG : 2 * SEG]  # fetched again
        assert (1, 1) in segments.calls

    segments.calls.clear()
    segments.cut_in = 4
    with segments.reader(executor) as reader:
        assert reader.read(3 * SEG) == plain[: 3 * SEG]
        assert reader.read(SEG) == plain[3 * SEG : 4 * SEG]  # 4, cut short, is held
        with pytest.raises(kc.IntegrityError, match="does not match"):
            reader.read(SEG)


@functools.cache
def _ten_segments() -> SealedSegments:
    return SealedSegments(9)  # nine full segments and a short one, shared: building costs


@pytest.fixture(scope="module")
def ten_segments_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], StreamReader]:
    return _ten_segments().in_blob_store(tmp_path_factory.mktemp("blobs"))


_READ_SIZES = [-1, 0, 1, 1000, SEG - 1, SEG, SEG + 1, 2 * SEG, 5 * SEG]
_SEEKS = ["none", "none", "none", "forward", "anywhere"]  # mostly sequential reads


@settings(max_examples=100)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(_SEEKS), st.integers(0, 10 * SEG + 20), st.sampled_from(_READ_SIZES)
        ),
        min_size=1,
        max_size=16,
    ),
    source=st.sampled_from(["fetched", "fetched-ahead", "file"]),
)
def test_any_seeks_and_reads_return_the_plaintext_there(
    ten_segments_file: Callable[[], StreamReader], ops: list[tuple[str, int, int]], source: str
) -> None:
    """Property: whatever the seeks and read sizes, fetching ahead or not, or reading a
    local blob store's file in Rust, each read returns the plaintext at its position:
    through segments held (a seek forward lands in them), segments read ahead from the
    file, windows, straight opens into the caller's buffer, and read()'s reused buffer
    (reads of 5 segments take a fresh one)."""
    segments = _ten_segments()
    plain = segments.plain
    with ThreadPoolExecutor(1) as pool:
        if source == "file":
            reader = ten_segments_file()
        else:
            reader = segments.reader(pool if source == "fetched-ahead" else None)
        with reader:
            pos = 0
            for seek, offset, size in ops:
                if seek == "forward":  # over 1 to 3 segments
                    pos = reader.seek((offset % 3 + 1) * SEG + offset % 7, io.SEEK_CUR)
                elif seek == "anywhere":
                    pos = reader.seek(offset)
                got = reader.read(size)
                assert got == (plain[pos:] if size < 0 else plain[pos : pos + size])
                pos += len(got)


class _LoggedOpener:
    """Passes read_segments_into calls to a real opener, logging ``(first, ahead)``."""

    def __init__(self, opener: _core.StreamOpener) -> None:
        self.opener = opener
        self.calls: list[tuple[int, int]] = []

    def read_segments_into(self, path: Any, first: int, last: bool, out: Any, ahead: int) -> None:
        self.calls.append((first, ahead))
        self.opener.read_segments_into(path, first, last, out, ahead)


def test_sequential_reads_of_a_blob_file_read_the_next_segment_ahead(tmp_path: Path) -> None:
    """Reading a local blob store's file one segment at a time, each read also reads the
    next segment (its sealed length, the short last one's too) for the next read; reads of
    several segments, and the first read after a seek, read nothing ahead."""
    segments = SealedSegments(4)  # four full segments and a short one
    reader = segments.in_blob_store(tmp_path)()
    logged = _LoggedOpener(segments.opener)
    reader._opener = logged  # type: ignore[assignment]
    sealed = SEG + _core.TAG_LEN
    assert b"".join(iter(lambda: reader.read(SEG), b"")) == segments.plain
    assert logged.calls == [(0, sealed), (1, sealed), (2, sealed), (3, 10 + _core.TAG_LEN), (4, 0)]
    logged.calls.clear()
    reader.seek(2 * SEG)
    assert reader.read(SEG) == segments.plain[2 * SEG : 3 * SEG]
    assert reader.read(SEG) == segments.plain[3 * SEG : 4 * SEG]
    reader.seek(0)
    assert reader.read(2 * SEG) == segments.plain[: 2 * SEG]
    assert reader.read(SEG) == segments.plain[2 * SEG : 3 * SEG]
    assert logged.calls == [(2, 0), (3, 10 + _core.TAG_LEN), (0, 0), (2, sealed)]


def test_fetched_ahead_windows_are_dropped_or_fail_where_needed(
    executor: ThreadPoolExecutor,
) -> None:
    """A seek drops the window fetched ahead; a failure while fetching ahead is raised by the
    read that needs those segments, not before; without prefetch, only what is read is
    fetched (as once the executor is shut down)."""
    segments = SealedSegments(6)  # seven segments, the last one short
    plain = segments.plain
    reader = segments.reader(executor)
    assert reader.read(2 * SEG) == plain[: 2 * SEG]  # fetches 0-1, then 2-3 ahead
    assert reader.read(2 * SEG) == plain[2 * SEG : 4 * SEG]  # takes 2-3, fetches 4-5 ahead
    assert segments.calls.count((2, 2)) == 1
    reader.seek(0)
    assert reader.read(2 * SEG) == plain[: 2 * SEG]  # drops 4-5
    reader.seek(4 * SEG)
    segments.fail_from = 6
    assert reader.read(2 * SEG) == plain[4 * SEG : 6 * SEG]  # segment 6 fails ahead
    with pytest.raises(kc.StorageError, match="went away"):
        reader.read()  # the final, short segment: its fetch failed ahead, raised here
    reader.close()
    segments.fail_from = None
    segments.calls.clear()
    executor.shutdown()  # as when the vault closes: nothing more is fetched ahead
    with segments.reader(executor) as reader:
        assert reader.read() == segments.plain
    assert segments.calls == [(0, 4), (4, 2), (6, 1)]  # only the windows read


def test_stream_replaces_and_whole_records_refuse_open_stream(acme: kc.Scope) -> None:
    acme.put_stream("f", io.BytesIO(b"first" * 1000))
    acme.put("f", b"now whole")
    assert acme.get("f") == b"now whole"
    with pytest.raises(kc.InvalidInputError, match="get"):
        acme.open_stream("f")
    acme.put_stream("f", io.BytesIO(b"stream again"))
    assert acme.get("f") == b"stream again"


def test_segments_are_deleted_with_the_record(acme: kc.Scope, raw: RawDB) -> None:
    acme.put_stream("f", PatternFile(2 * SEG + 1))
    assert raw.one("SELECT count(*) FROM segments") == (3,)
    acme.put_stream("f", PatternFile(10))  # replaced: old segments go
    assert raw.one("SELECT count(*) FROM segments") == (1,)
    acme.delete("f")
    assert raw.one("SELECT count(*) FROM segments") == (0,)


def test_an_emptied_stream_is_detected(acme: kc.Scope, raw: RawDB) -> None:
    """A stream cut down to size 0 and one 16-byte segment (a forged empty stream) fails."""
    rid = bytes.fromhex(acme.put_stream("f", PatternFile(SEG + 1)).record_id)
    raw.execute("DELETE FROM segments WHERE record_id = ? AND seq = 1", (rid,))
    raw.execute("UPDATE segments SET body = ? WHERE record_id = ?", (bytes(16), rid))
    raw.execute("UPDATE records SET size = 0 WHERE record_id = ?", (rid,))
    with pytest.raises(kc.IntegrityError):
        acme.get("f")
    with acme.open_stream("f") as reader, pytest.raises(kc.IntegrityError):
        reader.read()


@pytest.mark.parametrize(
    "attack",
    ["drop-last", "swap", "flip", "size-smaller", "size-larger", "size-zero", "move"],
)
def test_stream_tampering_is_detected(acme: kc.Scope, db_url: str, attack: str) -> None:
    size = 2 * SEG + 100
    rid = bytes.fromhex(acme.put_stream("f", PatternFile(size)).record_id)
    other = bytes.fromhex(acme.put_stream("g", PatternFile(size)).record_id)
    with raw_db(db_url, foreign_keys=True) as conn:
        _tamper(conn, attack, size, rid, other)
    with pytest.raises(kc.IntegrityError):
        acme.get("f")
    assert acme.get("g") == content(size)


def _tamper(conn: RawDB, attack: str, size: int, rid: bytes, other: bytes) -> None:
    if attack == "drop-last":
        conn.execute("DELETE FROM segments WHERE record_id = ? AND seq = 2", (rid,))
    elif attack == "swap":
        conn.execute("UPDATE segments SET seq = 9 WHERE record_id = ? AND seq = 0", (rid,))
        conn.execute("UPDATE segments SET seq = 0 WHERE record_id = ? AND seq = 1", (rid,))
        conn.execute("UPDATE segments SET seq = 1 WHERE record_id = ? AND seq = 9", (rid,))
    elif attack == "flip":
        (body,) = conn.execute(
            "SELECT body FROM segments WHERE record_id = ? AND seq = 1", (rid,)
        ).fetchone()
        bad = bytearray(body)
        bad[5000] ^= 1
        conn.execute(
            "UPDATE segments SET body = ? WHERE record_id = ? AND seq = 1", (bytes(bad), rid)
        )
    elif attack.startswith("size"):
        new = {"size-smaller": size - 1, "size-larger": size + SEG, "size-zero": 0}[attack]
        conn.execute("UPDATE records SET size = ? WHERE record_id = ?", (new, rid))
    elif attack == "move":
        conn.execute("DELETE FROM segments WHERE record_id = ? AND seq = 1", (rid,))
        conn.execute(
            "INSERT INTO segments SELECT ?, seq, body FROM segments "
            "WHERE record_id = ? AND seq = 1",
            (rid, other),
        )


def test_put_stream_rejects_text_files(acme: kc.Scope) -> None:
    with pytest.raises(kc.InvalidInputError, match="binary"):
        acme.put_stream("t", io.StringIO("text"))  # type: ignore[arg-type]
    with pytest.raises(kc.InvalidInputError):
        acme.put_stream("t", b"not a file")  # type: ignore[arg-type]
    with pytest.raises(kc.NotFoundError):
        acme.open_stream("t")


def test_failed_stream_writes_nothing(acme: kc.Scope, raw: RawDB) -> None:
    acme.put("f", b"previous")

    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            raise OSError("disk on fire")

    with pytest.raises(OSError, match="fire"):
        acme.put_stream("f", Broken())
    assert acme.get("f") == b"previous"
    assert raw.one("SELECT count(*) FROM segments") == (0,)


@pytest.mark.slow
def test_large_stream_in_constant_memory(acme: kc.Scope) -> None:
    """64 MiB through put_stream and a chunked read; the process's peak RSS must not grow by
    anything near the payload size."""
    import resource

    size = 64 * SEG + 5
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    acme.put_stream("huge", PatternFile(size))
    digest = hashlib.sha256()
    with acme.open_stream("huge") as reader:
        while chunk := reader.read(SEG):
            digest.update(chunk)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 32, f"peak RSS grew {grown_mib:.0f} MiB"
    assert digest.hexdigest() == hashlib.sha256(content(size)).hexdigest()
