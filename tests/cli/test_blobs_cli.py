"""``--blob-store`` / KEYCUSTODY_BLOB_STORE: ingest, get and purge with large files kept in a
local blob store or in S3 (moto's server over HTTP)."""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from keycustody.cli import app
from keycustody.storage.blobs import LocalBlobStore, open_blob_store

BIG = 5 * 1024 * 1024  # above the default 4 MiB threshold


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, bytes]:
    files = {
        "src/app.py": b"print('hello')\n",
        "data/model.bin": random.Random(5).randbytes(BIG),
    }
    for name, data in files.items():
        path = tmp_path / "tree" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _runner(tmp_path: Path, **extra: str) -> Any:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {
        "KEYCUSTODY_DB": f"sqlite:///{tmp_path / 'db' / 'vault.db'}",
        "KEYCUSTODY_KMS_DIR": str(tmp_path / "keys"),
        "KEYCUSTODY_ACTOR": "tests@keycustody",
        **extra,
    }

    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(app, list(args), env=env, input=input)

    return invoke


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def test_blob_store_option_round_trip(
    tmp_path: Path, tree: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = _runner(tmp_path)
    store_url = f"file://{tmp_path / 'blobs'}"

    _ok(run("--blob-store", store_url, "ingest", str(tmp_path / "tree"), "--scope", "acme"))

    store = LocalBlobStore(tmp_path / "blobs")
    (only,) = list(store.list())
    assert only.size == BIG + 16
    for name, data in tree.items():
        got = _ok(run("--blob-store", store_url, "get", name, "--scope", "acme", "-f"))
        assert got.stdout_bytes == data
    # Without the store the large record cannot be read, and the error says which one.
    missing = run("get", "data/model.bin", "--scope", "acme", "-f")
    assert missing.exit_code == 2
    assert "blob_store" in missing.stderr and only.key.split("/")[1] in missing.stderr
    assert "model.bin" not in missing.stderr

    store.put(f"{only.key.split('/')[0]}/{os.urandom(16).hex()}", b"left by a crash")
    purged = _ok(run("--blob-store", store_url, "purge", "--yes", "--orphan-grace", "0"))
    assert "removed 1 orphaned blobs" in purged.stdout
    assert [i.key for i in store.list()] == [only.key]


def test_blob_store_from_the_environment_on_s3(
    tmp_path: Path, tree: dict[str, bytes], moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.chdir(tmp_path)
    bucket = f"kc-cli-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=moto_url).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    url = f"s3://{bucket}/prod?endpoint={moto_url}"
    run = _runner(tmp_path, KEYCUSTODY_BLOB_STORE=url)

    _ok(run("ingest", str(tmp_path / "tree"), "--scope", "acme"))

    assert [i.size for i in open_blob_store(url).list()] == [BIG + 16]
    got = _ok(run("get", "data/model.bin", "--scope", "acme", "-f"))
    assert got.stdout_bytes == tree["data/model.bin"]
