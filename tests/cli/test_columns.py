"""keycustody.cli.columns: the plain columns of `ls`, `keys` and `usage`."""

from __future__ import annotations

import click
import pytest

from keycustody.cli.columns import columns


def test_columns_align_and_leave_the_last_one_unpadded() -> None:
    lines = columns(["size", "name"], [["1", "a"], ["1,234", "longer name"]], right=(0,))
    assert lines == [" size  name", "    1  a", "1,234  longer name"]


def test_a_right_aligned_last_column_is_padded() -> None:
    assert columns(["scope", "denied"], [["acme", "0"]], right=(1,)) == [
        "scope  denied",
        "acme        0",
    ]


def test_styled_cells_are_measured_by_their_text() -> None:
    styled = click.style("ACTIVE", fg="green")
    lines = columns(["state", "scope"], [[("ACTIVE", styled), "acme"], ["DEACTIVATED", "b"]])
    assert lines[1] == f"{styled}       acme"
    assert click.unstyle(lines[1]).index("acme") == lines[2].index("b") == lines[0].index("scope")


def test_empty_listings_and_ragged_rows() -> None:
    assert columns(["a", "b"], []) == ["a  b"]
    with pytest.raises(ValueError):
        columns(["a", "b"], [["only one"]])
