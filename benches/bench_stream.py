"""Streams: put_stream / open_stream of a 64 MiB payload against raw AES-256-GCM streaming.

Groups ``put_stream-64MiB`` and ``open_stream-64MiB``: ``vault`` stores the payload with
``Scope.put_stream`` (1 MiB segments, one transaction, file-backed SQLite) and reads it back
through ``Scope.open_stream`` into one reused buffer; ``pyca-raw-aesgcm`` encrypts / decrypts
the same bytes in 1 MiB chunks under one key, dropping each output (the single-thread hardware
limit). ``keycustody bench`` runs the same case at 1 GiB in a child process for its peak RSS.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any, Protocol

import pytest

from benches.harness import BenchRunner
from keycustody.bench import PYCA_RAW, VAULT, BenchKeys, MiB, PatternReader, SealingScope

SIZE = 64 * MiB
CASES = (VAULT, PYCA_RAW)


class StreamScope(SealingScope, Protocol):
    """The stream half of ``keycustody.Scope``."""

    def put_stream(self, name: str, fileobj: Any, /) -> object: ...

    def open_stream(self, name: str, /) -> Any: ...


def _read_all(reader: Any) -> int:
    buffer = bytearray(MiB)
    total = 0
    with reader:
        while n := reader.readinto(buffer):
            total += n
    return total


def _raw(keys: BenchKeys, pool: bytes) -> tuple[Callable[[], int], Callable[[], int]]:
    aead = keys.raw
    chunks = [pool[i * MiB : (i + 1) * MiB] for i in range(4)]
    nonces = [os.urandom(12) for _ in chunks]
    sealed = [aead.encrypt(n, c, None) for n, c in zip(nonces, chunks, strict=True)]
    count = SIZE // MiB

    def seal() -> int:
        for i in range(count):
            aead.encrypt(os.urandom(12), chunks[i % 4], None)
        return SIZE

    def open_() -> int:
        for i in range(count):
            aead.decrypt(nonces[i % 4], sealed[i % 4], None)
        return SIZE

    return seal, open_


@pytest.mark.parametrize("case", CASES)
def test_put_stream(
    case: str, pool: bytes, keys: BenchKeys, run_bench: BenchRunner, request: pytest.FixtureRequest
) -> None:
    if case == PYCA_RAW:
        seal, _ = _raw(keys, pool)
        assert run_bench("put_stream", case, SIZE, 1, seal) == SIZE
        return
    scope: StreamScope = request.getfixturevalue("vault_scope")
    counter = itertools.count()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (f"stream/r{next(counter)}.bin", PatternReader(SIZE, pool)), {}

    run_bench("put_stream", case, SIZE, 1, scope.put_stream, setup=setup)


@pytest.mark.parametrize("case", CASES)
def test_open_stream(
    case: str, pool: bytes, keys: BenchKeys, run_bench: BenchRunner, request: pytest.FixtureRequest
) -> None:
    if case == PYCA_RAW:
        _, open_ = _raw(keys, pool)
        assert run_bench("open_stream", case, SIZE, 1, open_) == SIZE
        return
    scope: StreamScope = request.getfixturevalue("vault_scope")
    scope.put_stream("stream/get.bin", PatternReader(SIZE, pool))
    total = run_bench(
        "open_stream", case, SIZE, 1, lambda: _read_all(scope.open_stream("stream/get.bin"))
    )
    assert total == SIZE
