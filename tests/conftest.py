"""Shared fixtures: a real LocalKMS directory and a real file-backed SQLite vault per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import keycustody as kc

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")


@pytest.fixture
def kms(tmp_path: Path) -> kc.LocalKMS:
    """A LocalKMS in its own directory, outside the database's folder."""
    return kc.LocalKMS(tmp_path / "keys")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the test's SQLite database lives."""
    folder = tmp_path / "db"
    folder.mkdir()
    return folder / "ctx.db"


@pytest.fixture
def db_url(db_path: Path) -> str:
    """SQLAlchemy URL of the test database."""
    return f"sqlite:///{db_path}"


@pytest.fixture
def vault(db_url: str, kms: kc.LocalKMS) -> Iterator[kc.Vault]:
    """An open vault, closed after the test."""
    with kc.Vault.open(db_url, kms=kms) as v:
        yield v


@pytest.fixture
def acme(vault: kc.Vault, kms: kc.LocalKMS) -> kc.Scope:
    """Tenant ``acme`` with a KEK of its own."""
    kek = kms.create_key("acme-kek")
    return vault.scope("acme", kek=kek, create=True)


# -- AWS: moto's server over real HTTP (KMS tests in tests/kms, S3 blob store tests) --------

AWS_REGION = "eu-west-1"
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": AWS_REGION,
    "AWS_DEFAULT_REGION": AWS_REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Dummy credentials and no config files: boto3 can never reach a real AWS account."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _AWS_ENV.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        yield


@pytest.fixture(scope="session")
def moto_url(aws_env: None) -> Iterator[str]:
    """moto's server (``moto[server]``) on 127.0.0.1, a free port, for the whole session;
    boto3 and moto are imported only by the tests that use it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
