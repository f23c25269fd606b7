"""Audit events, verification reports, and the canonical encoding the hash chain is built on.

Stored format (table ``audit_events``, one row per event)::

    hash = SHA-256( field("keycustody/audit-event/v1")
                    || u64be(seq)
                    || field(at)                    ISO-8601 UTC, microseconds, "Z"
                    || field(actor) || field(action) || field(subject)
                    || opt(kms_key_id) || opt(kms_key_version)
                    || field(outcome) || field(details) || field(prev_hash) )
    mac  = HMAC-SHA-256(audit key, hash)

    field(x) = u32be(len(x)) || x            (strings as UTF-8)
    opt(x)   = 0x00 if x is None else 0x01 || field(x)

Every field is length-prefixed (and nullable ones flagged), so no two different events share
an encoding. ``details`` is canonical JSON (sorted keys, no whitespace, ASCII) and is hashed
as the exact text stored. The first event's ``prev_hash`` is 32 zero bytes.

Anyone can recompute the SHA-256 chain from an export; only the holder of the audit key (held
wrapped by a KMS key) can produce a valid ``mac``, so a database administrator who edits,
inserts or re-chains events without the KMS is detected.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keycustody.errors import InvalidInputError
from keycustody.types import utc

DOMAIN = b"keycustody/audit-event/v1"
HASH_LEN = 32
GENESIS = bytes(HASH_LEN)
"""``prev_hash`` of the first event."""

OUTCOMES = frozenset({"ok", "denied", "failed"})
MAX_ACTOR = 256
MAX_ACTION = 64
MAX_SUBJECT = 1024
MAX_KMS_KEY_ID = 1024
MAX_KMS_KEY_VERSION = 256
MAX_DETAILS = 64 * 1024
"""Largest canonical JSON of ``details``, in bytes."""
_MAX_DEPTH = 16


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event of the audit trail, as stored (no key material anywhere).

    ``details`` is the canonical JSON text that was hashed; :meth:`details_dict` parses it.
    """

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    outcome: str
    kms_key_id: str | None
    kms_key_version: str | None
    details: str
    prev_hash: bytes
    hash: bytes
    mac: bytes

    def details_dict(self) -> dict[str, Any]:
        """``details`` parsed from its JSON text."""
        parsed: dict[str, Any] = json.loads(self.details)
        return parsed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (bytes as hex, time as ISO-8601 UTC), as exported."""
        return {
            "seq": self.seq,
            "at": format_at(self.at),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "outcome": self.outcome,
            "kms_key_id": self.kms_key_id,
            "kms_key_version": self.kms_key_version,
            "details": self.details_dict(),
            "prev_hash": self.prev_hash.hex(),
            "hash": self.hash.hex(),
            "mac": self.mac.hex(),
        }


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What :meth:`AuditLog.verify` found.

    Attributes:
        ok: Every event verified (and the expected head, if given, is in the chain).
        events_checked: Events that verified, from the first one on.
        head_seq: Sequence number of the last event that verified (0 if none).
        head_hash: Its hash in hex (the genesis hash, 64 zeros, if none). Store
            ``(head_seq, head_hash)`` of an ok report outside the database and pass it as
            ``expected_head`` later to detect truncation.
        first_bad_seq: Sequence number of the first broken link, or None when ok.
        reason: Why that link is broken, or None when ok.
    """

    ok: bool
    events_checked: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the report."""
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }


def format_at(at: datetime) -> str:
    """ISO-8601 in UTC with microseconds and ``Z``: ``2026-11-26T10:00:00.000001Z``."""
    return utc(at).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _field(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def _opt(text: str | None) -> bytes:
    return b"\x00" if text is None else b"\x01" + _field(text.encode("utf-8"))


def encode_event(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    kms_key_id: str | None,
    kms_key_version: str | None,
    outcome: str,
    details: str,
    prev_hash: bytes,
) -> bytes:
    """The canonical, unambiguous encoding of an event that its hash covers.

    Raises:
        UnicodeEncodeError: a text field is not valid Unicode.
        struct.error: ``seq`` is out of range.
    """
    return b"".join(
        (
            _field(DOMAIN),
            struct.pack(">Q", seq),
            _field(format_at(at).encode("ascii")),
            _field(actor.encode("utf-8")),
            _field(action.encode("utf-8")),
            _field(subject.encode("utf-8")),
            _opt(kms_key_id),
            _opt(kms_key_version),
            _field(outcome.encode("utf-8")),
            _field(details.encode("utf-8")),
            _field(prev_hash),
        )
    )


def event_hash(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    kms_key_id: str | None,
    kms_key_version: str | None,
    outcome: str,
    details: str,
    prev_hash: bytes,
) -> bytes:
    """SHA-256 of :func:`encode_event`: the event's link in the chain."""
    return hashlib.sha256(
        encode_event(
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            subject=subject,
            kms_key_id=kms_key_id,
            kms_key_version=kms_key_version,
            outcome=outcome,
            details=details,
            prev_hash=prev_hash,
        )
    ).digest()


def canonical_details(details: Mapping[str, object] | None) -> str:
    """Checks ``details`` and returns its canonical JSON text.

    Only str, int, float (finite), bool and None values, in lists and str-keyed dicts, are
    accepted: no bytes, so key material cannot slip into the trail by accident. (Plaintext
    and record names are strings and cannot be told apart: callers must not pass them.)

    Raises:
        InvalidInputError: a value of another type, bytes, a non-finite float, nesting deeper
            than 16, or more than 64 KiB of JSON.
    """
    # invariant(audit-no-secrets): no bytes-like value reaches the trail, so key material
    # (which only ever leaves Rust as bytes) cannot be logged by mistake.
    if details is None:
        return "{}"
    if not isinstance(details, Mapping):
        raise InvalidInputError(f"audit details must be a mapping, got {type(details).__name__}")
    _check_value(details, "details", 0)
    text = json.dumps(
        dict(details), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    if len(text) > MAX_DETAILS:
        raise InvalidInputError(
            f"audit details are {len(text)} bytes of JSON; at most {MAX_DETAILS}"
        )
    return text


def _check_value(value: object, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidInputError(f"audit details nest deeper than {_MAX_DEPTH} levels at {where}")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"audit details must not hold NaN or infinity ({where})")
        return
    if isinstance(value, bytes | bytearray | memoryview):
        raise InvalidInputError(
            f"audit details must not hold bytes ({where}): key material, plaintext and record "
            "names never enter the audit trail; log ids, counts or hex digests instead"
        )
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(
                    f"audit details keys must be str, got {type(key).__name__} in {where}"
                )
            _check_value(item, f"{where}.{key}", depth + 1)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]", depth + 1)
        return
    raise InvalidInputError(
        f"audit details values must be str, int, float, bool, None, list or dict; "
        f"got {type(value).__name__} at {where}"
    )


def check_text(value: object, name: str, max_len: int, *, optional: bool = False) -> None:
    """Checks one text field of an event.

    Raises:
        InvalidInputError: not a str (or None when ``optional``), empty, too long, or not
            valid Unicode.
    """
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"audit {name} must be a non-empty str")
    if len(value) > max_len:
        raise InvalidInputError(f"audit {name} is longer than {max_len} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"audit {name} must be valid Unicode") from None
