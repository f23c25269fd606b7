"""The package's namespace: classes that import SQLAlchemy or a KMS SDK load on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import keycustody
from keycustody.kms.local import LocalKMS
from keycustody.vault import Vault


def test_every_public_name_resolves_and_is_listed() -> None:
    for name in keycustody.__all__:
        assert getattr(keycustody, name) is not None, name
    assert set(keycustody.__all__) <= set(dir(keycustody))
    assert keycustody.Vault is Vault
    assert keycustody.LocalKMS is LocalKMS


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Vaultt'"):
        _ = keycustody.Vaultt


def test_importing_the_package_does_not_load_sqlalchemy_until_a_class_is_used() -> None:
    code = (
        "import sys, keycustody\n"
        "from keycustody import IntegrityError\n"
        "assert 'sqlalchemy' not in sys.modules\n"
        "from keycustody import Vault\n"
        "assert 'sqlalchemy' in sys.modules and Vault.__module__ == 'keycustody.vault'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
