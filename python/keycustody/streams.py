"""Segmented streams: large payloads written one 1 MiB segment at a time, read a few at once.

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
TAG_LEN = _core.TAG_LEN
SUITE_SEGMENTED = 2
READ_AHEAD = 4
"""Most segments a reader fetches and opens at once (in parallel across cores), reached by
doubling while it reads sequentially; a random access opens one. 4 MiB windows keep both
cores busy; larger ones only cost memory."""


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

    Segment fetching is injected (``fetch(first, n) -> n sealed segments back to back``) so
    that each read uses a short database transaction of its own. The reader keeps one window
    of opened segments; sequential reads double it up to :data:`READ_AHEAD` segments. A read
    into a buffer that holds whole segments opens them straight into it.

    Reads raise :class:`~keycustody.errors.IntegrityError` when a segment fails
    authentication, and :class:`~keycustody.errors.StorageError` when the database or blob
    store fails (the fetch converts it).
    """

    def __init__(
        self, opener: _core.StreamOpener, size: int, fetch: Callable[[int, int], bytes]
    ) -> None:
        super().__init__()
        self._opener = opener
        self._size = size
        self._fetch = fetch
        self._count = segment_count(size)
        self._pos = 0
        self._window: tuple[int, int, bytes] | None = None  # first segment, count, plaintext
        self._ahead = 1
        self._end_verified = False  # the final segment has authenticated

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

    def _open(self, seq: int) -> tuple[int, bytes]:
        """The window holding segment ``seq``, and where that segment starts in it."""
        window = self._window
        if window is not None and window[0] <= seq < window[0] + window[1]:
            return (seq - window[0]) * SEGMENT_LEN, window[2]
        sequential = window is not None and seq == window[0] + window[1]
        self._ahead = min(self._ahead * 2, READ_AHEAD) if sequential else 1
        n = min(self._ahead, self._count - seq)
        last = seq + n == self._count
        plain = self._opener.open_segments(seq, last, self._fetched(seq, n))
        self._end_verified |= last
        self._window = (seq, n, plain)
        return 0, plain

    def _plain_len(self, seq: int, n: int) -> int:
        """Payload bytes in segments ``seq`` to ``seq + n - 1`` (the final one may be short)."""
        return min(n * SEGMENT_LEN, self._size - seq * SEGMENT_LEN)

    def _fetched(self, seq: int, n: int) -> bytes:
        """Sealed segments ``seq`` to ``seq + n - 1``, checked against the record's size."""
        sealed = self._fetch(seq, n)
        if len(sealed) - n * TAG_LEN != self._plain_len(seq, n):
            raise IntegrityError("a stream record's size does not match its segments")
        return sealed

    def _open_into(self, seq: int, view: memoryview) -> int:
        """Opens the whole segments from ``seq`` that fit in ``view`` straight into it (no
        window, no copy); returns the bytes written (0 if not even one fits)."""
        n = min(len(view) // SEGMENT_LEN, READ_AHEAD, self._count - seq)
        if n == 0 and len(view) >= self._plain_len(seq, 1):
            n = 1  # the final, shorter segment fits
        if n == 0:
            return 0
        last = seq + n == self._count
        length = self._plain_len(seq, n)
        self._opener.open_segments_into(seq, last, self._fetched(seq, n), view[:length])
        self._end_verified |= last
        return length

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
        """Reads from at most one window of opened segments."""
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
        """Reads at most one segment's worth of bytes."""
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
            if not self._end_verified:
                self._open(self._count - 1)
            return 0
        if not len(view):
            return 0
        seq, offset = divmod(self._pos, SEGMENT_LEN)
        window = self._window
        if offset == 0 and (window is None or not window[0] <= seq < window[0] + window[1]):
            written = self._open_into(seq, view)
            if written:
                self._pos += written
                return written
        start, plain = self._open(seq)
        start += offset
        n = min(len(view), len(plain) - start)
        view[:n] = memoryview(plain)[start : start + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._window = None
        super().close()
