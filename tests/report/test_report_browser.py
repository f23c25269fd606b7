"""report.html in a real browser: headless Chromium dumps the DOM (the key facts are on the
page) and takes a screenshot (the page and its SVG timeline really render).

Skipped only when Chromium is not installed (a failure instead when
KEYCUSTODY_REQUIRE_CHROMIUM=1); CI installs it with .ci/chromium-setup.sh.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from custody_vault import CONFIRMED_SHRED, NAME_MARK, PENDING_SHRED, SUSPENDED, build

import keycustody as kc
from keycustody.report import ReportPaths, write_report

BROWSERS = ("chromium", "chromium-browser")
WIDTH, HEIGHT = 1280, 4200
SVG_ONLY = {
    "KEK rotated": (0x82, 0x50, 0xDF),
    "records rewrapped": (0x1B, 0x7C, 0x83),
    "scope created": (0x2D, 0xA4, 0x4E),
    "suspended period": (0xFF, 0xE8, 0xB3),
}
"""Colours used only by the timeline's markers and bands (not by the page's CSS)."""


def chromium() -> str:
    """The Chromium binary; skips without one, unless CI demands it."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    reason = "Chromium is not installed (Debian: apt-get install chromium)"
    if os.environ.get("KEYCUSTODY_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"{reason}; KEYCUSTODY_REQUIRE_CHROMIUM=1 demands it (.ci/chromium-setup.sh)")
    pytest.skip(reason)


def headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Runs headless Chromium with a private profile (no sandbox: CI runs as root)."""
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, timeout=180, check=True)


# -- a small PNG reader (8-bit RGB/RGBA, as Chromium writes screenshots) --------------------


def _add(a: int, b: int, low: int, high: int) -> int:
    """Bytewise a + b (mod 256) of two byte strings held as ints, with no carry between."""
    return ((a & low) + (b & low)) ^ ((a ^ b) & high)


def read_png(data: bytes) -> tuple[int, int, list[bytes], int]:
    """(width, height, rows of pixel bytes, bytes per pixel) of a non-interlaced 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]
        pos += 12 + size
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and interlace == 0 and colour in (2, 6), "unexpected PNG format"
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(b"".join(chunks))
    low = int.from_bytes(b"\x7f" * stride, "little")
    high = int.from_bytes(b"\x80" * stride, "little")
    mask = (1 << (8 * stride)) - 1
    rows: list[bytes] = []
    prev = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], raw[start + 1 : start + 1 + stride]
        if kind == 0:
            row = line
        elif kind == 1:  # Sub: a prefix sum per channel, by doubling
            x, shift = int.from_bytes(line, "little"), 8 * bpp
            while shift < 8 * stride:
                x = _add(x, (x << shift) & mask, low, high)
                shift *= 2
            row = x.to_bytes(stride, "little")
        elif kind == 2:  # Up
            x = _add(int.from_bytes(line, "little"), int.from_bytes(prev, "little"), low, high)
            row = x.to_bytes(stride, "little")
        else:  # Average, Paeth
            out = bytearray(line)
            for i in range(stride):
                a = out[i - bpp] if i >= bpp else 0
                b = prev[i]
                if kind == 3:
                    out[i] = (out[i] + ((a + b) >> 1)) & 0xFF
                    continue
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                out[i] = (out[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
            row = bytes(out)
        rows.append(row)
        prev = row
    return width, height, rows, bpp


def colours(rows: list[bytes], bpp: int) -> Counter[tuple[int, int, int]]:
    counts: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        for i in range(0, len(row), bpp):
            counts[(row[i], row[i + 1], row[i + 2])] += 1
    return counts


# -- the test -------------------------------------------------------------------------------


@pytest.fixture
def browser() -> str:
    """The Chromium binary (checked before any vault is built)."""
    return chromium()


@pytest.fixture
def report(
    browser: str, vault: kc.Vault, kms: kc.LocalKMS, tmp_path: Path
) -> tuple[ReportPaths, Any]:
    build(vault, kms)
    paths = write_report(vault, tmp_path / "out")
    return paths, json.loads(paths.json.read_bytes())


def test_report_opens_in_chromium_with_its_facts_and_a_rendered_timeline(
    browser: str, report: tuple[ReportPaths, Any], tmp_path: Path
) -> None:
    paths, facts = report
    url = paths.html.resolve().as_uri()

    dom = headless(browser, tmp_path / "p1", "--dump-dom", url).stdout.decode("utf-8")
    text = re.sub(r"<[^>]+>", " ", dom)
    for fact in (
        facts["summary"]["headline"],
        paths.json_sha256,
        facts["audit"]["head_hash"],
        "AMBER",
        CONFIRMED_SHRED,
        PENDING_SHRED,
        "local:acme-kek",
        "local:globex-kek-2",
        "GDPR Art.17 request #124",
        "Security configuration",
        "secure_delete" if facts["config"]["storage"]["backend"] == "sqlite" else "VACUUM FULL",
    ):
        assert fact in dom, fact
    for certificate in facts["certificates"]:
        assert certificate["certificate_id"] in text
    assert re.search(r"initech\s*</strong>\s*</td>\s*<td>\s*<span class=\"badge st-suspended", dom)
    assert SUSPENDED in text
    assert NAME_MARK not in dom
    svg = re.search(r'<svg id="timeline".*?</svg>', dom, re.S)
    assert svg is not None, "no timeline SVG in the DOM"
    assert svg.group(0).count('<g class="ev ') == len(facts["timeline"])
    for kind in ("created", "rotated", "kek_rotated", "suspended", "shredded", "phase2"):
        assert f'class="ev ev-{kind}"' in svg.group(0), kind

    shot = tmp_path / "report.png"
    headless(
        browser,
        tmp_path / "p2",
        f"--screenshot={shot}",
        f"--window-size={WIDTH},{HEIGHT}",
        url,
    )
    width, height, rows, bpp = read_png(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    counts = colours(rows, bpp)
    assert len(counts) > 500, "the screenshot is (almost) a single colour"
    (background, most), *_ = counts.most_common(1)
    assert most < 0.9 * width * height, f"{background} covers most of the screenshot"
    for what, rgb in SVG_ONLY.items():
        assert counts[rgb] >= 20, f"the timeline's {what} marker did not render"
