"""KMS test servers and provider harnesses: moto's KMS behind an AWS-faithful proxy, the Azure
Key Vault stand-in, and one :class:`Harness` per provider for the contract suite.

Adding a provider to tests/kms/test_contract.py is one fixture: write a function returning (or
yielding) a :class:`Harness` and decorate it with ``@harness("name")``.

Why a proxy in front of moto (5.2, measured): moto still answers Encrypt/Decrypt under a
disabled key or a key pending deletion, answers AccessDeniedException where AWS answers
IncorrectKeyException, and its DisableKey takes only the bare key id. The proxy answers those
cases as AWS documents them, forwards everything else to moto unchanged, and injects faults
(throttling, 5xx, a hanging server, tampered plaintext) while counting the attempts it sees.
moto never deletes a key pending deletion and its clock cannot be moved, so the proxy has a
clock of its own (:meth:`KmsProxy.advance`): once a key's DeletionDate has passed on it, every
request naming the key gets ``NotFoundException``, as AWS answers for a deleted key.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from keycustody.kms.aws import AwsKMS
from keycustody.kms.azure import AzureKeyVault
from keycustody.kms.base import KmsProvider
from keycustody.kms.local import LocalKMS
from keycustody.kms.retry import RetryPolicy
from keycustody.types import KeyId

if TYPE_CHECKING:
    from azure_standin import AzureKeyVaultStandIn

# boto3, moto and the Azure SDK are imported inside the fixtures that need them, so that the
# other tests in this directory (LocalKMS, PKCS#11) run without the cloud extras.

REGION = "eu-west-1"
FAST_RETRIES = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05, total_timeout=10.0)
"""Short delays so that retry tests run fast; the same attempt cap as the default."""
CLOUD_TIMEOUT = 2.0
"""Per-attempt timeout of the cloud providers in the harnesses (seconds)."""

_counter = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test in this session uses."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def fast_retries() -> RetryPolicy:
    """:data:`FAST_RETRIES`."""
    return FAST_RETRIES


@pytest.fixture
def dead_endpoint() -> str:
    """An http:// URL on 127.0.0.1 where connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


# -- AWS: moto server (aws_env and moto_url live in tests/conftest.py) + proxy ---------------


@pytest.fixture(scope="session")
def aws_region() -> str:
    """The region of the moto keys (:data:`REGION`)."""
    return REGION


@pytest.fixture(scope="session")
def aws_admin(moto_url: str) -> Any:
    """A boto3 KMS client straight to moto: the customer's console (create keys, aliases)."""
    import boto3

    return boto3.client("kms", region_name=REGION, endpoint_url=moto_url)


class KmsProxy:
    """HTTP proxy to moto that answers as AWS KMS documents, and injects faults."""

    def __init__(self, upstream: str, admin: Any) -> None:
        split = urlsplit(upstream)
        self._upstream = (split.hostname or "127.0.0.1", split.port or 80)
        self._admin = admin
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self._faults: list[tuple[int, str]] = []
        self._tamper: bytes | None = None
        self._hang = threading.Event()
        self._release = threading.Event()
        self._offset = timedelta()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> KmsProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self._faults.clear()
            self._tamper = None
            self._offset = timedelta()
        self._hang.clear()
        self._release.set()
        self._release = threading.Event()

    def fail_next(self, n: int, kind: str = "throttle") -> None:
        """The next ``n`` requests fail: ``throttle`` (400 ThrottlingException), ``internal``
        (500 KMSInternalException), ``dependency`` (500 DependencyTimeoutException),
        ``unavailable`` (503 without a KMS error body), ``denied`` (400 AccessDenied)."""
        statuses = {
            "throttle": (400, "ThrottlingException"),
            "internal": (500, "KMSInternalException"),
            "dependency": (500, "DependencyTimeoutException"),
            "unavailable": (503, ""),
            "denied": (400, "AccessDeniedException"),
        }
        with self._lock:
            self._faults.extend([statuses[kind]] * n)

    def hang(self) -> None:
        """Accept requests and never answer (until :meth:`reset`)."""
        self._hang.set()

    def tamper_next_decrypt(self, plaintext: bytes) -> None:
        """The next successful Decrypt answers ``plaintext`` instead of the real one."""
        with self._lock:
            self._tamper = plaintext

    def advance(self, delta: timedelta) -> None:
        """Moves the proxy's clock forward: keys whose DeletionDate it passes are deleted."""
        with self._lock:
            self._offset += delta

    def now(self) -> datetime:
        """The proxy's clock."""
        return datetime.now(UTC) + self._offset

    # -- the AWS side ---------------------------------------------------------------------

    def _key_meta(self, key: str) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = self._admin.describe_key(KeyId=key)["KeyMetadata"]
        except self._admin.exceptions.NotFoundException:
            return None
        return meta

    def handle(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes] | None:
        op = headers.get("x-amz-target", "").rpartition(".")[2]
        with self._lock:
            self.calls[op] += 1
            fault = self._faults.pop(0) if self._faults else None
        if self._hang.is_set():
            self._release.wait(timeout=60)
            return None
        if fault is not None:
            status, code = fault
            if not code:
                return status, {"Content-Type": "text/html"}, b"<html>Service Unavailable</html>"
            return _aws_error(status, code, "Injected by the test proxy.")
        request = json.loads(body or b"{}")
        meta = self._key_meta(request["KeyId"]) if "KeyId" in request else None
        deletion = meta.get("DeletionDate") if meta is not None else None
        if meta is not None and deletion is not None and deletion <= self.now():
            return _aws_error(400, "NotFoundException", f"Key '{meta['Arn']}' does not exist")
        if op in {"Encrypt", "Decrypt", "GenerateDataKey", "ReEncrypt"} and meta is not None:
            arn = meta["Arn"]
            if meta["KeyState"] == "Disabled":
                return _aws_error(400, "DisabledException", f"{arn} is disabled.")
            if meta["KeyState"] == "PendingDeletion":
                return _aws_error(400, "KMSInvalidStateException", f"{arn} is pending deletion.")
            if op == "Decrypt":
                del request["KeyId"]
                status, reply_headers, reply = self._forward(path, headers, json.dumps(request))
                if status != 200:
                    return status, reply_headers, reply
                answer = json.loads(reply)
                if answer.get("KeyId") != arn:
                    return _aws_error(
                        400,
                        "IncorrectKeyException",
                        "The key ID in the request does not identify a KMS key that can "
                        "perform this operation.",
                    )
                with self._lock:
                    tamper, self._tamper = self._tamper, None
                if tamper is not None:
                    answer["Plaintext"] = base64.b64encode(tamper).decode()
                    return 200, reply_headers, json.dumps(answer).encode()
                return status, reply_headers, reply
        return self._forward(path, headers, body)

    def _forward(
        self, path: str, headers: dict[str, str], body: bytes | str
    ) -> tuple[int, dict[str, str], bytes]:
        data = body.encode() if isinstance(body, str) else body
        conn = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            sent = {
                k: v
                for k, v in headers.items()
                if k not in {"host", "content-length", "connection"}
            }
            sent["Content-Length"] = str(len(data))
            conn.request("POST", path, body=data, headers=sent)
            response = conn.getresponse()
            reply = response.read()
            content_type = response.getheader("Content-Type") or "application/x-amz-json-1.1"
            return response.status, {"Content-Type": content_type}, reply
        finally:
            conn.close()


def _aws_error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"__type": code, "message": message}).encode()
    return status, {"Content-Type": "application/x-amz-json-1.1"}, body


def _proxy_handler(proxy: KmsProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = proxy.handle(self.path, headers, body)
            if answer is None:  # hung: drop the connection without an answer
                self.close_connection = True
                return
            status, reply_headers, reply = answer
            self.send_response(status)
            for name, value in reply_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.send_header("x-amzn-RequestId", "keycustody-test-proxy")
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="session")
def _kms_proxy(moto_url: str, aws_admin: Any) -> Iterator[KmsProxy]:
    proxy = KmsProxy(moto_url, aws_admin).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def kms_proxy(_kms_proxy: KmsProxy) -> Iterator[KmsProxy]:
    """The proxy, with no faults and zeroed counters for this test."""
    _kms_proxy.reset()
    yield _kms_proxy
    _kms_proxy.reset()


@pytest.fixture
def new_aws_key(aws_admin: Any) -> Callable[..., KeyId]:
    """Creates a KMS key in moto; returns ``aws:<key ARN>`` (or ``aws:alias/NAME``)."""

    def create(alias: str | None = None) -> KeyId:
        arn = aws_admin.create_key(Description="keycustody test KEK")["KeyMetadata"]["Arn"]
        if alias is None:
            return KeyId(f"aws:{arn}")
        aws_admin.create_alias(AliasName=f"alias/{alias}", TargetKeyId=arn)
        return KeyId(f"aws:alias/{alias}")

    return create


@pytest.fixture
def aws_kms(kms_proxy: KmsProxy) -> AwsKMS:
    """AwsKMS over real HTTP to the proxy (and moto behind it), credentials from the env."""
    return AwsKMS(REGION, endpoint_url=kms_proxy.url, retries=FAST_RETRIES, timeout=CLOUD_TIMEOUT)


# -- Azure: the HTTPS stand-in --------------------------------------------------------------


@pytest.fixture(scope="session")
def _azure_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureKeyVaultStandIn]:
    from azure_standin import AzureKeyVaultStandIn

    standin = AzureKeyVaultStandIn(tmp_path_factory.mktemp("azure-standin")).start()
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture
def azure_standin(_azure_standin: AzureKeyVaultStandIn) -> Iterator[AzureKeyVaultStandIn]:
    """The stand-in, with no faults and zeroed counters for this test."""
    _azure_standin.reset()
    yield _azure_standin
    _azure_standin.reset()


def azure_options(standin: AzureKeyVaultStandIn) -> dict[str, Any]:
    """Client options for the stand-in: trust its certificate; its host is not vault.azure.net,
    so the SDK's check that the auth challenge names the vault's domain is switched off."""
    return {"connection_verify": str(standin.cert_path), "verify_challenge_resource": False}


@pytest.fixture
def azure_kms(azure_standin: AzureKeyVaultStandIn) -> AzureKeyVault:
    """AzureKeyVault with the real SDK over HTTPS to the stand-in, and a fake credential."""
    from azure_standin import FakeCredential

    return AzureKeyVault(
        FakeCredential(),
        client_options=azure_options(azure_standin),
        retries=FAST_RETRIES,
        timeout=CLOUD_TIMEOUT,
    )


# -- provider harnesses for the contract suite ---------------------------------------------


@dataclass
class Harness:
    """What the contract suite needs from a provider and its KMS."""

    name: str
    provider: KmsProvider
    new_key: Callable[[], KeyId]
    """Creates a fresh KEK and returns its id."""
    disable: Callable[[KeyId], None]
    enable: Callable[[KeyId], None]
    bad_material: Callable[[KeyId, bytes], None]
    """Makes the KMS hand back wrong key material (or an unusable key) on the next unwrap."""
    outage: Callable[[], contextlib.AbstractContextManager[None]] | None = None
    """Makes the KMS hang for the duration (None: an embedded KMS cannot be unreachable)."""
    timeout: float | None = None
    """The provider's configured per-attempt timeout, for outage bounds."""
    audit_kms: list[KmsProvider] = field(default_factory=list)
    """Providers a Vault needs besides this one (LocalKMS for the audit key)."""


HARNESSES: list[str] = []


def harness(name: str) -> Callable[[Callable[..., Harness | Iterator[Harness]]], Any]:
    """Registers a harness fixture ``<name>_harness`` for the contract suite."""

    def register(fn: Callable[..., Harness | Iterator[Harness]]) -> Any:
        HARNESSES.append(name)
        return pytest.fixture(name=f"{name}_harness")(fn)

    return register


@harness("local")
def _local_harness(tmp_path: Path) -> Harness:
    kms = LocalKMS(tmp_path / "contract-keys")

    def bad_material(key_id: KeyId, value: bytes) -> None:
        version = kms.describe_key(key_id)["primary"]
        (kms.path / key_id.removeprefix("local:") / f"v{version}.key").write_bytes(value)

    return Harness(
        name="local",
        provider=kms,
        new_key=lambda: kms.create_key(unique("kek")),
        disable=kms.disable_key,
        enable=kms.enable_key,
        bad_material=bad_material,
    )


@harness("aws")
def _aws_harness(
    aws_kms: AwsKMS, kms_proxy: KmsProxy, new_aws_key: Callable[..., KeyId], tmp_path: Path
) -> Harness:
    @contextlib.contextmanager
    def outage() -> Iterator[None]:
        kms_proxy.hang()
        try:
            yield
        finally:
            kms_proxy.reset()

    return Harness(
        name="aws",
        provider=aws_kms,
        new_key=new_aws_key,
        disable=aws_kms.disable_key,
        enable=aws_kms.enable_key,
        bad_material=lambda key_id, value: kms_proxy.tamper_next_decrypt(value),
        outage=outage,
        timeout=aws_kms.timeout,
        audit_kms=[LocalKMS(tmp_path / "audit-keys")],
    )


@harness("azure")
def _azure_harness(
    azure_kms: AzureKeyVault, azure_standin: AzureKeyVaultStandIn, tmp_path: Path
) -> Harness:
    def name_of(key_id: KeyId) -> str:
        return key_id.rstrip("/").rpartition("/keys/")[2].partition("/")[0]

    @contextlib.contextmanager
    def outage() -> Iterator[None]:
        azure_standin.hang()
        try:
            yield
        finally:
            azure_standin.reset()

    return Harness(
        name="azure",
        provider=azure_kms,
        new_key=lambda: KeyId(f"azure:{azure_standin.create_rsa_key(unique('kek'))}"),
        disable=lambda key_id: azure_standin.set_enabled(name_of(key_id), False),
        enable=lambda key_id: azure_standin.set_enabled(name_of(key_id), True),
        bad_material=lambda key_id, value: azure_standin.tamper_next_unwrap(value),
        outage=outage,
        timeout=azure_kms.timeout,
        audit_kms=[LocalKMS(tmp_path / "audit-keys")],
    )


@harness("pkcs11")
def _pkcs11_harness(tmp_path: Path) -> Iterator[Harness]:
    """A private SoftHSM2 token (skipped without SoftHSM2 unless KEYCUSTODY_REQUIRE_SOFTHSM=1)."""
    from softhsm import PIN, import_key, require, softhsm

    from keycustody.kms.pkcs11 import Pkcs11KMS

    require()
    from pkcs11 import Attribute, ObjectClass

    with softhsm(tmp_path / "softhsm") as hsm:
        hsm.init_token("kc-contract")
        kms = Pkcs11KMS(hsm.lib, "kc-contract", PIN)

        def bad_material(key_id: KeyId, value: bytes) -> None:
            # An HSM never hands key bytes back: what goes wrong is the key object itself.
            # An administrator swaps version 1 of the key for another AES key (the given
            # bytes when they make one, random ones otherwise).
            label = key_id.removeprefix("pkcs11:")
            session = hsm.session("kc-contract")
            try:
                template = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
                for obj in list(session.get_objects(template)):
                    obj.destroy()
                import_key(
                    session, label, 1, value if len(value) in (16, 24, 32) else os.urandom(32)
                )
            finally:
                session.close()

        yield Harness(
            name="pkcs11",
            provider=kms,
            new_key=lambda: kms.create_key(unique("kek")),
            disable=kms.disable_key,
            enable=kms.enable_key,
            bad_material=bad_material,
            audit_kms=[LocalKMS(tmp_path / "audit-keys")],
        )


@pytest.fixture(params=HARNESSES)
def provider_harness(request: pytest.FixtureRequest) -> Harness:
    """Each registered provider in turn."""
    result: Harness = request.getfixturevalue(f"{request.param}_harness")
    return result
