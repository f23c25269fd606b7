"""Segmented streams: large payloads written and read one 1 MiB segment at a time.

A stream record (suite 2) keeps its header and encrypted name in ``records`` and its payload
in ``segments``, one sealed 1 MiB segment per row; memory stays constant whatever the size,
and any byte range is read by opening only the segments that hold it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Protocol

from typing_extensions import Buffer

from keycustody import _core
from keycustody.errors import IntegrityError, InvalidInputError

SEGMENT_LEN = _core.SEGMENT_LEN
SUITE_SEGMENTED = 2


def segment_count(size: int) -> int:
    """Segments holding ``size`` bytes: at least one (an empty stream has one empty segment)."""
    return max(1, -(-size // SEGMENT_LEN))


class Readable(Protocol):
    """A binary file object: anything with ``read(size)`` returning bytes."""

    def read(self, size: int, /) -> bytes | None: ...


def read_segments(fileobj: Readable) -> Iterator[tuple[bytes, bool]]:
    """Yields ``(segment, last)`` pairs of exactly SEGMENT_LEN bytes (the last one shorter),
    reading one segment ahead so the last one is known when it is sealed."""
    if not callable(getattr(fileobj, "read", None)):
        raise InvalidInputError("put_stream needs a binary file object with a read() method")

    def fill() -> bytes:
        parts: list[bytes] = []
        need = SEGMENT_LEN
        while need:
            chunk = fileobj.read(need)
            if chunk is None:
                raise InvalidInputError("non-blocking file objects are not supported")
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise InvalidInputError("put_stream needs a file opened in binary mode")
            if not chunk:
                break
            parts.append(bytes(chunk))
            need -= len(chunk)
        return b"".join(parts)

    current = fill()
    while True:
        following = fill() if len(current) == SEGMENT_LEN else b""
        last = not following
        yield current, last
        if last:
            return
        current = following


class StreamReader(io.BufferedIOBase):
    """A read-only, seekable file over a stream record; opens segments on demand.

    Segment fetching is injected (``fetch(seq) -> sealed bytes``) so that each read uses a
    short database transaction of its own.
    """

    def __init__(
        self, opener: _core.StreamOpener, size: int, fetch: Callable[[int], bytes]
    ) -> None:
        super().__init__()
        self._opener = opener
        self._size = size
        self._fetch = fetch
        self._count = segment_count(size)
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def __repr__(self) -> str:
        return f"<StreamReader size={self._size} pos={self._pos}>"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise InvalidInputError(f"invalid whence {whence}")
        if base + offset < 0:
            raise InvalidInputError("negative seek position")
        self._pos = base + offset
        return self._pos

    @property
    def size(self) -> int:
        """Payload size in bytes."""
        return self._size

    def _segment(self, seq: int) -> bytes:
        if self._cached is not None and self._cached[0] == seq:
            return self._cached[1]
        last = seq == self._count - 1
        plain = self._opener.open_segment(seq, last, self._fetch(seq))
        expected = self._size - seq * SEGMENT_LEN if last else SEGMENT_LEN
        if len(plain) != expected:
            raise IntegrityError("a stream record's size does not match its segments")
        self._cached = (seq, plain)
        return plain

    def readinto(self, buffer: Buffer) -> int:
        """Fills ``buffer`` as far as the payload goes; returns the bytes read (0 at the end)."""
        view = memoryview(buffer).cast("B")
        total = 0
        while total < len(view):
            n = self._read_segment_into(view[total:])
            if n == 0:
                break
            total += n
        return total

    def readinto1(self, buffer: Buffer) -> int:
        """Reads from at most one segment."""
        return self._read_segment_into(memoryview(buffer).cast("B"))

    def read(self, size: int | None = -1) -> bytes:
        """Reads ``size`` bytes (all that is left when ``size`` is None or negative)."""
        left = max(self._size - self._pos, 0)
        n = left if size is None or size < 0 else min(size, left)
        out = bytearray(n)
        got = self.readinto(out)
        if n == 0:
            self._read_segment_into(memoryview(out))  # authenticates the end of the stream
        return bytes(out[:got])

    def read1(self, size: int = -1) -> bytes:
        """Reads from at most one segment."""
        return self.read(min(size, SEGMENT_LEN) if size >= 0 else SEGMENT_LEN)

    def readall(self) -> bytes:
        """Reads everything from the current position to the end."""
        return self.read(-1)

    def _read_segment_into(self, view: memoryview) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        if self._pos >= self._size:
            # End of stream: authenticate the final segment, so a shortened size (or an
            # emptied record) cannot end a read early without an error.
            self._segment(self._count - 1)
            return 0
        if not len(view):
            return 0
        seq, offset = divmod(self._pos, SEGMENT_LEN)
        segment = self._segment(seq)
        n = min(len(view), len(segment) - offset)
        view[:n] = segment[offset : offset + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._cached = None
        super().close()
