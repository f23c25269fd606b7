"""Instructions per record of the Rust batch calls, counted by valgrind (repeatable on a busy box).

    python benches/instructions.py [--sizes 16,4096] [--records 2048] [--ops seal_blobs,...]

Wall time on a shared 2-core VM moves by 2x between runs; instruction counts do not. For each
operation and record size, the script runs itself twice under ``valgrind --tool=callgrind``,
once calling the operation on a batch of ``--records`` records once and once three times, and
prints ``(I(3 calls) - I(1 call)) / (2 * records)``: everything one more record costs, from
crossing into Rust and allocating its outputs to freeing them, on every thread (rayon workers
included), without the interpreter's start-up. The pyca loop (``pyca-seal``/``pyca-open``) is
counted the same way for scale. Valgrind hides AVX-512 and SHA-NI from the process, so aws-lc
takes its AVX2/AES-NI paths: AES and SHA-256 counts are higher than on the real CPU, the fixed
costs (key schedules, HMAC/HKDF set-up, allocation, Python objects) are what this is for.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

OPS = (
    "seal_blobs",
    "open_blobs",
    "seal_records",
    "open_records",
    "pyca-seal",
    "pyca-open",
)
DEFAULT_OPS = "seal_blobs,open_blobs,seal_records,open_records"


def _load_core() -> ModuleType:
    """``keycustody._core`` without running the package's ``__init__`` (slow under valgrind)."""
    package = importlib.util.find_spec("keycustody")  # finds, does not import
    where = package.submodule_search_locations if package else None
    for path in sorted(Path(next(iter(where))).glob("_core.*")) if where else []:
        spec = importlib.util.spec_from_file_location("keycustody._core", path)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    return importlib.import_module("keycustody._core")


def _workload(op: str, size: int, records: int) -> Callable[[], object]:
    """The callable that runs ``op`` once on a batch (all inputs prepared here)."""
    _core: Any = _load_core()

    key = _core.KeyHandle.generate()
    sid = os.urandom(_core.SCOPE_ID_LEN)
    names = [f"src/pkg/module_{i:06d}.py".encode() for i in range(records)]
    datas = [os.urandom(size) for _ in range(records)]
    table = {1: key}
    if op == "seal_blobs":
        return lambda: _core.seal_blobs(key, sid, 1, names, datas)
    if op == "open_blobs":
        blobs = _core.seal_blobs(key, sid, 1, names, datas)
        return lambda: _core.open_blobs(sid, table, names, blobs)
    if op == "seal_records":
        return lambda: _core.seal_records(key, sid, 1, names, datas)
    if op == "open_records":
        headers, _, bodies = _core.seal_records(key, sid, 1, names, datas)
        return lambda: _core.open_records(sid, table, names, headers, bodies)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from keycustody.bench import pyca_envelope_open, pyca_envelope_seal

    kek = AESGCM(AESGCM.generate_key(256))
    items = list(zip(names, datas, strict=True))
    if op == "pyca-seal":
        return lambda: pyca_envelope_seal(kek, items)
    if op == "pyca-open":
        sealed = list(zip(names, pyca_envelope_seal(kek, items), strict=True))
        return lambda: pyca_envelope_open(kek, sealed)
    raise SystemExit(f"unknown op {op!r}; choose from {', '.join(OPS)}")


def _child(op: str, size: int, records: int, calls: int) -> None:
    fn = _workload(op, size, records)
    fn()  # warm-up: first-use costs (rayon pool, imports) are not per record
    for _ in range(calls):
        result = fn()
        del result


def _count(op: str, size: int, records: int, calls: int) -> int:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--child",
        op,
        str(size),
        str(records),
        str(calls),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(  # noqa: S603 (valgrind on this interpreter and this script)
        cmd, capture_output=True, text=True, env=env, check=True
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:
        _child(args[1], int(args[2]), int(args[3]), int(args[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="16,4096", help="record sizes in bytes")
    parser.add_argument("--records", type=int, default=2048, help="records per batch")
    parser.add_argument("--ops", default=DEFAULT_OPS, help=f"comma-separated, from {OPS}")
    opts = parser.parse_args(args)
    print(f"{'op':<14} {'size':>6} {'instructions/record':>20}")
    for op in opts.ops.split(","):
        for size in (int(s) for s in opts.sizes.split(",")):
            one = _count(op, size, opts.records, 1)
            three = _count(op, size, opts.records, 3)
            per = (three - one) / (2 * opts.records)
            print(f"{op:<14} {size:>6} {per:>20,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
