"""A local HTTPS stand-in for the Azure Key Vault keys REST API, for tests only.

This is not Azure and not an emulator of it: there is no Azure subscription (and no internet)
on the test machines, so the real ``azure-keyvault-keys`` SDK talks to this server on
127.0.0.1 instead, over TLS with a self-signed certificate made at test time. It serves only
what keycustody's AzureKeyVault uses, and keeps to what Azure documents for it:

- ``GET /keys/{name}[/{version}]`` (KeyBundle: public JWK and attributes; an oct-HSM key comes
  back without its material ``k``, as from a Managed HSM), ``POST .../wrapkey`` and
  ``POST .../unwrapkey`` (``{"alg", "value"}`` in, ``{"kid", "value"}`` out, base64url);
  an empty or missing version means the current one.
- Every request needs the ``api-version`` query parameter (400 ``BadParameter`` otherwise).
- Challenge-based auth as the SDK expects it: a request without a bearer token gets
  401 with ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/TENANT",
  resource="https://vault.azure.net"``; a wrong token gets 401 too.
- Soft delete, as every vault has it now: ``DELETE /keys/{name}`` deletes the key with all its
  versions and answers a DeletedKeyBundle (``recoveryId``, ``deletedDate``,
  ``scheduledPurgeDate`` = deletion + the retention period, 90 days unless set, as Unix times;
  ``attributes.recoveryLevel``); from then on every operation on the key is 404 ``KeyNotFound``
  as if it never existed. ``GET /deletedkeys/{name}`` answers the DeletedKeyBundle until the
  key is purged; ``DELETE /deletedkeys/{name}`` purges it (204), except that with purge
  protection on it is refused with 403 ``Forbidden`` ("Operation \"purge\" is not allowed
  because purge protection is enabled ..."), and the vault purges the key itself once
  ``scheduledPurgeDate`` has passed; ``POST /deletedkeys/{name}/recover`` brings the key back
  with every version (a KeyBundle of the current one).
- Errors are ``{"error": {"code", "message"[, "innererror": {"code"}]}}``: an unknown key or
  version is 404 ``KeyNotFound``; an operation on a disabled key is 403 ``Forbidden`` with inner
  code ``KeyDisabled``; a principal without ``keys/get`` gets 403 ``Forbidden`` on GET; an
  algorithm the key type does not support, or a ciphertext that does not decrypt, is 400
  ``BadParameter``; throttling is 429 ``Throttled`` with ``Retry-After``.

Error message texts are this stand-in's own wording, not Azure's. Fault injection (failing
the next calls, hanging, returning tampered key material) and the clock that tests move
forward (:meth:`AzureKeyVaultStandIn.advance`, to reach a purge date without waiting 90 days)
are for tests of the client side and have no Azure counterpart.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import re
import secrets
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)
from cryptography.x509.oid import NameOID

TOKEN = "stand-in-token"
TENANT = "00000000-0000-0000-0000-000000000000"
API_VERSIONS = frozenset(
    {"2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01"}
)
_PATH = re.compile(
    r"/keys/([A-Za-z0-9-]{1,127})(?:/([A-Za-z0-9]{0,64}))?(?:/(wrapkey|unwrapkey))?"
)
_DELETED_PATH = re.compile(r"/deletedkeys/([A-Za-z0-9-]{1,127})(/recover)?")
_PURGE_PROTECTED = (
    'Operation "purge" is not allowed because purge protection is enabled for this vault. '
    "Key Vault service will automatically purge it after the retention period has passed."
)
_OAEP_256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakeCredential:
    """A TokenCredential that hands out the stand-in's token (no Azure AD to ask here)."""

    def __init__(self) -> None:
        self.requests: list[tuple[tuple[str, ...], str | None]] = []

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        self.requests.append((scopes, tenant_id))
        return AccessToken(TOKEN, int(time.time()) + 3600)


@dataclass
class _Version:
    version: str
    kty: str  # "RSA" or "oct-HSM"
    private: rsa.RSAPrivateKey | None = None
    secret: bytes | None = None
    enabled: bool = True
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class _Deleted:
    versions: list[_Version]
    deleted: int
    scheduled_purge: int


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A CA-flagged self-signed certificate for 127.0.0.1, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keycustody azure stand-in")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "standin-cert.pem", directory / "standin-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class AzureKeyVaultStandIn:
    """The stand-in server: keys, their versions and states, and fault injection.

    Args:
        directory: Where the TLS certificate and key files are written.
    """

    def __init__(self, directory: Path) -> None:
        self.cert_path, key_path = _self_signed(directory)
        self._keys: dict[str, list[_Version]] = {}
        self._deleted: dict[str, _Deleted] = {}
        self._offset = 0.0
        self.purge_protection = False
        """Purge protection of the vault (Azure's default for a new vault: off)."""
        self.retention_days = 90
        """Soft-delete retention period, 7-90 days (Azure's default: 90)."""
        self._no_get: set[str] = set()
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self._failures: list[int] = []
        self._hang = threading.Event()
        self._release = threading.Event()
        self._tamper: bytes | None = None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``: the vault URL."""
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> AzureKeyVaultStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def reset(self) -> None:
        """Clears faults and counters, purge protection and the clock (keys stay)."""
        with self._lock:
            self.purge_protection = False
            self.retention_days = 90
            self._offset = 0.0
            self.calls.clear()
            self._failures.clear()
            self._tamper = None
            self._no_get.clear()
        self._hang.clear()
        self._release.set()
        self._release = threading.Event()

    # -- admin (what a customer does in the portal; in-process, not over HTTP) -------------

    def create_rsa_key(self, name: str, size: int = 2048) -> str:
        """Creates RSA key ``name`` (or a new version of it); returns its unversioned URL."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=size)
        self._add(name, _Version(secrets.token_hex(16), "RSA", private=private))
        return f"{self.url}/keys/{name}"

    def create_oct_key(self, name: str) -> str:
        """Creates a 256-bit oct-HSM key ``name`` (as in a Managed HSM)."""
        self._add(name, _Version(secrets.token_hex(16), "oct-HSM", secret=secrets.token_bytes(32)))
        return f"{self.url}/keys/{name}"

    def _add(self, name: str, version: _Version) -> None:
        with self._lock:
            self._auto_purge()
            if name in self._deleted:  # Azure: 409 Conflict, the name is in use until purged
                raise ValueError(f"key {name} is deleted but recoverable; recover or purge it")
            self._keys.setdefault(name, []).append(version)

    def rotate_key(self, name: str) -> str:
        """Adds a new current version of the same type; returns it."""
        current = self._keys[name][-1]
        if current.kty == "RSA":
            self.create_rsa_key(name)
        else:
            self.create_oct_key(name)
        return self._keys[name][-1].version

    def versions(self, name: str) -> list[str]:
        return [v.version for v in self._keys[name]]

    def set_enabled(self, name: str, enabled: bool, version: str | None = None) -> None:
        """Enables or disables one version, or every version of the key."""
        with self._lock:
            for v in self._keys[name]:
                if version is None or v.version == version:
                    v.enabled = enabled

    def delete_key(self, name: str) -> None:
        """Removes the key for good, as a delete and a purge together."""
        with self._lock:
            del self._keys[name]

    def now(self) -> float:
        """The stand-in's clock (Unix time), :meth:`advance` d by the tests."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Moves the stand-in's clock forward (to reach a purge date)."""
        with self._lock:
            self._offset += seconds

    def is_deleted(self, name: str) -> bool:
        """Whether ``name`` is in the deleted-keys collection (soft-deleted, not purged)."""
        with self._lock:
            self._auto_purge()
            return name in self._deleted

    def _auto_purge(self) -> None:
        """What the vault does on its own: purge deleted keys whose date has passed."""
        now = self.now()
        for name in [n for n, d in self._deleted.items() if d.scheduled_purge <= now]:
            del self._deleted[name]

    def forbid_get(self, name: str) -> None:
        """The caller's principal lacks ``keys/get`` on this key (wrap/unwrap still allowed)."""
        with self._lock:
            self._no_get.add(name)

    # -- faults --------------------------------------------------------------------------

    def fail_next(self, statuses: list[int]) -> None:
        """Answers the next wrap/unwrap/get requests with these statuses (429, 500, 503)."""
        with self._lock:
            self._failures.extend(statuses)

    def hang(self) -> None:
        """Accepts requests and never answers them (until :meth:`reset`)."""
        self._hang.set()

    def tamper_next_unwrap(self, value: bytes) -> None:
        """The next successful unwrap answers ``value`` instead of the real key material."""
        with self._lock:
            self._tamper = value

    # -- request handling -----------------------------------------------------------------

    def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        api = query.get("api-version", [None])[0]
        if api is None or api not in API_VERSIONS:
            return _error(
                400, "BadParameter", "The api-version query parameter is missing or not supported."
            )
        if headers.get("authorization") != f"Bearer {TOKEN}":
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                'resource="https://vault.azure.net"'
            )
            status, payload, extra = _error(
                401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."
            )
            return status, payload, {**extra, "WWW-Authenticate": challenge}
        d = _DELETED_PATH.fullmatch(parts.path)
        if d is not None:
            return self._deleted_op(method, d.group(1), bool(d.group(2)))
        m = _PATH.fullmatch(parts.path)
        if m is None:
            return _error(404, "NotFound", "No such operation.")
        if method == "DELETE" and m.group(2) is None and m.group(3) is None:
            return self._delete(m.group(1))
        name, version, op = m.group(1), m.group(2) or None, m.group(3) or "get"
        if op == "get" and version in ("wrapkey", "unwrapkey"):  # /keys/NAME/wrapkey
            version, op = None, version
        if (method, op) not in {("GET", "get"), ("POST", "wrapkey"), ("POST", "unwrapkey")}:
            return _error(405, "MethodNotAllowed", "Method not allowed.")
        self.calls[op] += 1
        if self._hang.is_set():
            self._release.wait(timeout=60)
            return 0, None, {}
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            codes = {429: "Throttled", 500: "InternalServerError", 503: "ServiceUnavailable"}
            status, payload, extra = _error(failure, codes.get(failure, "Error"), "Injected.")
            return status, payload, {**extra, "Retry-After": "0"} if failure == 429 else extra
        with self._lock:
            versions = self._keys.get(name)
            entry = None
            if versions:
                entry = (
                    versions[-1]
                    if version is None
                    else next((v for v in versions if v.version == version), None)
                )
            forbidden_get = name in self._no_get
        if entry is None:
            return _not_found(name)
        kid = f"{self.url}/keys/{name}/{entry.version}"
        operation = {"get": "get", "wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}[op]
        if op == "get" and forbidden_get:
            return _error(
                403,
                "Forbidden",
                "The user, group or application does not have keys get permission on key vault.",
                inner="ForbiddenByPolicy",
            )
        if not entry.enabled:
            return _error(
                403,
                "Forbidden",
                f"Operation {operation} is not allowed on a disabled key.",
                inner="KeyDisabled",
            )
        if op == "get":
            return 200, self._bundle(entry, kid), {}
        try:
            request = json.loads(body)
            alg, value = request["alg"], unb64url(request["value"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "BadParameter", "The request body is not valid.")
        result = self._crypt(entry, op, alg, value)
        if result is None:
            return _error(
                400,
                "BadParameter",
                f"The {operation} operation failed for this key with algorithm {alg}.",
            )
        if op == "unwrapkey":
            with self._lock:
                tampered, self._tamper = self._tamper, None
            result = tampered if tampered is not None else result
        return 200, {"kid": kid, "value": b64url(result)}, {}

    def _delete(self, name: str) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        self.calls["delete"] += 1
        with self._lock:
            versions = self._keys.pop(name, None)
            if versions is None:
                return _not_found(name)
            now = int(self.now())
            deleted = _Deleted(versions, now, now + self.retention_days * 86400)
            self._deleted[name] = deleted
        return 200, self._deleted_bundle(name, deleted), {}

    def _deleted_op(
        self, method: str, name: str, recover: bool
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        op = "recover" if recover else {"GET": "get_deleted", "DELETE": "purge"}.get(method)
        if op is None or (recover and method != "POST"):
            return _error(405, "MethodNotAllowed", "Method not allowed.")
        self.calls[op] += 1
        with self._lock:
            self._auto_purge()
            deleted = self._deleted.get(name)
            if deleted is None:
                return _error(404, "KeyNotFound", f"Deleted Key not found: {name}")
            if op == "get_deleted":
                return 200, self._deleted_bundle(name, deleted), {}
            if op == "purge":
                if self.purge_protection:
                    return _error(403, "Forbidden", _PURGE_PROTECTED)
                del self._deleted[name]
                return 204, None, {}
            del self._deleted[name]
            self._keys[name] = deleted.versions
            current = deleted.versions[-1]
        return 200, self._bundle(current, f"{self.url}/keys/{name}/{current.version}"), {}

    def _deleted_bundle(self, name: str, deleted: _Deleted) -> dict[str, Any]:
        current = deleted.versions[-1]
        bundle = self._bundle(current, f"{self.url}/keys/{name}/{current.version}")
        bundle["attributes"]["recoveryLevel"] = (
            "Recoverable" if self.purge_protection else "Recoverable+Purgeable"
        )
        bundle["attributes"]["recoverableDays"] = self.retention_days
        return {
            **bundle,
            "recoveryId": f"{self.url}/deletedkeys/{name}",
            "deletedDate": deleted.deleted,
            "scheduledPurgeDate": deleted.scheduled_purge,
        }

    @staticmethod
    def _bundle(entry: _Version, kid: str) -> dict[str, Any]:
        key: dict[str, Any] = {"kid": kid, "kty": entry.kty}
        if entry.private is not None:
            numbers = entry.private.public_key().public_numbers()
            key["n"] = b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))
            key["e"] = b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"))
            key["key_ops"] = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
        else:
            key["key_ops"] = ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
        return {
            "key": key,
            "attributes": {
                "enabled": entry.enabled,
                "created": entry.created,
                "updated": entry.created,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": {},
        }

    @staticmethod
    def _crypt(entry: _Version, op: str, alg: str, value: bytes) -> bytes | None:
        try:
            if entry.private is not None and alg == "RSA-OAEP-256":
                if op == "wrapkey":
                    return entry.private.public_key().encrypt(value, _OAEP_256)
                return entry.private.decrypt(value, _OAEP_256)
            if entry.secret is not None and alg == "A256KW":
                if op == "wrapkey":
                    return aes_key_wrap(entry.secret, value)
                return aes_key_unwrap(entry.secret, value)
        except (ValueError, InvalidUnwrap):
            return None
        return None


def _error(
    status: int, code: str, message: str, *, inner: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        error["innererror"] = {"code": inner}
    return status, {"error": error}, {}


def _not_found(name: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    return _error(
        404,
        "KeyNotFound",
        f"A key with (name/id) {name} was not found in this key vault. If you recently "
        "deleted this key you may be able to recover it using the correct recovery command.",
    )


def _handler(standin: AzureKeyVaultStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload, extra = standin._handle(method, self.path, headers, body)
            if status == 0:  # hung: drop the connection without an answer
                self.close_connection = True
                return
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", secrets.token_hex(8))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
