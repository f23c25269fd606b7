"""An opener of vaults on one database with a list of KMS providers, closing them all on exit.

Shared by the KMS provider tests (tests/kms) and the multi-KEK tests (tests/keys).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import keycustody as kc
from keycustody.kms.base import KmsProvider


@contextmanager
def vault_opener(
    db_url: str, provider: KmsProvider, *others: KmsProvider
) -> Iterator[Callable[..., kc.Vault]]:
    """Yields ``open_vault(other=None, **kwargs)``: a Vault on ``db_url`` with ``provider`` (or
    ``other`` in its place) first, then ``others``; ``kwargs`` go to :meth:`Vault.open`. Every
    vault it opened is closed on exit."""
    opened: list[kc.Vault] = []

    def open_vault(other: KmsProvider | None = None, **kwargs: Any) -> kc.Vault:
        vault = kc.Vault.open(db_url, kms=[other or provider, *others], **kwargs)
        opened.append(vault)
        return vault

    try:
        yield open_vault
    finally:
        for vault in opened:
            vault.close()
