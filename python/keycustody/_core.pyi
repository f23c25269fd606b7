"""Stub of the Rust extension ``keycustody._core`` (AES-256-GCM records, keys held in Rust)."""

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, final

from typing_extensions import Buffer

_Out = TypeVar("_Out", bound=Buffer)

__all__ = [
    "HEADER_LEN",
    "SCOPE_ID_LEN",
    "SEGMENT_LEN",
    "TAG_LEN",
    "KeyHandle",
    "StreamOpener",
    "StreamSealer",
    "aes256gcm_open",
    "aes256gcm_seal",
    "begin_stream",
    "check_rows",
    "header_key_versions",
    "open_blobs",
    "open_derived",
    "open_items",
    "open_names",
    "open_records",
    "open_stream",
    "rewrap_headers",
    "seal_blobs",
    "seal_derived",
    "seal_items",
    "seal_records",
]

HEADER_LEN: int
TAG_LEN: int
SCOPE_ID_LEN: int
SEGMENT_LEN: int

@final
class KeyHandle:
    """An opaque 32- or 64-byte secret key held in Rust and zeroized when dropped."""

    @staticmethod
    def generate(size: int = 64) -> KeyHandle:
        """A fresh key from the OS CSPRNG: 64 bytes for scope keys, 32 for KEKs."""

    @staticmethod
    def from_secret(secret: Buffer) -> KeyHandle:
        """Copies 32 or 64 bytes into a handle; the caller wipes its own buffer."""

    def export_secret(self) -> bytearray:
        """The key bytes, for a KMS SDK that needs them. Wipe the bytearray after use."""

    def rotated(self) -> KeyHandle:
        """A new scope key version: fresh wrapping half, same name-index half."""

    def wrap(self, child: KeyHandle, aad: Buffer) -> bytes:
        """Wraps ``child`` with AES-256-GCM under this key, bound to ``aad``."""

    def unwrap(self, wrapped: Buffer, aad: Buffer) -> KeyHandle:
        """Unwraps a key made by :meth:`wrap`.

        Raises:
            IntegrityError: the wrapped key or ``aad`` does not match.
        """

    def name_index(self, name: Buffer) -> bytes:
        """HMAC-SHA-256 blind index of ``name`` under the name-index half."""

    def name_indexes(self, names: Sequence[Buffer]) -> list[bytes]:
        """:meth:`name_index` of each name, in order, in one call."""

    def mac(self, msg: Buffer) -> bytes:
        """HMAC-SHA-256 of ``msg`` under the whole key (seals audit events)."""

    @property
    def size(self) -> int:
        """Key length in bytes."""

def aes256gcm_seal(key: Buffer, nonce: Buffer, aad: Buffer, plaintext: Buffer) -> bytes:
    """Raw AES-256-GCM: returns ``ciphertext || tag``. Only 12-byte nonces are accepted.

    Raises:
        InvalidInputError: wrong key or nonce size.
    """

def aes256gcm_open(key: Buffer, nonce: Buffer, aad: Buffer, ciphertext: Buffer) -> bytes:
    """Raw AES-256-GCM decryption of ``ciphertext || tag``.

    Raises:
        IntegrityError: the tag does not verify.
        InvalidInputError: wrong key or nonce size.
    """

def seal_blobs(
    key: KeyHandle,
    scope_id: Buffer,
    version: int,
    names: Sequence[Buffer],
    datas: Sequence[Buffer],
) -> list[bytes]:
    """Seals each ``(name, data)`` into a self-contained ``header || ciphertext || tag`` blob."""

def seal_items(
    key: KeyHandle,
    scope_id: Buffer,
    version: int,
    items: list[Any],
    max_bytes: int,
) -> list[bytes] | None:
    """:func:`seal_blobs` of ``(name, data)`` pairs, read and checked in the same call: None
    unless every item is a pair of a non-empty ``str`` name (at most 4,096 bytes of UTF-8, no
    NUL) and bytes, bytearray or memoryview data of at most ``max_bytes``."""

def open_blobs(
    scope_id: Buffer,
    keys: Mapping[int, KeyHandle],
    names: Sequence[Buffer],
    blobs: Sequence[Buffer],
) -> list[bytes]:
    """Opens blobs from :func:`seal_blobs`; ``keys`` maps scope key versions to handles.

    Raises:
        IntegrityError: a blob does not authenticate (``.index`` names its position).
    """

def seal_records(
    key: KeyHandle,
    scope_id: Buffer,
    version: int,
    names: Sequence[Buffer],
    datas: Sequence[Buffer],
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Seals records for storage; returns ``(headers, encrypted_names, bodies)``."""

def open_records(
    scope_id: Buffer,
    keys: Mapping[int, KeyHandle],
    names: Sequence[Buffer],
    headers: Sequence[Buffer],
    bodies: Sequence[Buffer],
) -> list[bytes]:
    """Opens stored records, checking each name against its header's blind index.

    Raises:
        IntegrityError: a record does not authenticate (``.index`` names its position).
    """

def open_items(
    scope_id: Buffer,
    keys_for: Callable[[set[int]], Mapping[int, KeyHandle]],
    items: list[Any],
    max_bytes: int,
) -> list[bytes] | None:
    """:func:`open_blobs` of ``(name, blob)`` pairs checked as :func:`seal_items` checks its
    own (None unless each passes), with the handles of the key versions the headers name
    from ``keys_for(versions)``.

    Raises:
        IntegrityError: a header is malformed, or a blob does not open under its name.
    """

def open_names(
    scope_id: Buffer,
    keys: Mapping[int, KeyHandle],
    headers: Sequence[Buffer],
    name_cts: Sequence[Buffer],
) -> list[bytes]:
    """Decrypts stored names and checks each against its header's blind index."""

def rewrap_headers(
    scope_id: Buffer,
    keys: Mapping[int, KeyHandle],
    new_key: KeyHandle,
    new_version: int,
    headers: Sequence[Buffer],
) -> list[bytes]:
    """Rewraps records' DEKs under ``new_key``; payload ciphertexts stay valid."""

def check_rows(rows: Sequence[object]) -> bytes:
    """The suite byte of each stored row's header, checking that the row's lookup columns
    (attributes ``record_id``, ``name_index`` and ``key_version``, None for 0) are the
    header's own.

    Raises:
        IntegrityError: a row's columns do not match its header, or are not bytes and an
            integer (``.index`` names its position).
    """

def header_key_versions(headers: Sequence[Buffer]) -> set[int]:
    """The scope key versions headers name (not authenticated on their own); a blob that
    starts with a header counts as its header.

    Raises:
        IntegrityError: a header is malformed (``.index`` names its position).
    """

@final
class StreamSealer:
    """Seals the segments of one segmented-stream record (suite 2), in order."""

    def seal_segment(self, data: Buffer, last: bool) -> bytes:
        """Seals the next segment; every segment but the last is exactly ``SEGMENT_LEN`` bytes.

        Raises:
            InvalidInputError: wrong segment size, or the stream is already finished.
        """

    @property
    def segments(self) -> int:
        """Segments sealed so far."""

@final
class StreamOpener:
    """Opens the segments of one stream record, in any order."""

    def open_segments(self, first: int, last: bool, sealed: Buffer | list[bytes]) -> bytes:
        """Opens consecutive segments from ``first``, in parallel: ``sealed`` holds them back
        to back (every one but the final one ``SEGMENT_LEN + TAG_LEN`` bytes), or is a list
        of one sealed segment per item. ``last`` says whether the final one is the stream's
        last. Returns the plaintexts back to back.

        Raises:
            IntegrityError: a segment was altered, moved, or its position or flag is wrong
                (nothing of the batch is returned).
        """

    def open_segments_into(
        self, first: int, last: bool, sealed: Buffer | list[bytes], out: Buffer | list[_Out]
    ) -> None:
        """As :meth:`open_segments`, into ``out``: a writable contiguous buffer of exactly the
        plaintext's length, or a list of them filled in order, every one but the final one
        holding whole segments (e.g. the caller's buffer, then a read-ahead window). All are
        zeroed if a segment fails.

        Raises:
            IntegrityError: as :meth:`open_segments`.
            InvalidInputError: ``out`` is read-only, not contiguous, of another length, or
                splits a segment between two buffers.
        """

    def read_segments_into(
        self,
        path: str | os.PathLike[str],
        first: int,
        last: bool,
        out: Buffer | list[_Out],
        ahead: int = 0,
    ) -> None:
        """Reads consecutive sealed segments from ``first`` out of the file at ``path`` (a
        local blob store's object: the stream's sealed segments back to back from offset 0)
        and opens them into ``out``, a writable contiguous buffer of their plaintext length
        or a list of them filled in order: whole segments, but for a final one when ``last``
        (the stream's last). Each segment is read by the task that opens it, on several
        cores, so it is decrypted while still in cache. All of ``out`` is zeroed if a segment
        fails.

        ``ahead``: the sealed length of the segment after these (0: none), read meanwhile
        on another core and kept (ciphertext only) for the next call that starts there; a
        failure to read it is left to that call, which reads again.

        Raises:
            IntegrityError: a segment was altered or moved, its position or flag is wrong, or
                the file ends before the segments asked for.
            InvalidInputError: ``out`` is read-only, not contiguous, splits a segment between
                two buffers, or ends with a partial segment that is not the stream's last;
                ``ahead`` is longer than a sealed segment, or given with ``last``.
            OSError: the file cannot be opened or read (FileNotFoundError when missing).
        """

def begin_stream(
    key: KeyHandle, scope_id: Buffer, version: int, name: Buffer
) -> tuple[bytes, bytes, StreamSealer]:
    """Starts a stream record: returns ``(header, encrypted_name, sealer)``."""

def open_stream(
    scope_id: Buffer, keys: Mapping[int, KeyHandle], name: Buffer | None, header: Buffer
) -> StreamOpener:
    """Checks a stream record's header (scope, name, commitment) and returns its opener.

    Raises:
        IntegrityError: the header does not authenticate or names another record.
    """

def seal_derived(
    scope_id: Buffer,
    keys: Mapping[int, KeyHandle],
    source_name: Buffer,
    source_header: Buffer,
    names: Sequence[Buffer],
    datas: Sequence[Buffer],
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Seals records derived from a source record (suite 3): their DEKs are wrapped under a
    key derived from the source's DEK. Returns ``(headers, encrypted_names, bodies)``.

    Raises:
        IntegrityError: the source header does not authenticate under ``source_name``.
    """

def open_derived(
    scope_id: Buffer,
    keys: Mapping[int, KeyHandle],
    source_header: Buffer,
    names: Sequence[Buffer] | None,
    headers: Sequence[Buffer],
    bodies: Sequence[Buffer],
) -> list[bytes]:
    """Opens derived records through their source's header: payloads (with ``names``) or,
    with ``names=None`` and the encrypted names as ``bodies``, their names.

    Raises:
        IntegrityError: a record does not authenticate (``.index`` names its position).
    """
