"""In-memory cache of unwrapped scope keys (as Rust handles), bounded by age and use count.

A KEK disabled in the KMS stops working here after at most ``ttl`` seconds; suspend and shred
purge entries at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from keycustody._core import KeyHandle
from keycustody.errors import ConfigError


@dataclass(slots=True)
class _Entry:
    handle: KeyHandle
    expires_at: float
    uses_left: int


class KeyCache:
    """Unwrapped scope keys by ``(scope_id, version)``, each kept at most ``ttl`` seconds.

    Args:
        ttl: Seconds an unwrapped key stays cached; 0 disables caching.
        max_uses: Lookups an entry serves before it must be unwrapped again.
    """

    def __init__(self, ttl: float = 300.0, max_uses: int = 1_000_000) -> None:
        if ttl < 0 or max_uses < 1:
            raise ConfigError("cache_ttl must be >= 0 and max_key_uses >= 1")
        self.ttl = ttl
        self.max_uses = max_uses
        self._entries: dict[tuple[bytes, int], _Entry] = {}
        self._lock = threading.Lock()

    def get(self, scope_id: bytes, version: int) -> KeyHandle | None:
        """The cached handle, or None when absent, expired or used up."""
        key = (scope_id, version)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires_at <= time.monotonic() or entry.uses_left <= 0:
                del self._entries[key]
                return None
            entry.uses_left -= 1
            return entry.handle

    def put(self, scope_id: bytes, version: int, handle: KeyHandle) -> None:
        """Caches ``handle`` (no-op when caching is disabled)."""
        if self.ttl == 0:
            return
        with self._lock:
            self._entries[(scope_id, version)] = _Entry(
                handle, time.monotonic() + self.ttl, self.max_uses
            )

    def purge(self, scope_ids: set[bytes] | None = None) -> None:
        """Drops the entries of ``scope_ids``, or every entry."""
        with self._lock:
            if scope_ids is None:
                self._entries.clear()
            else:
                for key in [k for k in self._entries if k[0] in scope_ids]:
                    del self._entries[key]
