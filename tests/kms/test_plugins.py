"""Third-party KMS providers through the ``keycustody.kms`` entry point group, and ``kms check``.

The plugin is a real installed distribution (a ``.dist-info`` with ``entry_points.txt`` on
``sys.path``), found by importlib.metadata exactly as a pip-installed one would be.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import keycustody as kc
from keycustody.cli.commands import app
from keycustody.kms import plugins

PLUGIN = '''
import os
from typing import ClassVar
from keycustody.kms.local import LocalKMS

class ThirdPartyKMS(LocalKMS):
    """A stand-in third-party provider: LocalKMS under another prefix."""
    prefix: ClassVar[str] = "thirdparty"

    def __init__(self) -> None:
        super().__init__(os.environ["THIRDPARTY_KMS_DIR"])
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    dist = site / "keycustody_thirdparty-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: keycustody-thirdparty\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[keycustody.kms]\nthirdparty = keycustody_thirdparty:ThirdPartyKMS\n"
    )
    (site / "keycustody_thirdparty.py").write_text(textwrap.dedent(PLUGIN))
    keys = tmp_path / "thirdparty-keys"
    monkeypatch.setenv("THIRDPARTY_KMS_DIR", str(keys))
    monkeypatch.syspath_prepend(str(site))
    yield keys
    sys.modules.pop("keycustody_thirdparty", None)


def test_plugin_is_found_and_works_in_a_vault(installed_plugin: Path, tmp_path: Path) -> None:
    assert "thirdparty" in plugins.plugin_names()
    provider = plugins.provider("thirdparty")
    kek = provider.create_key("acme")  # type: ignore[attr-defined]
    assert kek == "thirdparty:acme"
    local = kc.LocalKMS(tmp_path / "local")
    with kc.Vault.open(f"sqlite:///{tmp_path}/v.db", kms=[provider, local]) as vault:
        vault.scope("acme", kek=kek, create=True).put("a", b"through a plugin")
    with kc.Vault.open(f"sqlite:///{tmp_path}/v.db", kms=[provider, local]) as vault:
        assert vault.scope("acme").get("a") == b"through a plugin"


def test_unknown_and_broken_providers_are_config_errors(
    installed_plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(kc.ConfigError, match="thirdparty"):  # the message lists what exists
        plugins.provider("nope")
    monkeypatch.delenv("THIRDPARTY_KMS_DIR")
    with pytest.raises(kc.ConfigError, match="failed to load"):
        plugins.provider("thirdparty")
    monkeypatch.delenv("KEYCUSTODY_PKCS11_LIB", raising=False)
    with pytest.raises(kc.ConfigError, match="KEYCUSTODY_PKCS11_LIB"):
        plugins.provider("pkcs11")
    with pytest.raises(kc.ConfigError, match="no KMS provider"):
        plugins.providers(" , ")


def test_cli_kms_check_and_providers(installed_plugin: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    kms_dir = tmp_path / "keys"
    kc.LocalKMS(kms_dir).create_key("acme")
    ok = runner.invoke(app, ["--kms-dir", str(kms_dir), "kms", "check", "local:acme"])
    assert ok.exit_code == 0, ok.output
    assert "3 ok" in ok.output
    plugins.provider("thirdparty").create_key("t")  # type: ignore[attr-defined]
    via_plugin = runner.invoke(
        app,
        ["--kms-dir", str(kms_dir), "--kms", "local,thirdparty", "kms", "check", "thirdparty:t"],
    )
    assert via_plugin.exit_code == 0, via_plugin.output
    missing = runner.invoke(app, ["--kms-dir", str(kms_dir), "kms", "check", "local:none"])
    assert missing.exit_code == 3
    unrouted = runner.invoke(app, ["--kms-dir", str(kms_dir), "kms", "check", "gcp:x"])
    assert unrouted.exit_code == 2
    listed = runner.invoke(app, ["kms", "providers"])
    assert "thirdparty\tplugin" in listed.output
