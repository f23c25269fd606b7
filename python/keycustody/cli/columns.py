"""Plain, aligned text columns for listings that can run to 100,000 lines.

A rich Table measures every cell and renders about 1 ms a row: 50 s for 50,000 records, and 12 s
for `keycustody keys` over 10,000 scopes. These lines take milliseconds.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

Cell = str | tuple[str, str]
"""A cell's text, or its text and the same text styled (``click.style``); ``click.echo`` drops
the styling when the output is not a terminal."""


def columns(
    header: Sequence[str], rows: Sequence[Sequence[Cell]], right: Container[int] = ()
) -> list[str]:
    """The header and each row as a line: columns two spaces apart, right-aligned where their
    index is in ``right``; a last column aligned left is not padded (names and KEK ids go last,
    so a long one needs no folding). Cells must already be safe for a terminal
    (``terminal_safe``)."""
    texts = [[c if isinstance(c, str) else c[0] for c in row] for row in rows]
    widths = [max(map(len, column)) for column in zip(header, *texts, strict=True)]
    last = len(header) - 1

    def line(cells: Sequence[Cell], plain: Sequence[str]) -> str:
        out = []
        for i, (cell, text) in enumerate(zip(cells, plain, strict=True)):
            pad = " " * (widths[i] - len(text)) if i < last or i in right else ""
            shown = text if isinstance(cell, str) else cell[1]
            out.append(pad + shown if i in right else shown + pad)
        return "  ".join(out)

    return [line(header, header)] + [line(r, t) for r, t in zip(rows, texts, strict=True)]
