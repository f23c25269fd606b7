"""Checks of caller input: record names, payloads and scope paths (clear errors, early)."""

from __future__ import annotations

import re

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
