"""Two KMSs for a tenant with several KEKs: a second LocalKMS serving ``dr:`` key ids, an opener
of vaults that know both, and what the multi-KEK tests read back (failover events, versions).

Shared by test_multikek.py and test_failover_durability.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import keycustody as kc
from keycustody.audit.events import AuditEvent
from keycustody.types import KeyVersionInfo


class DrKMS(kc.LocalKMS):
    """A second LocalKMS, in its own folder, serving ``dr:NAME`` key ids."""

    prefix: ClassVar[str] = "dr"


@contextmanager
def vault_opener(db_url: str, kms: kc.LocalKMS, dr: DrKMS) -> Iterator[Callable[..., kc.Vault]]:
    """Yields ``open_vault(**kwargs)``: a Vault on ``db_url`` with both KMSs (``kwargs`` go to
    :meth:`Vault.open`). Every vault it opened is closed on exit."""
    opened: list[kc.Vault] = []

    def open_vault(**kwargs: Any) -> kc.Vault:
        vault = kc.Vault.open(db_url, kms=[kms, dr], **kwargs)
        opened.append(vault)
        return vault

    try:
        yield open_vault
    finally:
        for vault in opened:
            vault.close()


def failovers(vault: kc.Vault) -> list[AuditEvent]:
    """The ``kek.failover`` events of the vault's audit trail, in order."""
    return [e for e in vault.audit.events() if e.action == "kek.failover"]


def versions(scope: kc.Scope) -> list[KeyVersionInfo]:
    return scope.keys()  # (not a dict)
