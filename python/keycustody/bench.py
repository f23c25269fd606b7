"""Measure keycustody's bulk envelope crypto against pyca/cryptography baselines (DESIGN §8).

The performance contract is stated as ratios against baselines run in the same process:

- ``pyca-loop``: the straightforward pure-Python per-record envelope loop with pyca/cryptography
  (per record an ``os.urandom`` DEK, AES-256-GCM of the payload under it, AES-256-GCM wrap of the
  DEK under one KEK, both bound to the record name).
- ``pyca-raw-aesgcm``: raw AES-256-GCM with one key and one ``AESGCM`` object, a fresh nonce per
  record and no envelope at all: the practical single-thread hardware limit.

This module holds everything that measurement needs (payloads, baselines, timing, the table), so
that ``benches/`` (pytest-benchmark), ``benches/ratios.py`` and a ``keycustody bench`` command
measure exactly the same thing. pyca/cryptography is only a test/bench extra: it is imported
lazily and its absence raises :class:`~keycustody.errors.ConfigError`.

Outputs are fresh ``bytes`` objects, as users get them, measured with the default allocator.
With glibc, freeing one batch's outputs hands the memory back to the kernel (heap trim, munmap)
and the next batch page-faults it in again; the ``faults/rec`` column counts those minor faults.
To see the cost without them, rerun with e.g.
``GLIBC_TUNABLES=glibc.malloc.trim_threshold=4000000000:glibc.malloc.mmap_threshold=33554432``.

It calls ``keycustody._core`` directly on purpose: the ``keycustody`` case is the Rust batch call
alone; the ``vault`` case (a :class:`SealingScope`, e.g. ``keycustody.Vault`` scopes) adds the
Python API on top.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from keycustody import _core
from keycustody.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KiB: Final = 1024
MiB: Final = 1024 * KiB

#: Record sizes of the performance contract (issue 5), by label.
SIZES: Final[Mapping[str, int]] = {
    "1KiB": KiB,
    "4KiB": 4 * KiB,
    "64KiB": 64 * KiB,
    "1MiB": MiB,
    "16MiB": 16 * MiB,
}
#: Payload bytes one batch (one timed round) moves, unless capped by :data:`MAX_RECORDS`.
BATCH_BYTES: Final = 32 * MiB
#: Records per batch for small sizes: enough to amortise the call, short enough for 2 cores.
MAX_RECORDS: Final = 8192
#: Fewest records per batch (two, so a batch can spread over cores).
MIN_RECORDS: Final = 2

#: Case names, as they appear in tables, JSON and pytest-benchmark groups.
KEYCUSTODY: Final = "keycustody"
VAULT: Final = "vault"
PYCA_LOOP: Final = "pyca-loop"
PYCA_RAW: Final = "pyca-raw-aesgcm"
PYCA_SQLITE: Final = "pyca-loop-sqlite3"
#: Cases in table order.
CASES: Final = (KEYCUSTODY, VAULT, PYCA_LOOP, PYCA_RAW)
#: Baselines every other case is compared with, in column order (the store baseline last).
BASELINES: Final = (PYCA_LOOP, PYCA_RAW, PYCA_SQLITE)

# Layout of a pyca-loop blob: wrap nonce | wrapped DEK (32 + tag) | data nonce | ciphertext+tag.
_NONCE_LEN: Final = 12
_DEK_LEN: Final = 32
_TAG_LEN: Final = 16
_WRAPPED_END: Final = _NONCE_LEN + _DEK_LEN + _TAG_LEN
_DATA_START: Final = _WRAPPED_END + _NONCE_LEN

_INSTALL_HINT: Final = (
    "keycustody bench needs pyca/cryptography for its baselines: "
    "pip install cryptography (or pip install 'keycustody[test]')"
)


def load_aesgcm() -> type[AESGCM]:
    """Imports pyca/cryptography's ``AESGCM`` on first use.

    Returns:
        The ``AESGCM`` class.

    Raises:
        ConfigError: pyca/cryptography is not installed.
    """
    try:
        from cryptography.hazmat.primitives.ciphers import aead
    except ImportError as exc:
        raise ConfigError(_INSTALL_HINT) from exc
    return aead.AESGCM


# --------------------------------------------------------------------------------------------
# Baselines (pure Python + pyca/cryptography)
# --------------------------------------------------------------------------------------------


def pyca_envelope_seal(kek: AESGCM, items: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The straightforward per-record envelope loop: a fresh DEK per record, wrapped by ``kek``.

    Args:
        kek: the key-encryption key, one ``AESGCM`` object for the whole batch.
        items: ``(name, data)`` pairs; the name is the associated data of both encryptions.

    Returns:
        One blob per item: ``wrap nonce | wrapped DEK | data nonce | ciphertext || tag``.
    """
    aesgcm = load_aesgcm()
    blobs: list[bytes] = []
    for name, data in items:
        dek = os.urandom(_DEK_LEN)
        wrap_nonce = os.urandom(_NONCE_LEN)
        data_nonce = os.urandom(_NONCE_LEN)
        wrapped = kek.encrypt(wrap_nonce, dek, name)
        ciphertext = aesgcm(dek).encrypt(data_nonce, data, name)
        blobs.append(b"".join((wrap_nonce, wrapped, data_nonce, ciphertext)))
    return blobs


def pyca_envelope_open(kek: AESGCM, items: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Opens blobs made by :func:`pyca_envelope_seal`: unwrap the DEK, then decrypt.

    Args:
        kek: the key-encryption key the blobs were sealed under.
        items: ``(name, blob)`` pairs.

    Returns:
        The plaintexts, in order.

    Raises:
        cryptography.exceptions.InvalidTag: a blob, its wrapped DEK or its name does not match.
    """
    aesgcm = load_aesgcm()
    datas: list[bytes] = []
    for name, blob in items:
        view = memoryview(blob)  # slices without copying the payload
        dek = kek.decrypt(view[:_NONCE_LEN], view[_NONCE_LEN:_WRAPPED_END], name)
        datas.append(aesgcm(dek).decrypt(view[_WRAPPED_END:_DATA_START], view[_DATA_START:], name))
    return datas


def raw_aesgcm_seal(aead: AESGCM, datas: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    """Raw AES-256-GCM under one key and one ``AESGCM`` object, a fresh random nonce per record.

    No DEK, no wrap, no associated data: the practical single-thread hardware limit.

    Returns:
        ``(nonce, ciphertext || tag)`` per record (no concatenation, so no extra copy).
    """
    sealed: list[tuple[bytes, bytes]] = []
    for data in datas:
        nonce = os.urandom(_NONCE_LEN)
        sealed.append((nonce, aead.encrypt(nonce, data, None)))
    return sealed


def raw_aesgcm_open(aead: AESGCM, sealed: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Opens the output of :func:`raw_aesgcm_seal`.

    Raises:
        cryptography.exceptions.InvalidTag: a record does not authenticate.
    """
    return [aead.decrypt(nonce, ciphertext, None) for nonce, ciphertext in sealed]


def open_sqlite_baseline(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A file-backed SQLite database for the ``pyca-loop-sqlite3`` store baseline.

    WAL journal (as DESIGN §7 prescribes for the vault), default ``synchronous`` (FULL), one
    ``records(name, blob)`` table.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS records (name TEXT PRIMARY KEY, blob BLOB NOT NULL)")
    return conn


def pyca_sqlite_put(
    conn: sqlite3.Connection, kek: AESGCM, items: Sequence[tuple[str, bytes]]
) -> None:
    """Seals ``items`` with the pyca loop and inserts them with one ``executemany`` transaction."""
    names = [name for name, _ in items]
    blobs = pyca_envelope_seal(kek, [(name.encode(), data) for name, data in items])
    conn.execute("BEGIN")
    try:
        conn.executemany(
            "INSERT INTO records (name, blob) VALUES (?, ?)", zip(names, blobs, strict=True)
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def pyca_sqlite_get(
    conn: sqlite3.Connection, kek: AESGCM, names: Sequence[str], *, chunk: int = 900
) -> dict[str, bytes]:
    """Selects ``names`` (``IN`` lists of ``chunk`` names) and opens them with the pyca loop."""
    rows: list[tuple[str, bytes]] = []
    for start in range(0, len(names), chunk):
        part = names[start : start + chunk]
        marks = ",".join("?" * len(part))
        query = f"SELECT name, blob FROM records WHERE name IN ({marks})"  # noqa: S608 (only ?s)
        rows.extend(conn.execute(query, part))
    datas = pyca_envelope_open(kek, [(name.encode(), blob) for name, blob in rows])
    return {name: data for (name, _), data in zip(rows, datas, strict=True)}


# --------------------------------------------------------------------------------------------
# Payloads, keys and cases
# --------------------------------------------------------------------------------------------


def size_label(size: int) -> str:
    """``4096 -> "4KiB"``, ``1048576 -> "1MiB"``, ``100 -> "100B"``."""
    for unit, scale in (("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def batch_records(
    size: int,
    batch_bytes: int = BATCH_BYTES,
    *,
    min_records: int = MIN_RECORDS,
    max_records: int = MAX_RECORDS,
) -> int:
    """How many ``size``-byte records one batch holds: ``batch_bytes / size``, clamped."""
    return max(min_records, min(max_records, batch_bytes // max(size, 1)))


def random_pool(nbytes: int = BATCH_BYTES) -> bytes:
    """One block of OS random bytes that payloads are cut from (``os.urandom`` once)."""
    return os.urandom(nbytes)


@dataclass(frozen=True, slots=True)
class Payload:
    """A batch of ``count`` random records of ``size`` bytes, named ``src/file_{i}.py``."""

    size: int
    names: list[str]
    name_bytes: list[bytes]
    datas: list[bytes]

    @property
    def label(self) -> str:
        """The size label, e.g. ``"4KiB"``."""
        return size_label(self.size)

    @property
    def count(self) -> int:
        """Records in the batch."""
        return len(self.datas)

    @property
    def nbytes(self) -> int:
        """Payload bytes in the batch."""
        return self.size * self.count

    def items(self) -> list[tuple[str, bytes]]:
        """``(name, data)`` pairs with ``str`` names (the Vault API)."""
        return list(zip(self.names, self.datas, strict=True))

    def byte_items(self) -> list[tuple[bytes, bytes]]:
        """``(name, data)`` pairs with ``bytes`` names (the pyca loop's associated data)."""
        return list(zip(self.name_bytes, self.datas, strict=True))


def make_payload(
    size: int, count: int | None = None, *, pool: bytes | None = None, prefix: str = ""
) -> Payload:
    """Builds a batch of distinct ``bytes`` records cut from ``pool``.

    Args:
        size: bytes per record.
        count: records; :func:`batch_records` of ``size`` by default.
        pool: random bytes to cut records from (cycled if shorter than the batch); a fresh
            :func:`random_pool` of the batch size by default.
        prefix: prepended to every name (``f"{prefix}src/file_{i}.py"``).

    Returns:
        The payload; every record is its own ``bytes`` object, as real inputs are.
    """
    count = batch_records(size) if count is None else count
    if pool is None:
        pool = random_pool(size * count)
    if len(pool) < size:
        raise ValueError(f"random pool of {len(pool)} bytes is smaller than one record ({size})")
    span = len(pool) - size + 1
    datas = [pool[(i * size) % span : (i * size) % span + size] for i in range(count)]
    names = [f"{prefix}src/file_{i}.py" for i in range(count)]
    return Payload(size, names, [n.encode() for n in names], datas)


class SealingScope(Protocol):
    """What the ``vault`` cases need from a scope (``keycustody.Vault(...).scope(...)``)."""

    def seal_many(self, items: Sequence[tuple[str, bytes]], /) -> list[bytes]: ...

    def open_many(self, items: Sequence[tuple[str, bytes]], /) -> list[bytes]: ...

    def put_many(self, items: Sequence[tuple[str, bytes]], /) -> object: ...

    def get_many(self, names: Sequence[str], /) -> Mapping[str, bytes]: ...


@dataclass(frozen=True, slots=True)
class BenchKeys:
    """Keys every case uses: a keycustody scope key and the two pyca baselines' keys."""

    scope_key: _core.KeyHandle = field(repr=False)
    scope_id: bytes
    kek: AESGCM = field(repr=False)
    raw: AESGCM = field(repr=False)
    version: int = 1

    @classmethod
    def generate(cls) -> BenchKeys:
        """Fresh random keys (OS CSPRNG); raises :class:`ConfigError` without pyca."""
        aesgcm = load_aesgcm()
        return cls(
            scope_key=_core.KeyHandle.generate(),
            scope_id=os.urandom(_core.SCOPE_ID_LEN),
            kek=aesgcm(aesgcm.generate_key(256)),
            raw=aesgcm(aesgcm.generate_key(256)),
        )


def seal_case(
    case: str, payload: Payload, keys: BenchKeys, scope: SealingScope | None = None
) -> Callable[[], Sequence[object]]:
    """The timed callable that seals ``payload`` as ``case`` does (inputs prepared outside it).

    Raises:
        ValueError: unknown case, or ``vault`` without a ``scope``.
    """
    if case == KEYCUSTODY:
        key, sid, version = keys.scope_key, keys.scope_id, keys.version
        names, datas = payload.name_bytes, payload.datas
        return lambda: _core.seal_blobs(key, sid, version, names, datas)
    if case == PYCA_LOOP:
        kek, byte_items = keys.kek, payload.byte_items()
        return lambda: pyca_envelope_seal(kek, byte_items)
    if case == PYCA_RAW:
        raw, datas = keys.raw, payload.datas
        return lambda: raw_aesgcm_seal(raw, datas)
    if case == VAULT:
        if scope is None:
            raise ValueError("the vault case needs a scope")
        items = payload.items()
        return lambda: scope.seal_many(items)
    raise ValueError(f"unknown case {case!r}; expected one of {', '.join(CASES)}")


def open_case(
    case: str, payload: Payload, keys: BenchKeys, scope: SealingScope | None = None
) -> Callable[[], Sequence[bytes]]:
    """Seals ``payload`` once (untimed) and returns the timed callable that opens it.

    The callable returns the plaintexts in order, so callers can check them.

    Raises:
        ValueError: unknown case, or ``vault`` without a ``scope``.
    """
    if case == KEYCUSTODY:
        key, sid, version = keys.scope_key, keys.scope_id, keys.version
        names = payload.name_bytes
        blobs = _core.seal_blobs(key, sid, version, names, payload.datas)
        table = {version: key}
        return lambda: _core.open_blobs(sid, table, names, blobs)
    if case == PYCA_LOOP:
        kek = keys.kek
        sealed = pyca_envelope_seal(kek, payload.byte_items())
        items = list(zip(payload.name_bytes, sealed, strict=True))
        return lambda: pyca_envelope_open(kek, items)
    if case == PYCA_RAW:
        raw = keys.raw
        pairs = raw_aesgcm_seal(raw, payload.datas)
        return lambda: raw_aesgcm_open(raw, pairs)
    if case == VAULT:
        if scope is None:
            raise ValueError("the vault case needs a scope")
        vault_blobs = scope.seal_many(payload.items())
        vault_items = list(zip(payload.names, vault_blobs, strict=True))
        return lambda: scope.open_many(vault_items)
    raise ValueError(f"unknown case {case!r}; expected one of {', '.join(CASES)}")


def check_plaintexts(case: str, got: Sequence[bytes], expected: Sequence[bytes]) -> None:
    """Raises ``AssertionError`` if an open case returned anything but the payload."""
    if len(got) != len(expected) or any(g != e for g, e in zip(got, expected, strict=True)):
        raise AssertionError(f"{case}: opened data differs from the payload")


# --------------------------------------------------------------------------------------------
# Timing and reporting
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """Timings of one case on one batch: ``op`` (seal/open/put/get) of ``records`` records."""

    op: str
    case: str
    size: int
    records: int
    seconds: tuple[float, ...]
    #: Minor page faults of the process during each timed run (empty where not counted).
    faults: tuple[int, ...] = ()

    @property
    def group(self) -> str:
        """``f"{op}-{size label}"``, the pytest-benchmark group name."""
        return f"{self.op}-{size_label(self.size)}"

    @property
    def median(self) -> float:
        """Median seconds per batch."""
        return statistics.median(self.seconds)

    @property
    def records_per_s(self) -> float:
        """Records per second at the median."""
        return self.records / self.median

    @property
    def bytes_per_s(self) -> float:
        """Payload bytes per second at the median."""
        return self.records * self.size / self.median

    @property
    def faults_per_record(self) -> float | None:
        """Median minor page faults per record (fresh output memory the kernel had to map)."""
        return statistics.median(self.faults) / self.records if self.faults else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, including the derived rates."""
        return {
            "op": self.op,
            "case": self.case,
            "size": self.size,
            "records": self.records,
            "median_s": self.median,
            "records_per_s": self.records_per_s,
            "bytes_per_s": self.bytes_per_s,
            "seconds": list(self.seconds),
            "minor_faults_per_record": self.faults_per_record,
        }


@dataclass(frozen=True, slots=True)
class Samples:
    """Wall time and minor page faults of each timed run of one case."""

    seconds: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)

    def measurement(self, op: str, case: str, size: int, records: int) -> Measurement:
        """These samples as a :class:`Measurement`."""
        return Measurement(op, case, size, records, tuple(self.seconds), tuple(self.faults))


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where the platform does not count them)."""
    if sys.platform == "win32":
        return 0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_once(fn: Callable[[], object], samples: Samples | None = None) -> tuple[float, int]:
    """Runs ``fn`` once: ``(seconds, minor page faults)``, appended to ``samples`` if given.

    A full collection runs first, so earlier garbage is not charged to ``fn``; the result is
    freed after the clock stops.
    """
    gc.collect()
    faults = minor_faults()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    faults = minor_faults() - faults
    del result
    if samples is not None:
        samples.seconds.append(elapsed)
        samples.faults.append(faults)
    return elapsed, faults


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, Samples]:
    """Times each callable ``repeats`` times (after ``warmup`` untimed runs), round-robin.

    Interleaving the cases spreads drift (other processes, frequency changes) over all of them
    instead of biasing whichever ran last (see :func:`time_once` for one run).
    """
    samples = {name: Samples() for name in fns}
    for round_no in range(warmup + repeats):
        for name, fn in fns.items():
            time_once(fn, samples[name] if round_no >= warmup else None)
    return samples


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process so far, or ``None`` where unknown."""
    if sys.platform == "win32":
        return None
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def machine_info() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, Python and pyca versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import cryptography

        pyca = cryptography.__version__
    except ImportError:
        pyca = "not installed"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "cryptography": pyca,
        "platform": platform.platform(),
    }


@dataclass(slots=True)
class Report:
    """All measurements of a run, with ratios against the baselines and peak RSS."""

    measurements: list[Measurement] = field(default_factory=list)
    peak_rss: int | None = None
    machine: dict[str, str] = field(default_factory=machine_info)

    def find(self, op: str, size: int, case: str) -> Measurement | None:
        """The measurement of ``case`` doing ``op`` on ``size``-byte records, if any."""
        for m in self.measurements:
            if (m.op, m.size, m.case) == (op, size, case):
                return m
        return None

    def ratio(self, m: Measurement, baseline: str) -> float | None:
        """How many times faster ``m`` is than ``baseline`` on the same op and batch."""
        base = self.find(m.op, m.size, baseline)
        if base is None or base.records != m.records:
            return None
        return base.median / m.median

    def to_json(self) -> str:
        """The whole report as JSON (for ``keycustody bench --json``)."""
        rows = []
        for m in self.measurements:
            row = m.to_dict()
            ratios = {b: self.ratio(m, b) for b in BASELINES if b != m.case}
            row["ratios"] = {b: r for b, r in ratios.items() if r is not None}
            rows.append(row)
        doc = {"machine": self.machine, "peak_rss_bytes": self.peak_rss, "measurements": rows}
        return json.dumps(doc, indent=2)

    def format_table(self, baselines: Sequence[str] = BASELINES) -> str:
        """A plain-text table: one row per case, grouped by op and size, ratio columns.

        Followed by the per-case cost model (:func:`format_cost_model`) and the machine.
        """
        table = format_table(self.measurements, baselines, ratio=self.ratio)
        return table + "\n" + format_cost_model(self.measurements) + self._footer()

    def _footer(self) -> str:
        lines = ["", "machine: " + ", ".join(f"{k}={v}" for k, v in self.machine.items())]
        if self.peak_rss is not None:
            lines.append(f"peak RSS: {self.peak_rss / MiB:,.0f} MiB")
        return "\n".join(lines) + "\n"


def format_table(
    measurements: Sequence[Measurement],
    baselines: Sequence[str] = BASELINES,
    *,
    ratio: Callable[[Measurement, str], float | None] | None = None,
) -> str:
    """Formats measurements as a table with a ``vs <baseline>`` column per baseline present.

    Ratios are baseline median time over case median time (``> 1``: the case is faster).
    """
    present = {m.case for m in measurements}
    cols = [b for b in baselines if b in present]

    def default_ratio(m: Measurement, baseline: str) -> float | None:
        for b in measurements:
            if (b.group, b.case, b.records) == (m.group, baseline, m.records):
                return b.median / m.median
        return None

    get_ratio = ratio or default_ratio
    with_faults = any(m.faults for m in measurements)
    header = ["op", "case", "records", "median ms", "records/s", "MB/s"]
    header += ["faults/rec"] * with_faults + [f"vs {b}" for b in cols]
    rows: list[list[str]] = []
    last_group = None
    for m in measurements:
        if last_group is not None and m.group != last_group:
            rows.append([])
        last_group = m.group
        row = [
            m.group,
            m.case,
            f"{m.records:,}",
            f"{m.median * 1e3:,.2f}",
            f"{m.records_per_s:,.0f}",
            f"{m.bytes_per_s / 1e6:,.0f}",
        ]
        if with_faults:
            row.append("" if m.faults_per_record is None else f"{m.faults_per_record:,.1f}")
        for b in cols:
            r = None if b == m.case else get_ratio(m, b)
            row.append("" if r is None else f"{r:.2f}x")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows if r)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        left = cells[:2]
        right = cells[2:]
        out = [c.ljust(w) for c, w in zip(left, widths, strict=False)]
        out += [c.rjust(w) for c, w in zip(right, widths[2:], strict=False)]
        return "  ".join(out).rstrip()

    text = [line(header), line(["-" * w for w in widths])]
    text += [line(r) if r else "" for r in rows]
    return "\n".join(text) + "\n"


def fit_cost(measurements: Iterable[Measurement]) -> tuple[float, float] | None:
    """Fits ``seconds per record = fixed + size / rate`` to one case's measurements.

    A least-squares fit of relative errors (each size weighs the same, so the small sizes pin
    the fixed cost and the large ones the rate). Needs two or more distinct sizes.

    Returns:
        ``(fixed seconds per record, bytes per second)``, or ``None`` if it cannot be fitted
        (too few sizes, or a rate that comes out infinite or negative).
    """
    points = [(float(m.size), m.median / m.records) for m in measurements]
    if len({size for size, _ in points}) < 2:
        return None
    # Rows (1/t, s/t) . (a, b) = 1; solve the 2x2 normal equations.
    saa = sum(1 / t**2 for _, t in points)
    sab = sum(s / t**2 for s, t in points)
    sbb = sum(s * s / t**2 for s, t in points)
    ra = sum(1 / t for _, t in points)
    rb = sum(s / t for s, t in points)
    det = saa * sbb - sab * sab
    if det == 0:
        return None
    fixed = (ra * sbb - rb * sab) / det
    per_byte = (saa * rb - sab * ra) / det
    if per_byte <= 0:
        return None
    return fixed, 1 / per_byte


def format_cost_model(measurements: Sequence[Measurement]) -> str:
    """One line per (op, case): the fitted fixed cost per record and streaming rate."""
    keys = list(dict.fromkeys((m.op, m.case) for m in measurements))
    lines = ["cost model, time per record = fixed + size / rate (relative least squares):"]
    for op, case in keys:
        fit = fit_cost(m for m in measurements if (m.op, m.case) == (op, case))
        if fit is not None:
            fixed, rate = fit
            lines.append(
                f"  {op:<6} {case:<18} fixed {fixed * 1e6:7.2f} us   rate {rate / 1e9:6.2f} GB/s"
            )
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


def measure_envelope(
    sizes: Iterable[int] = SIZES.values(),
    *,
    repeats: int = 5,
    warmup: int = 1,
    batch_bytes: int = BATCH_BYTES,
    max_records: int = MAX_RECORDS,
    scope: SealingScope | None = None,
    keys: BenchKeys | None = None,
    report: Report | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Measures seal and open of every case at every record size (medians, interleaved).

    Args:
        sizes: record sizes in bytes (:data:`SIZES` by default).
        repeats: timed runs per case; the median is reported.
        warmup: untimed runs per case first.
        batch_bytes: payload bytes per batch (see :func:`batch_records`).
        max_records: cap on records per batch for small sizes.
        scope: a vault scope; adds the ``vault`` case when given.
        keys: keys to use; fresh ones by default.
        report: a report to add to; a new one by default.
        progress: called with a short message before each size (e.g. ``print``).

    Returns:
        The report, with ``peak_rss`` updated.

    Raises:
        ConfigError: pyca/cryptography is not installed.
        AssertionError: a case opened something other than its payload.
    """
    keys = BenchKeys.generate() if keys is None else keys
    report = Report() if report is None else report
    cases = [c for c in CASES if c != VAULT or scope is not None]
    pool = random_pool(batch_bytes)
    for size in sizes:
        count = batch_records(size, batch_bytes, max_records=max_records)
        if progress is not None:
            progress(f"{size_label(size)}: {count} records per batch")
        payload = make_payload(size, count, pool=pool)
        for op in ("seal", "open"):
            if op == "seal":
                fns: dict[str, Callable[[], object]] = {
                    c: seal_case(c, payload, keys, scope) for c in cases
                }
            else:
                openers = {c: open_case(c, payload, keys, scope) for c in cases}
                for c, opener in openers.items():
                    check_plaintexts(c, opener(), payload.datas)
                fns = dict(openers)
            samples = time_interleaved(fns, repeats=repeats, warmup=warmup)
            for c in cases:
                report.measurements.append(samples[c].measurement(op, c, size, count))
            del fns
        del payload
    report.peak_rss = peak_rss_bytes()
    return report


def measure_store(
    scope: SealingScope,
    size: int = 4 * KiB,
    *,
    count: int = 4096,
    repeats: int = 5,
    warmup: int = 1,
    directory: str | os.PathLike[str] | None = None,
    keys: BenchKeys | None = None,
    report: Report | None = None,
) -> Report:
    """Measures ``put_many``/``get_many`` on ``scope`` against the pyca loop with sqlite3.

    The baseline seals with :func:`pyca_envelope_seal` and inserts with one ``executemany``
    transaction into a file-backed SQLite database in ``directory`` (a temporary one by default);
    ``get`` selects the rows back and opens them. Every timed ``put`` writes fresh names.

    Returns:
        The report, with ``put``/``get`` measurements for ``vault`` and ``pyca-loop-sqlite3``.
    """
    keys = BenchKeys.generate() if keys is None else keys
    report = Report() if report is None else report
    pool = random_pool(size * count)
    with _directory(directory) as root:
        conn = open_sqlite_baseline(root / "pyca-baseline.db")
        try:
            rounds = iter(range(1 << 30))

            def fresh() -> list[tuple[str, bytes]]:
                return make_payload(size, count, pool=pool, prefix=f"r{next(rounds)}/").items()

            puts: dict[str, Callable[[list[tuple[str, bytes]]], object]] = {
                VAULT: scope.put_many,
                PYCA_SQLITE: lambda items: pyca_sqlite_put(conn, keys.kek, items),
            }
            put_samples = {case: Samples() for case in puts}
            for round_no in range(warmup + repeats):
                for case, put in puts.items():
                    items = fresh()  # fresh names every run, prepared untimed
                    kept = put_samples[case] if round_no >= warmup else None
                    time_once(lambda: put(items), kept)  # noqa: B023 (runs right here)
            for case in puts:
                report.measurements.append(put_samples[case].measurement("put", case, size, count))

            payload = make_payload(size, count, pool=pool, prefix="get/")
            scope.put_many(payload.items())
            pyca_sqlite_put(conn, keys.kek, payload.items())
            names = payload.names
            getters: dict[str, Callable[[], Mapping[str, bytes]]] = {
                VAULT: lambda: scope.get_many(names),
                PYCA_SQLITE: lambda: pyca_sqlite_get(conn, keys.kek, names),
            }
            for case, get in getters.items():
                found = get()
                check_plaintexts(case, [found[n] for n in names], payload.datas)
            get_samples = time_interleaved(getters, repeats=repeats, warmup=warmup)
            for case in getters:
                report.measurements.append(get_samples[case].measurement("get", case, size, count))
        finally:
            conn.close()
    report.peak_rss = peak_rss_bytes()
    return report


@contextmanager
def _directory(directory: str | os.PathLike[str] | None) -> Iterator[Path]:
    if directory is not None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="keycustody-bench-") as tmp:
        yield Path(tmp)


def open_bench_vault(directory: str | os.PathLike[str]) -> tuple[Any, SealingScope] | None:
    """Opens a throwaway vault (LocalKMS + file-backed SQLite) in ``directory`` with one tenant.

    Returns:
        ``(vault, scope)``, or ``None`` while this build has no ``keycustody.Vault`` yet.
    """
    import keycustody

    vault_cls: Any = getattr(keycustody, "Vault", None)
    kms_cls: Any = getattr(keycustody, "LocalKMS", None)
    if vault_cls is None or kms_cls is None:
        return None
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    kms = kms_cls(str(root / "kek"))
    kek = kms.create_key("bench-kek")
    vault = vault_cls.open(f"sqlite:///{root / 'bench.db'}", kms=kms)
    scope: SealingScope = vault.scope("bench", kek=kek, create=True)
    return vault, scope


__all__ = [
    "BASELINES",
    "BATCH_BYTES",
    "CASES",
    "KEYCUSTODY",
    "MAX_RECORDS",
    "PYCA_LOOP",
    "PYCA_RAW",
    "PYCA_SQLITE",
    "SIZES",
    "VAULT",
    "BenchKeys",
    "KiB",
    "Measurement",
    "MiB",
    "Payload",
    "Report",
    "Samples",
    "SealingScope",
    "batch_records",
    "check_plaintexts",
    "fit_cost",
    "format_cost_model",
    "format_table",
    "load_aesgcm",
    "machine_info",
    "make_payload",
    "measure_envelope",
    "measure_store",
    "minor_faults",
    "open_bench_vault",
    "open_case",
    "open_sqlite_baseline",
    "peak_rss_bytes",
    "pyca_envelope_open",
    "pyca_envelope_seal",
    "pyca_sqlite_get",
    "pyca_sqlite_put",
    "random_pool",
    "raw_aesgcm_open",
    "raw_aesgcm_seal",
    "seal_case",
    "size_label",
    "time_interleaved",
    "time_once",
]
