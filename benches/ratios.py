"""Print keycustody's envelope speed against the pyca baselines (the measurement of issue 5).

    python benches/ratios.py [--sizes 4KiB,1MiB] [--repeats 5] [--json] [--no-vault]

Medians of ``--repeats`` interleaved runs (``time.perf_counter``) of seal and open at 1 KiB,
4 KiB, 64 KiB, 1 MiB and 16 MiB records: records/s, MB/s and ratios against the pure-Python
pyca loop and raw single-key AES-256-GCM. When ``keycustody.Vault`` exists, the ``vault`` case
and the 4 KiB store path (put_many/get_many against the pyca loop + sqlite3) are measured too.
All the measuring lives in :mod:`keycustody.bench`; this script only parses arguments.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from keycustody.bench import SIZES, Report, measure_envelope, measure_store, open_bench_vault


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated size labels")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-vault", action="store_true", help="skip the Vault-level cases")
    args = parser.parse_args(argv)
    labels = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in labels if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {', '.join(SIZES)}")

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="keycustody-ratios-") as tmp:
        opened = None if args.no_vault else open_bench_vault(tmp)
        scope = None if opened is None else opened[1]
        report = Report()
        measure_envelope(
            [SIZES[s] for s in labels],
            repeats=args.repeats,
            scope=scope,
            report=report,
            progress=progress,
        )
        if scope is not None:
            progress("store path: 4KiB put_many/get_many")
            measure_store(scope, repeats=args.repeats, directory=tmp, report=report)
    print(report.to_json() if args.json else report.format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
