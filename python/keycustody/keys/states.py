"""Key states and the transitions allowed between them (NIST SP 800-57 Pt 1 §7).

Scope key versions move PRE_ACTIVE -> ACTIVE -> DEACTIVATED -> DESTROYED, with COMPROMISED
reachable from any live state; DESTROYED is terminal and keeps its metadata. Scopes are ACTIVE,
SUSPENDED (revoked: nothing under them encrypts or decrypts) or SHREDDED. An erasure's phase 2
goes PENDING -> SCHEDULED -> CONFIRMED, or to CANCELLED.
"""

from __future__ import annotations

from typing import Final

from keycustody.errors import InvalidInputError

PRE_ACTIVE: Final = "PRE_ACTIVE"
ACTIVE: Final = "ACTIVE"
SUSPENDED: Final = "SUSPENDED"
DEACTIVATED: Final = "DEACTIVATED"
COMPROMISED: Final = "COMPROMISED"
DESTROYED: Final = "DESTROYED"
SHREDDED: Final = "SHREDDED"

KEY_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    PRE_ACTIVE: frozenset({ACTIVE, COMPROMISED, DESTROYED}),
    ACTIVE: frozenset({SUSPENDED, DEACTIVATED, COMPROMISED, DESTROYED}),
    SUSPENDED: frozenset({ACTIVE, DEACTIVATED, COMPROMISED, DESTROYED}),
    DEACTIVATED: frozenset({COMPROMISED, DESTROYED}),
    COMPROMISED: frozenset({DESTROYED}),
    DESTROYED: frozenset(),
}
"""Allowed key-state edges (TESTPLAN §3.1)."""

SCOPE_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    ACTIVE: frozenset({SUSPENDED, SHREDDED}),
    SUSPENDED: frozenset({ACTIVE, SHREDDED}),
    SHREDDED: frozenset(),
}

DECRYPTS: Final = frozenset({ACTIVE, DEACTIVATED})
"""Key states whose keys may unwrap (COMPROMISED only through re-encryption)."""


def check_key_transition(old: str, new: str) -> None:
    """Raises InvalidInputError unless a key may go from ``old`` to ``new``."""
    if new not in KEY_TRANSITIONS.get(old, frozenset()):
        raise InvalidInputError(f"a key cannot go from {old} to {new}")


def check_scope_transition(old: str, new: str) -> None:
    """Raises InvalidInputError unless a scope may go from ``old`` to ``new``."""
    if new not in SCOPE_TRANSITIONS.get(old, frozenset()):
        raise InvalidInputError(f"a scope cannot go from {old} to {new}")


PENDING: Final = "pending"
SCHEDULED: Final = "scheduled"
CONFIRMED: Final = "confirmed"
CANCELLED: Final = "cancelled"
"""Phase 2 statuses of an erasure: pending -> scheduled (KMS waiting period) -> confirmed; a
scheduled destruction that was cancelled in the KMS makes it ``cancelled`` (backups readable
again)."""
