"""Bulk envelope seal/open: keycustody against the pyca baselines, per record size.

Groups ``seal-<size>`` and ``open-<size>`` (1 KiB ... 16 MiB), each with the cases
``keycustody`` (one ``_core.seal_blobs``/``open_blobs`` call per batch), ``vault``
(``Scope.seal_many``/``open_many``; skipped until ``keycustody.Vault`` exists), ``pyca-loop``
(pure-Python per-record envelope) and ``pyca-raw-aesgcm`` (one key, no envelope).
"""

from __future__ import annotations

import pytest

from benches.harness import BenchRunner
from keycustody.bench import (
    CASES,
    VAULT,
    BenchKeys,
    Payload,
    SealingScope,
    check_plaintexts,
    open_case,
    seal_case,
)


def _scope(case: str, request: pytest.FixtureRequest) -> SealingScope | None:
    # Requested only by the vault case, so the other cases never skip with it.
    if case != VAULT:
        return None
    scope: SealingScope = request.getfixturevalue("vault_scope")
    return scope


@pytest.mark.parametrize("case", CASES)
def test_seal(
    case: str,
    payload: Payload,
    keys: BenchKeys,
    run_bench: BenchRunner,
    request: pytest.FixtureRequest,
) -> None:
    fn = seal_case(case, payload, keys, _scope(case, request))
    blobs = run_bench("seal", case, payload.size, payload.count, fn)
    assert len(blobs) == payload.count


@pytest.mark.parametrize("case", CASES)
def test_open(
    case: str,
    payload: Payload,
    keys: BenchKeys,
    run_bench: BenchRunner,
    request: pytest.FixtureRequest,
) -> None:
    fn = open_case(case, payload, keys, _scope(case, request))
    datas = run_bench("open", case, payload.size, payload.count, fn)
    check_plaintexts(case, datas, payload.datas)
