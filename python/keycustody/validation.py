"""Checks of caller input: record names, payloads and scope paths (clear errors, early)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from keycustody.errors import InvalidInputError

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
MAX_NAME_BYTES = 4096
MAX_RECORD_BYTES = 512 * 1024 * 1024
"""Largest payload stored inline (SQLite's own limit is 1e9 bytes per value)."""

Data = bytes | bytearray | memoryview
"""A payload: any contiguous bytes-like object."""


def encode_name(name: object) -> bytes:
    if not isinstance(name, str):
        raise InvalidInputError(f"a record name must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidInputError("a record name must not be empty")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(
            "a record name must be valid Unicode (no lone surrogates)"
        ) from None
    if len(raw) > MAX_NAME_BYTES:
        raise InvalidInputError(f"a record name is at most {MAX_NAME_BYTES} bytes of UTF-8")
    if "\x00" in name:
        raise InvalidInputError("a record name must not contain NUL characters")
    return raw


def _encode_strs(names: Sequence[Any]) -> list[bytes] | None:
    """UTF-8 of each name when all pass :func:`encode_name`'s checks, else None; checked a
    batch at a time with C-level builtins. Raises TypeError or UnicodeEncodeError for some
    invalid names: the caller then checks one by one for the precise error."""
    if "\x00" in "".join(names):  # TypeError unless every name is a str
        return None
    raw = [name.encode() for name in names]  # lone surrogates raise
    lengths = set(map(len, raw))
    return raw if 0 not in lengths and max(lengths, default=0) <= MAX_NAME_BYTES else None


def encode_names(names: Sequence[Any]) -> list[bytes]:
    """:func:`encode_name` of each name; a batch of valid names costs one pass in C."""
    try:
        raw = _encode_strs(names)
    except (TypeError, UnicodeEncodeError):
        raw = None
    return [encode_name(name) for name in names] if raw is None else raw


def check_data(data: object, max_bytes: int) -> Data:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInputError(
            f"record data must be bytes, bytearray or memoryview, got {type(data).__name__}"
        )
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_bytes:
        raise InvalidInputError(
            f"record of {size} bytes exceeds the limit of {max_bytes} bytes per record"
        )
    return data


def check_items(items: Sequence[Any], max_bytes: int) -> tuple[list[str], list[bytes], list[Data]]:
    """Validates ``(name, data)`` pairs; returns the names, their UTF-8 and the payloads.

    The common case (tuples of str and bytes) is checked a whole batch at a time with C-level
    builtins, since per-item checks cost as much as sealing a small record; anything else,
    or any failed check, goes item by item through :func:`encode_name` and
    :func:`check_data`, which raise the precise error.
    """
    if not items:
        return [], [], []
    try:
        if set(map(type, items)) == {tuple} and set(map(len, items)) == {2}:
            names, datas = zip(*items, strict=True)
            if set(map(type, datas)) <= {bytes, bytearray} and max(map(len, datas)) <= max_bytes:
                raw = _encode_strs(names)
                if raw is not None:
                    return list(names), raw, list(datas)
    except (TypeError, UnicodeEncodeError):
        pass
    names_out: list[str] = []
    raw_out: list[bytes] = []
    datas_out: list[Data] = []
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidInputError("items must be (name, data) pairs")
        raw_out.append(encode_name(item[0]))
        names_out.append(item[0])
        datas_out.append(check_data(item[1], max_bytes))
    return names_out, raw_out, datas_out


def check_path(path: object) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidInputError("a scope path must be a non-empty str like 'acme/repos/api'")
    segments = path.split("/")
    if len(segments) > 16 or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise InvalidInputError(
            f"invalid scope path {path!r}: use up to 16 '/'-separated segments of "
            "A-Z a-z 0-9 . _ @ + - (each starting with a letter or digit)"
        )
    return path


def size_of(data: Data) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)
