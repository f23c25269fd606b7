"""boto3 and botocore, imported on first use so that keycustody works without them."""

from __future__ import annotations

from types import SimpleNamespace

from keycustody.errors import ConfigError


def load(user: str) -> SimpleNamespace:
    """``boto3``, ``Config`` (botocore.config) and ``exc`` (botocore.exceptions).

    Raises:
        ConfigError: boto3 is not installed; the message names ``user`` and the extra.
    """
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise ConfigError(
            f"{user} needs boto3, which is not installed: pip install 'keycustody[aws]'"
        ) from None
    return SimpleNamespace(boto3=boto3, Config=botocore.config.Config, exc=botocore.exceptions)
