"""The whole exception hierarchy of keycustody (the Rust core raises these too).

Messages never contain key bytes, plaintext, record names or associated data.
"""

from __future__ import annotations


class KeyCustodyError(Exception):
    """Base class of every error keycustody raises."""


class InvalidInputError(KeyCustodyError, ValueError):
    """An argument has the wrong type, size or value."""


class ConfigError(KeyCustodyError):
    """The vault, a provider or a key id is misconfigured."""


class NotFoundError(KeyCustodyError, KeyError):
    """The scope, record or key does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class IntegrityError(KeyCustodyError):
    """Tampered or misplaced ciphertext, header, wrapped key or associated data."""


class KmsError(KeyCustodyError):
    """The KMS provider failed (after retries where retrying makes sense)."""


class KmsUnavailableError(KmsError):
    """The KMS could not be reached or is throttling; the operation may be retried."""


class UnsupportedKeyIdError(KmsError, ConfigError):
    """No configured provider handles this key id's prefix."""


class KeyRevokedError(KeyCustodyError):
    """The scope is suspended or its KEK is disabled: nothing may be encrypted or decrypted."""


class ConcurrentRotationError(KeyCustodyError):
    """Another process rotated the same key first; retry the rotation (it is safe)."""


class ShreddedError(KeyCustodyError):
    """The key was destroyed (crypto-shredded); the data can never be read again."""


class StorageError(KeyCustodyError):
    """The database or blob store failed; nothing was half-written.

    A database failure's message is the driver's own (chained to the SQLAlchemy error),
    never SQLAlchemy's text, which echoes the statement's parameters."""


class OutputError(StorageError):
    """A file keycustody was asked to write (e.g. a report) could not be written; any
    previous version of it is left as it was."""


class BlobMissingError(StorageError, IntegrityError):
    """A record's ciphertext is missing from the blob store (deleted, or the wrong store)."""


class AuditError(KeyCustodyError):
    """The audit trail could not be written or does not verify."""


__all__ = [
    "AuditError",
    "BlobMissingError",
    "ConcurrentRotationError",
    "ConfigError",
    "IntegrityError",
    "InvalidInputError",
    "KeyCustodyError",
    "KeyRevokedError",
    "KmsError",
    "KmsUnavailableError",
    "NotFoundError",
    "OutputError",
    "ShreddedError",
    "StorageError",
    "UnsupportedKeyIdError",
]
