"""Two KMSs for a tenant with several KEKs: a second LocalKMS serving ``dr:`` key ids (open
vaults that know both with ``vaults.vault_opener(db_url, kms, dr)``), and what the multi-KEK
tests read back (failover events, versions).

Shared by test_multikek.py and test_failover_durability.py.
"""

from __future__ import annotations

from typing import ClassVar

import keycustody as kc
from keycustody.audit.events import AuditEvent
from keycustody.types import KeyVersionInfo


class DrKMS(kc.LocalKMS):
    """A second LocalKMS, in its own folder, serving ``dr:NAME`` key ids."""

    prefix: ClassVar[str] = "dr"


def failovers(vault: kc.Vault) -> list[AuditEvent]:
    """The ``kek.failover`` events of the vault's audit trail, in order."""
    return [e for e in vault.audit.events() if e.action == "kek.failover"]


def versions(scope: kc.Scope) -> list[KeyVersionInfo]:
    return scope.keys()  # (not a dict)
