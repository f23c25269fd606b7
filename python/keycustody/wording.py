"""Counts in words, for the CLI's tables and the evidence report."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 record``, ``2 records``, ``3 key versions`` (``many`` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"
