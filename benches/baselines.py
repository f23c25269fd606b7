"""Baselines of the performance contract (DESIGN §8), for the benches.

- :func:`pyca_envelope_seal` / :func:`pyca_envelope_open`: the straightforward pure-Python
  per-record envelope loop with pyca/cryptography (``os.urandom(32)`` DEK, ``AESGCM(dek)`` over the
  payload with the name as associated data, AES-GCM wrap of the DEK under one KEK).
- :func:`raw_aesgcm_seal` / :func:`raw_aesgcm_open`: raw AES-256-GCM with one key and one
  ``AESGCM`` object, a fresh nonce per record: the practical hardware limit.
- :func:`pyca_sqlite_put` / :func:`pyca_sqlite_get`: the pyca loop writing and reading the same
  rows with sqlite3 ``executemany``/``SELECT`` (the store baseline of issue 5).

They are implemented once, in :mod:`keycustody.bench`, so that the benches, ``benches/ratios.py``
and ``keycustody bench`` run the very same code; this module only re-exports them.
"""

from __future__ import annotations

from keycustody.bench import (
    open_sqlite_baseline,
    pyca_envelope_open,
    pyca_envelope_seal,
    pyca_sqlite_get,
    pyca_sqlite_put,
    raw_aesgcm_open,
    raw_aesgcm_seal,
)

__all__ = [
    "open_sqlite_baseline",
    "pyca_envelope_open",
    "pyca_envelope_seal",
    "pyca_sqlite_get",
    "pyca_sqlite_put",
    "raw_aesgcm_open",
    "raw_aesgcm_seal",
]
