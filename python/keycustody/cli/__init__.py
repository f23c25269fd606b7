"""The ``keycustody`` command line (``demo``, ``ingest``, ``get``, ``ls``).

Run ``keycustody --help``; the commands live in :mod:`keycustody.cli.commands`.
"""

from __future__ import annotations

from keycustody.cli.commands import EXIT_CODES, app


def main() -> None:
    """Entry point of the ``keycustody`` console script."""
    app(prog_name="keycustody")


__all__ = ["EXIT_CODES", "app", "main"]
