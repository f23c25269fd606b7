"""Thread scaling: N Python threads each sealing/opening 1 MiB records, one record per call.

A ``seal_blobs`` call with a single record runs on the calling thread (no rayon), so the only
way two cores get busy is two Python threads running at once: the speed-up of ``2threads``
over ``1thread`` shows that the call releases the GIL (tokenizers' thread test, in spirit).
Every round moves the same 32 records (32 MiB) whatever the thread count.

Each worker drops every output as soon as it has it, as a streaming consumer would, so the
allocator reuses the same memory. Keeping all 32 fresh 1 MiB outputs alive instead makes glibc
give the memory back between rounds and the kernel fault it in again; that page-fault cost does
not scale with threads and would hide the GIL release (bench_envelope's ``faults/rec`` shows
it). ``keycustody-batch`` is the whole batch in one call (rayon inside, all outputs kept), and
``pyca-raw-*`` is pyca's ``AESGCM`` under the same threading, for contrast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from benches.harness import BenchRunner
from keycustody import _core
from keycustody.bench import BenchKeys, MiB, Payload, make_payload

RECORDS = 32
THREADS = (1, 2, 4)


@pytest.fixture(scope="module")
def records_1mib(pool: bytes) -> Payload:
    return make_payload(MiB, RECORDS, pool=pool)


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=max(THREADS), thread_name_prefix="bench") as ex:
        yield ex


def _split(n: int, threads: int) -> list[range]:
    """``range(n)`` in ``threads`` contiguous, near-equal parts."""
    bounds = [n * t // threads for t in range(threads + 1)]
    return [range(bounds[t], bounds[t + 1]) for t in range(threads)]


def _threaded(
    executor: ThreadPoolExecutor, threads: int, n: int, one: Callable[[int], bytes]
) -> Callable[[], int]:
    """A callable that runs ``one(i)`` for every ``i < n`` on ``threads`` threads at once.

    Outputs are dropped as they come; the callable returns how many bytes they held.
    """
    parts = _split(n, threads)

    def work(part: range) -> int:
        return sum(len(one(i)) for i in part)

    def run() -> int:
        futures = [executor.submit(work, part) for part in parts]
        return sum(f.result() for f in futures)

    return run


def _case_name(prefix: str, threads: int) -> str:
    return f"{prefix}-{threads}thread" + ("s" if threads > 1 else "")


def _keycustody_seal(keys: BenchKeys, p: Payload) -> Callable[[int], bytes]:
    key, sid, names, datas = keys.scope_key, keys.scope_id, p.name_bytes, p.datas
    return lambda i: _core.seal_blobs(key, sid, 1, [names[i]], [datas[i]])[0]


def _keycustody_open(keys: BenchKeys, p: Payload) -> Callable[[int], bytes]:
    key, sid, names = keys.scope_key, keys.scope_id, p.name_bytes
    blobs = _core.seal_blobs(key, sid, 1, names, p.datas)
    table = {1: key}
    return lambda i: _core.open_blobs(sid, table, [names[i]], [blobs[i]])[0]


def _pyca_seal(keys: BenchKeys, p: Payload) -> Callable[[int], bytes]:
    raw, datas, nonce = keys.raw, p.datas, bytes(12)  # the nonce is irrelevant to speed
    return lambda i: raw.encrypt(nonce, datas[i], None)


def _pyca_open(keys: BenchKeys, p: Payload) -> Callable[[int], bytes]:
    raw, nonce = keys.raw, bytes(12)
    cts = [raw.encrypt(nonce, d, None) for d in p.datas]
    return lambda i: raw.decrypt(nonce, cts[i], None)


def _check(op: str, one: Callable[[int], bytes], p: Payload) -> None:
    """Untimed: every output has the right length, and opening gives back the payload."""
    outs = [one(i) for i in range(p.count)]
    if op == "open":
        assert outs == p.datas
    else:
        assert all(len(out) > len(data) for out, data in zip(outs, p.datas, strict=True))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("op", ["seal", "open"])
def test_keycustody_threads(
    op: str,
    threads: int,
    records_1mib: Payload,
    keys: BenchKeys,
    executor: ThreadPoolExecutor,
    run_bench: BenchRunner,
) -> None:
    one = (_keycustody_seal if op == "seal" else _keycustody_open)(keys, records_1mib)
    _check(op, one, records_1mib)
    fn = _threaded(executor, threads, records_1mib.count, one)
    run_bench(f"threads-{op}", _case_name("keycustody", threads), MiB, RECORDS, fn)


@pytest.mark.parametrize("op", ["seal", "open"])
def test_keycustody_batch(
    op: str, records_1mib: Payload, keys: BenchKeys, run_bench: BenchRunner
) -> None:
    p = records_1mib
    key, sid = keys.scope_key, keys.scope_id
    if op == "seal":

        def fn() -> list[bytes]:
            return _core.seal_blobs(key, sid, 1, p.name_bytes, p.datas)

    else:
        blobs = _core.seal_blobs(key, sid, 1, p.name_bytes, p.datas)

        def fn() -> list[bytes]:
            return _core.open_blobs(sid, {1: key}, p.name_bytes, blobs)

    out = run_bench(f"threads-{op}", "keycustody-batch", MiB, RECORDS, fn)
    assert len(out) == p.count
    if op == "open":
        assert out == p.datas


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("op", ["seal", "open"])
def test_pyca_raw_threads(
    op: str,
    threads: int,
    records_1mib: Payload,
    keys: BenchKeys,
    executor: ThreadPoolExecutor,
    run_bench: BenchRunner,
) -> None:
    one = (_pyca_seal if op == "seal" else _pyca_open)(keys, records_1mib)
    _check(op, one, records_1mib)
    fn = _threaded(executor, threads, records_1mib.count, one)
    run_bench(f"threads-{op}", _case_name("pyca-raw", threads), MiB, RECORDS, fn)
