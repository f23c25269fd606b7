"""KMS providers by name: the built-in ones and third-party plugins (entry points).

A third-party provider (GCP KMS, Vault Transit, ...) ships a class implementing
:class:`~keycustody.kms.base.KmsProvider` and declares it in its package metadata::

    [project.entry-points."keycustody.kms"]
    gcp = "keycustody_gcp:GcpKMS"

``provider("gcp")`` then loads and instantiates it with no arguments (a plugin reads its own
configuration, e.g. from the environment), and the CLI accepts ``--kms local,gcp``.
Built-in providers are configured from the environment here:

- ``local``: LocalKMS in the CLI's ``--kms-dir``.
- ``aws``: AwsKMS, region from ``AWS_REGION``/``AWS_DEFAULT_REGION``, endpoint from
  ``KEYCUSTODY_AWS_ENDPOINT``, the waiting period of key deletions scheduled by erasure phase 2
  from ``KEYCUSTODY_AWS_DELETION_DAYS`` (7-30, default 30; credentials: boto3's usual chain).
- ``azure``: AzureKeyVault with azure-identity's DefaultAzureCredential.
- ``pkcs11``: Pkcs11KMS from ``KEYCUSTODY_PKCS11_LIB``, ``KEYCUSTODY_PKCS11_TOKEN`` and
  ``KEYCUSTODY_PKCS11_PIN``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from keycustody.errors import ConfigError
from keycustody.kms.base import KmsProvider
from keycustody.kms.local import LocalKMS

ENTRY_POINT_GROUP = "keycustody.kms"


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"set {name} to use this KMS provider")
    return value


def _aws(_kms_dir: Path) -> KmsProvider:
    module = importlib.import_module("keycustody.kms.aws")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    days = os.environ.get("KEYCUSTODY_AWS_DELETION_DAYS") or "30"
    if not days.isdigit():
        raise ConfigError("KEYCUSTODY_AWS_DELETION_DAYS must be a number of days (7-30)")
    provider: KmsProvider = module.AwsKMS(
        region=region,
        endpoint_url=os.environ.get("KEYCUSTODY_AWS_ENDPOINT"),
        deletion_window_days=int(days),
    )
    return provider


def _azure(_kms_dir: Path) -> KmsProvider:
    module = importlib.import_module("keycustody.kms.azure")
    provider: KmsProvider = module.AzureKeyVault()
    return provider


def _pkcs11(_kms_dir: Path) -> KmsProvider:
    from keycustody.kms.pkcs11 import Pkcs11KMS

    return Pkcs11KMS(
        lib=_env("KEYCUSTODY_PKCS11_LIB"),
        token_label=_env("KEYCUSTODY_PKCS11_TOKEN"),
        pin=_env("KEYCUSTODY_PKCS11_PIN"),
    )


BUILTIN: dict[str, Callable[[Path], KmsProvider]] = {
    "local": LocalKMS,
    "aws": _aws,
    "azure": _azure,
    "pkcs11": _pkcs11,
}


def plugin_names() -> list[str]:
    """Names of the third-party providers installed (entry point group ``keycustody.kms``)."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def provider(name: str, *, kms_dir: Path | None = None) -> KmsProvider:
    """A provider by name: built-in (configured from the environment) or a plugin.

    Raises:
        ConfigError: unknown name, a plugin that fails to load, or missing configuration.
    """
    name = name.strip()
    if name in BUILTIN:
        return BUILTIN[name](kms_dir or Path(".keycustody/keys"))
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        known = ", ".join([*BUILTIN, *plugin_names()])
        raise ConfigError(f"unknown KMS provider {name!r} (available: {known})")
    try:
        loaded = found[0].load()()
    except Exception as exc:  # a third party's failure, reported as configuration
        raise ConfigError(
            f"KMS plugin {name!r} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(loaded, KmsProvider):
        raise ConfigError(f"KMS plugin {name!r} does not implement the KmsProvider protocol")
    return loaded


def providers(spec: str, *, kms_dir: Path | None = None) -> list[KmsProvider]:
    """Providers for a comma-separated spec like ``local,aws`` (order: routing preference)."""
    names = [n for n in (part.strip() for part in spec.split(",")) if n]
    if not names:
        raise ConfigError("no KMS provider named; e.g. --kms local or --kms local,aws")
    return [provider(n, kms_dir=kms_dir) for n in dict.fromkeys(names)]
