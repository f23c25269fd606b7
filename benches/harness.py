"""The fixed-rounds benchmark runner the benches share (the ``run_bench`` fixture's type)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from keycustody.bench import Measurement

#: Timed rounds per case (after ``WARMUP_ROUNDS``); ``KEYCUSTODY_BENCH_ROUNDS`` overrides.
ROUNDS = int(os.environ.get("KEYCUSTODY_BENCH_ROUNDS", "10"))
WARMUP_ROUNDS = 1
#: Where runners record their measurements for the end-of-session throughput table.
MEASUREMENTS = pytest.StashKey[list[Measurement]]()


@dataclass
class BenchRunner:
    """Runs one benchmark with fixed rounds, names its group and records its throughput."""

    benchmark: Any
    measurements: list[Measurement] = field(default_factory=list)

    def __call__(
        self,
        op: str,
        case: str,
        size: int,
        records: int,
        fn: Callable[..., Any],
        *,
        setup: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]] | None = None,
        rounds: int = ROUNDS,
        label: str = "",
        nbytes: int = 0,
    ) -> Any:
        """Benchmarks ``fn`` as case ``case`` of group ``f"{op}-{size}"``; returns its result.

        ``label`` names a mixed-size payload instead of ``size`` (group ``f"{op}-{label}"``),
        whose ``nbytes`` payload bytes per round give the throughput.
        """
        m = Measurement(op, case, size, records, (), label=label, nbytes=nbytes)
        self.benchmark.group = m.group
        self.benchmark.extra_info.update(op=op, case=case, size=size, records=records)
        result = self.benchmark.pedantic(
            fn, setup=setup, rounds=rounds, warmup_rounds=WARMUP_ROUNDS, iterations=1
        )
        stats = self.benchmark.stats
        if stats is not None:  # None when benchmarks are disabled
            seconds = tuple(stats.stats.data)
            self.measurements.append(
                Measurement(op, case, size, records, seconds, label=label, nbytes=nbytes)
            )
        return result
