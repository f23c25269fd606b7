"""The forensic scan's byte search (keycustody.keys.filescan), and the shred's child process
that runs it."""

from __future__ import annotations

import hashlib
import os
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keycustody.keys import filescan, shredding

NEEDLE = bytes(range(100, 148))  # 48 bytes, like a wrapped key


def test_a_needle_split_across_chunks_is_found(tmp_path: Path) -> None:
    path = tmp_path / "db"
    data = os.urandom(1000) + NEEDLE + os.urandom(1000)
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    for chunk in (7, 64, 1010, 1 << 20):  # the needle straddles a boundary in all but the last
        result = filescan.scan([str(path)], [NEEDLE], chunk)
        assert result["hits"] == 3, chunk  # the needle and both its 16-byte halves
        assert result["files"] == [{"file": "db", "bytes": len(data), "sha256": digest, "hits": 3}]


def test_a_half_is_found_alone_and_missing_files_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "wal").write_bytes(b"x" * 50 + NEEDLE[-16:] + b"y" * 50)
    (tmp_path / "clean").write_bytes(os.urandom(4096))
    files = [str(tmp_path / n) for n in ("wal", "gone", "clean")]
    result = filescan.scan(files, [NEEDLE], 32)
    assert [(f["file"], f["hits"]) for f in result["files"]] == [("wal", 1), ("clean", 0)]
    assert result["hits"] == 1


def test_the_shreds_scan_reports_what_it_finds(tmp_path: Path) -> None:
    """Through the child process; that the vault's own process keeps its locks is
    test_shredding's `test_the_forensic_scan_keeps_the_sqlite_locks_of_this_process`."""
    (tmp_path / "ctx.db").write_bytes(b"page" + NEEDLE)
    result = shredding._scan([tmp_path / "ctx.db", tmp_path / "ctx.db-wal"], [NEEDLE])
    assert result["performed"] is True
    assert (result["values_searched"], result["hits"]) == (1, 3)
    assert [f["file"] for f in result["files"]] == ["ctx.db"]


def test_a_scan_that_cannot_run_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The certificate then records the scan as not performed, with the reason, instead of a
    vacuous 0 hits; the shred itself has committed."""
    failed = shredding._scan([tmp_path], [NEEDLE])  # a directory: the child cannot read it
    assert failed["performed"] is False
    assert "exit code 1" in failed["why"] and "IsADirectoryError" in failed["why"]
    assert (failed["values_searched"], failed["files"], failed["hits"]) == (0, [], 0)
    assert NEEDLE.hex() not in failed["why"]
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    missing = shredding._scan([tmp_path / "ctx.db"], [NEEDLE])
    assert missing["performed"] is False
    assert "could not start" in missing["why"]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 40),
    chunk=st.sampled_from([7, 64, 1000, 1 << 20]),
    lengths=st.lists(st.integers(16, 80), min_size=1, max_size=4),
)
def test_the_prefilter_finds_what_the_plain_search_finds(
    tmp_path_factory: pytest.TempPathFactory, seed: int, count: int, chunk: int, lengths: list[int]
) -> None:
    """Many needles (a shred of thousands of scopes) go through the word prefilter: the same
    hits as searching the whole window for each, with needles whole, halved, straddling
    chunk boundaries, at every alignment, and absent."""
    rng = random.Random(seed)
    needles = [rng.randbytes(lengths[i % len(lengths)]) for i in range(count)]
    data = bytearray(rng.randbytes(rng.randrange(0, 3000)))
    for needle in needles:
        if rng.random() < 0.6:
            piece = rng.choice([needle, needle[:16], needle[-16:], needle[1:17]])
            at = rng.randrange(0, len(data) + 1)
            data[at:at] = piece
    path = tmp_path_factory.mktemp("scan") / "db"
    path.write_bytes(data)
    plain = filescan.scan([str(path)], needles, chunk)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(filescan, "PREFILTER_PARTS", 0)
        assert filescan._words({n for n in needles}) is not None
        assert filescan.scan([str(path)], needles, chunk) == plain
