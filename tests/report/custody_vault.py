"""A vault with a custody history worth reporting, and the secrets a report must not hold.

Three tenants with KEKs of their own; rotations (scope key and KEK), a rewrap, a suspension
that is still in force, one erasure completed through phase 2 and one still pending.
"""

from __future__ import annotations

import base64
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

import keycustody as kc
from keycustody.keys.hierarchy import load_scope
from keycustody.storage.models import ScopeKeyRow

NAME_MARK = "zq-confidential-"
"""Every record name starts with this, so a report can be scanned for names."""

COUNTS = {
    "acme": 20,
    "acme/repos/api": 30,
    "acme/subjects/alice": 12,
    "acme/subjects/bob": 5,
    "globex": 25,
    "initech": 8,
    "initech/repos/legacy": 6,
}
CONFIRMED_SHRED = "acme/subjects/alice"
PENDING_SHRED = "acme/subjects/bob"
SUSPENDED = "initech"


@dataclass
class Custody:
    """The vault's history as the test made it, and what was secret in it."""

    records: dict[str, int]
    names: set[str] = field(default_factory=set)
    scope_keys: set[bytes] = field(default_factory=set)
    """Plaintext scope keys of every version that ever existed while readable."""
    kek_files: set[bytes] = field(default_factory=set)


def names_of(path: str, n: int) -> list[str]:
    slug = path.replace("/", "-")
    return [f"{NAME_MARK}{slug}-{i:03d}.md" for i in range(n)]


def collect_scope_keys(vault: kc.Vault, into: set[bytes]) -> None:
    """Adds the plaintext of every scope key version that can still be unwrapped."""
    with vault._read() as s:
        for path in vault.scopes():
            ref = load_scope(s, path)
            if ref.state != "ACTIVE":
                continue
            for version in s.scalars(
                select(ScopeKeyRow.version).where(
                    ScopeKeyRow.scope_id == ref.id, ScopeKeyRow.wrapped.is_not(None)
                )
            ):
                try:
                    key = vault._keys.key(s, ref, version)
                except kc.KeyRevokedError:
                    break  # below a suspended ancestor: collected before the suspension
                into.add(bytes(key.export_secret()))


def build(vault: kc.Vault, kms: kc.LocalKMS) -> Custody:
    """Makes the history; returns what the report must show and must not show."""
    custody = Custody(records=dict(COUNTS))
    vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
    vault.scope("globex", kek=kms.create_key("globex-kek"), create=True)
    vault.scope("initech", kek=kms.create_key("initech-kek"), create=True)
    for path, n in COUNTS.items():
        names = names_of(path, n)
        custody.names.update(names)
        vault.scope(path, create=True).put_many(
            (name, f"payload {name}\n".encode() * 3) for name in names
        )
    collect_scope_keys(vault, custody.scope_keys)

    globex = vault.scope("globex")
    globex.rotate_key()
    extra = [f"{NAME_MARK}globex-late-{i}.md" for i in range(10)]
    custody.names.update(extra)
    globex.put_many((name, b"late\n") for name in extra)
    custody.records["globex"] += len(extra)
    collect_scope_keys(vault, custody.scope_keys)
    globex.rewrap()
    vault.rotate_kek("globex", kms.create_key("globex-kek-2"))

    vault.scope(SUSPENDED).suspend(reason="tenant offboarding review")

    vault.shred(CONFIRMED_SHRED, reason="GDPR Art.17 request #123")
    vault.complete_erasures()
    collect_scope_keys(vault, custody.scope_keys)
    vault.scope("acme").rotate_key()  # acme's records now wait under a DEACTIVATED version
    collect_scope_keys(vault, custody.scope_keys)
    vault.shred(PENDING_SHRED, reason="GDPR Art.17 request #124")
    custody.kek_files = {p.read_bytes() for p in kms.path.glob("*/v*.key")}
    return custody


def stored_secrets(db_path: Path) -> set[bytes]:
    """Key material and blind indexes stored in the database now: wrapped scope keys, the
    wrapped audit key, every record's wrapped DEK and name index."""
    found: set[bytes] = set()
    conn = sqlite3.connect(db_path)
    try:
        found.update(bytes(w) for (w,) in conn.execute("SELECT wrapped FROM scope_keys") if w)
        found.update(bytes(w) for (w,) in conn.execute("SELECT wrapped FROM audit_keys"))
        for header, name_index in conn.execute("SELECT header, name_index FROM records"):
            found.add(bytes(header)[72:132])
            found.add(bytes(name_index))
    finally:
        conn.close()
    return found


def encodings(secrets: set[bytes]) -> list[bytes]:
    """Every form key material could take in a text report: each aligned 16-byte piece raw
    and in hex (both cases), each whole value in base64 (standard and URL-safe)."""
    forms: set[bytes] = set()
    for value in secrets:
        pieces = {value[i : i + 16] for i in range(0, len(value) - 15, 16)} or {value}
        for piece in pieces:
            forms.update((piece, piece.hex().encode(), piece.hex().upper().encode()))
        forms.update((base64.b64encode(value), base64.urlsafe_b64encode(value)))
    return sorted(forms)
