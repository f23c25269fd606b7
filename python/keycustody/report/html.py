"""Renders report facts as one self-contained HTML page (:func:`render`).

Inline CSS and an inline SVG timeline; no script, no font, no image or link fetched from
anywhere, so the page opens offline in any browser and prints as an audit document. Every
value from the facts goes through :func:`html.escape` (scope paths, reasons and actors are
user data).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any, Final

from keycustody.report.facts import (
    BAD,
    OK,
    WARN,
    CertificateFacts,
    ReportFacts,
    ScopeFacts,
    TimelineEvent,
)

# -- small helpers --------------------------------------------------------------------------

_NONE: Final = "&ndash;"
"""Shown for a missing value."""


def e(value: object) -> str:
    """``value`` as escaped HTML text (None as an en dash)."""
    return _NONE if value is None else escape(str(value), quote=True)


def _n(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else e(value)


def _size(n: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    size = float(n)
    for unit in units:
        if size < 1024 or unit == units[-1]:
            return f"{n:,} B" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n:,} B"  # pragma: no cover - the loop always returns


def _parse(at: str | None) -> datetime | None:
    if not at:
        return None
    try:
        return datetime.fromisoformat(at).astimezone(UTC)
    except ValueError:
        return None


def _when(at: object) -> str:
    parsed = _parse(at) if isinstance(at, str) else None
    if parsed is None:
        return e(at)
    return (
        f'<span class="when">{e(parsed.strftime("%Y-%m-%d %H:%M:%S"))}'
        '<span class="tz"> UTC</span></span>'
    )


def _code(value: object) -> str:
    # Short ids stay on one line; hashes and long ids may wrap.
    nowrap = ' class="nw"' if len(str(value)) <= 40 else ""
    return f"<code{nowrap}>{e(value)}</code>"


def _detail(value: object) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


_STATE_CLASS: Final = {
    "ACTIVE": "st-active",
    "DEACTIVATED": "st-deactivated",
    "SUSPENDED": "st-suspended",
    "COMPROMISED": "st-compromised",
    "DESTROYED": "st-destroyed",
    "SHREDDED": "st-shredded",
    "PRE_ACTIVE": "st-preactive",
    "confirmed": "st-active",
    "scheduled": "st-deactivated",
    "pending": "st-suspended",
}


def _badge(state: object) -> str:
    cls = _STATE_CLASS.get(str(state), "st-other")
    return f'<span class="badge {cls}">{e(state)}</span>'


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """A table; ``head`` and ``rows`` are HTML already escaped by the caller."""
    numeric = [h.startswith("#") for h in head]
    ths = "".join(
        f'<th class="num">{h[1:]}</th>' if num else f"<th>{h}</th>"
        for h, num in zip(head, numeric, strict=True)
    )
    body = []
    for row in rows:
        tds = "".join(
            f'<td class="num">{c}</td>' if num else f"<td>{c}</td>"
            for c, num in zip(row, numeric, strict=True)
        )
        body.append(f"<tr>{tds}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(head)}" class="empty">none</td></tr>')
    return (
        f'<table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _dl(items: Iterable[tuple[str, str]], cls: str = "facts") -> str:
    inner = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f'<dl class="{cls}">{inner}</dl>'


# -- the timeline (inline SVG) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Style:
    label: str
    color: str
    shape: str


KIND_STYLES: Final[dict[str, _Style]] = {
    "created": _Style("scope created", "#2da44e", "circle"),
    "rotated": _Style("key rotated", "#0969da", "diamond"),
    "kek_rotated": _Style("KEK rotated", "#8250df", "triangle"),
    "kek_added": _Style("KEK added", "#8250df", "plus"),
    "kek_removed": _Style("KEK removed", "#8250df", "cross"),
    "kek_failover": _Style("KEK failover", "#bf8700", "triangle"),
    "rewrapped": _Style("records rewrapped", "#1b7c83", "square"),
    "reencrypted": _Style("records re-encrypted", "#bc4c00", "square"),
    "compromised": _Style("key compromised", "#cf222e", "cross"),
    "destroyed": _Style("key versions destroyed", "#57606a", "ring"),
    "suspended": _Style("suspended", "#bf8700", "pause"),
    "resumed": _Style("resumed", "#2da44e", "play"),
    "shredded": _Style("shredded", "#82071e", "shred"),
    "certified": _Style("erasure certificate", "#82071e", "doc"),
    "phase2": _Style("erasure phase 2 confirmed", "#1a7f37", "check"),
}
"""Marker of each event kind; every kind of :data:`keycustody.report.facts.TIMELINE_KINDS`
has one."""

_W: Final = 1120
_LABEL_W: Final = 210
_PAD_R: Final = 28
_LANE_H: Final = 30
_LEGEND_ROW: Final = 22
_MAX_LANES: Final = 40
_OPEN_EVENTS: Final = 200
_TICK_STEPS: Final = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400,
    30 * 86400, 91 * 86400, 182 * 86400, 365 * 86400,
)  # fmt: skip


def _marker(shape: str, x: float, y: float, color: str) -> str:
    r = 6.5
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{color}"/>'
    if shape == "ring":
        return (
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r - 1}" fill="#fff" stroke="{color}" '
            'stroke-width="2.5"/>'
        )
    if shape == "diamond":
        pts = f"{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y:.1f} {x:.1f},{y + r + 1:.1f} "
        pts += f"{x - r - 1:.1f},{y:.1f}"
        return f'<polygon points="{pts}" fill="{color}"/>'
    if shape == "triangle":
        pts = f"{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y + r:.1f} {x - r - 1:.1f},{y + r:.1f}"
        return f'<polygon points="{pts}" fill="{color}"/>'
    if shape == "play":
        pts = f"{x - r + 1:.1f},{y - r:.1f} {x + r + 1:.1f},{y:.1f} {x - r + 1:.1f},{y + r:.1f}"
        return f'<polygon points="{pts}" fill="{color}"/>'
    if shape == "square":
        return (
            f'<rect x="{x - r + 0.5:.1f}" y="{y - r + 0.5:.1f}" width="{2 * r - 1}" '
            f'height="{2 * r - 1}" fill="{color}"/>'
        )
    if shape == "pause":
        return (
            f'<rect x="{x - r + 1:.1f}" y="{y - r:.1f}" width="4.5" height="{2 * r}" '
            f'fill="{color}"/><rect x="{x + 1.5:.1f}" y="{y - r:.1f}" width="4.5" '
            f'height="{2 * r}" fill="{color}"/>'
        )
    if shape == "cross":
        d = r - 0.5
        return (
            f'<path d="M{x - d:.1f},{y - d:.1f}L{x + d:.1f},{y + d:.1f}M{x + d:.1f},'
            f'{y - d:.1f}L{x - d:.1f},{y + d:.1f}" stroke="{color}" stroke-width="3.2" '
            'stroke-linecap="round"/>'
        )
    if shape == "plus":
        d = r - 0.5
        return (
            f'<path d="M{x - d:.1f},{y:.1f}H{x + d:.1f}M{x:.1f},{y - d:.1f}V{y + d:.1f}" '
            f'stroke="{color}" stroke-width="3.2" stroke-linecap="round"/>'
        )
    if shape == "shred":
        d = r * 0.5
        return (
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r + 0.5}" fill="{color}"/>'
            f'<path d="M{x - d:.1f},{y - d:.1f}L{x + d:.1f},{y + d:.1f}M{x + d:.1f},'
            f'{y - d:.1f}L{x - d:.1f},{y + d:.1f}" stroke="#fff" stroke-width="2" '
            'stroke-linecap="round"/>'
        )
    if shape == "doc":
        return (
            f'<path d="M{x - 5:.1f},{y - 7:.1f}h7l3,3v11h-10z" fill="#fff" stroke="{color}" '
            f'stroke-width="1.8"/><path d="M{x - 2.5:.1f},{y - 1:.1f}h5M{x - 2.5:.1f},'
            f'{y + 2.5:.1f}h5" stroke="{color}" stroke-width="1.3"/>'
        )
    # check
    return (
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r + 0.5}" fill="#fff" stroke="{color}" '
        f'stroke-width="2"/><path d="M{x - 3.5:.1f},{y + 0.2:.1f}l2.6,2.8l4.8,-5.6" '
        f'fill="none" stroke="{color}" stroke-width="2.4" stroke-linecap="round" '
        'stroke-linejoin="round"/>'
    )


def _positions(times: list[float], left: float, width: float) -> list[float]:
    """x of each event (sorted by time): proportional to time, but at least a marker apart,
    so events seconds apart stay readable next to events months apart (order is kept)."""
    n = len(times)
    if n == 1:
        return [left + width / 2]
    gap = min(16.0, width * 0.6 / (n - 1))
    span = times[-1] - times[0]
    rest = width - gap * (n - 1)
    return [
        left + gap * i + (rest * (t - times[0]) / span if span > 0 else rest * i / (n - 1))
        for i, t in enumerate(times)
    ]


def _x_at(t: float, times: list[float], xs: list[float]) -> float:
    if t <= times[0]:
        return xs[0]
    for i in range(1, len(times)):
        if t <= times[i]:
            t0, t1 = times[i - 1], times[i]
            f = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
            return xs[i - 1] + f * (xs[i] - xs[i - 1])
    return xs[-1]


def _tick_label(t: float, step: float, span: float) -> str:
    at = datetime.fromtimestamp(t, UTC)
    if step < 1:
        return at.strftime("%H:%M:%S.") + f"{at.microsecond // 1000:03d}"
    if span < 86400:
        return at.strftime("%H:%M:%S" if step < 60 else "%H:%M")
    if step < 86400:
        return at.strftime("%m-%d %H:%M")
    return at.strftime("%Y-%m-%d")


def _ticks(times: list[float], xs: list[float]) -> list[tuple[float, str]]:
    span = times[-1] - times[0]
    if span <= 0:
        return [(xs[0], _tick_label(times[0], 1, 0))]
    step = next((s for s in _TICK_STEPS if span / s <= 7), _TICK_STEPS[-1])
    out: list[tuple[float, str]] = []
    t = math.ceil(times[0] / step) * step
    while t <= times[-1] + 1e-9:
        x = _x_at(t, times, xs)
        if not out or x - out[-1][0] >= 78:
            out.append((x, _tick_label(t, step, span)))
        t += step
    return out


def _lane_of(event: TimelineEvent, by_tenant: bool) -> str:
    return event["scope"].split("/", 1)[0] if by_tenant else event["scope"]


def _bands(
    placed: list[tuple[TimelineEvent, float]], by_tenant: bool, right: float
) -> list[tuple[float, float, str]]:
    """Intervals a lane spent suspended or shredded, from its events and their x positions:
    (x from, x to, css class)."""
    bands: list[tuple[float, float, str]] = []
    suspended_at: float | None = None
    for ev, x in placed:
        if by_tenant and "/" in ev["scope"]:
            continue
        if ev["kind"] == "suspended" and suspended_at is None:
            suspended_at = x
        elif ev["kind"] == "resumed" and suspended_at is not None:
            bands.append((suspended_at, x, "band-suspended"))
            suspended_at = None
        elif ev["kind"] == "shredded":
            if suspended_at is not None:
                bands.append((suspended_at, x, "band-suspended"))
                suspended_at = None
            bands.append((x, right, "band-shredded"))
    if suspended_at is not None:
        bands.append((suspended_at, right, "band-suspended"))
    return bands


def _event_title(ev: TimelineEvent) -> str:
    parts = [f"#{ev['seq']} {ev['action']} {ev['scope']}"]
    if ev["key_version"] is not None:
        parts.append(f"v{ev['key_version']}")
    parts.append(ev["at"])
    if ev["kms_key_id"]:
        parts.append(f"KEK {ev['kms_key_id']}#{ev['kms_key_version'] or '?'}")
    for key, value in ev["details"].items():
        parts.append(f"{key}: {_detail(value)}")
    return " · ".join(parts)


def timeline_svg(events: list[TimelineEvent], scopes: list[ScopeFacts]) -> str:
    """The key events as an SVG: one lane per scope (per tenant when there are more than 40
    lanes), a marker per event kind, suspended and shredded periods shaded, a time axis."""
    if not events:
        return '<p class="empty">No key events in this scope.</p>'
    events = sorted(events, key=lambda ev: (ev["at"], ev["seq"]))
    scope_lanes = sorted({ev["scope"] for ev in events})
    by_tenant = len(scope_lanes) > _MAX_LANES
    lane_of = [_lane_of(ev, by_tenant) for ev in events]
    lanes = sorted(set(lane_of))
    row = {lane: i for i, lane in enumerate(lanes)}
    depth = {s["path"]: s["depth"] for s in scopes}
    kinds = [k for k in KIND_STYLES if any(ev["kind"] == k for ev in events)]

    legend_per_row = 5
    legend_rows = math.ceil(len(kinds) / legend_per_row) + 1
    top = 14 + legend_rows * _LEGEND_ROW + 8
    left, right = _LABEL_W + 14, _W - _PAD_R
    height = top + len(lanes) * _LANE_H + 54
    times = [(_parse(ev["at"]) or datetime.now(UTC)).timestamp() for ev in events]
    xs = _positions(times, left, right - left)
    placed: dict[str, list[tuple[TimelineEvent, float]]] = {}
    for lane, ev, x in zip(lane_of, events, xs, strict=True):
        placed.setdefault(lane, []).append((ev, x))

    out = [
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" '
        f'width="{_W}" height="{height}" role="img" aria-labelledby="timeline-title">',
        f'<title id="timeline-title">Key events over time: {len(events)} events in '
        f"{len(lanes)} {'tenants' if by_tenant else 'scopes'}</title>",
        "<defs>"
        '<pattern id="hatch" width="7" height="7" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="7" height="7" fill="#f6e3e5"/>'
        '<line x1="0" y1="0" x2="0" y2="7" stroke="#d9a1a9" stroke-width="3"/></pattern>'
        "</defs>",
        '<g class="legend" font-size="12">',
    ]
    for i, kind in enumerate(kinds):
        style = KIND_STYLES[kind]
        lx = left + (i % legend_per_row) * 178
        ly = 14 + (i // legend_per_row) * _LEGEND_ROW + 8
        mark = _marker(style.shape, lx, ly, style.color)
        out.append(
            f'<g class="legend-item" data-kind="{kind}">{mark}'
            f'<text x="{lx + 13}" y="{ly + 4}">{e(style.label)}</text></g>'
        )
    ly = 14 + (legend_rows - 1) * _LEGEND_ROW + 8
    out.append(
        f'<rect x="{left - 7}" y="{ly - 7}" width="14" height="14" class="band-suspended"/>'
        f'<text x="{left + 13}" y="{ly + 4}">suspended period</text>'
        f'<rect x="{left + 171}" y="{ly - 7}" width="14" height="14" fill="url(#hatch)"/>'
        f'<text x="{left + 191}" y="{ly + 4}">shredded (keys destroyed)</text>'
    )
    out.append("</g>")

    for i, lane in enumerate(lanes):
        y0 = top + i * _LANE_H
        cy = y0 + _LANE_H / 2
        shade = "#f6f8fa" if i % 2 == 0 else "#ffffff"
        out.append(
            f'<rect x="0" y="{y0}" width="{_W}" height="{_LANE_H}" fill="{shade}"/>'
            f'<line x1="{left}" y1="{cy}" x2="{right}" y2="{cy}" stroke="#d0d7de"/>'
        )
        for x1, x2, cls in _bands(placed[lane], by_tenant, right):
            fill = ' fill="url(#hatch)"' if cls == "band-shredded" else ""
            out.append(
                f'<rect class="{cls}" x="{x1:.1f}" y="{y0 + 4}" width="{max(x2 - x1, 2):.1f}" '
                f'height="{_LANE_H - 8}"{fill}/>'
            )
        indent = 0 if by_tenant else depth.get(lane, lane.count("/")) * 12
        name = lane if by_tenant else lane.rsplit("/", 1)[-1]
        shown = name if len(name) <= 26 - indent // 6 else name[: 24 - indent // 6] + "…"
        weight = ' font-weight="600"' if by_tenant or "/" not in lane else ""
        out.append(
            f'<text class="lane-label" x="{12 + indent}" y="{cy + 4}" font-size="12.5"'
            f"{weight}><title>{e(lane)}</title>{e(shown)}</text>"
        )
    axis_y = top + len(lanes) * _LANE_H + 6
    out.append(f'<line x1="{left}" y1="{axis_y}" x2="{right}" y2="{axis_y}" stroke="#57606a"/>')
    for x, label in _ticks(times, xs):
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{axis_y + 5}" stroke="#d8dee4" '
            'stroke-dasharray="2 3"/>'
            f'<text x="{x:.1f}" y="{axis_y + 19}" font-size="11" text-anchor="middle" '
            f'fill="#57606a">{e(label)}</text>'
        )
    first = datetime.fromtimestamp(times[0], UTC).strftime("%Y-%m-%d %H:%M:%S")
    last = datetime.fromtimestamp(times[-1], UTC).strftime("%Y-%m-%d %H:%M:%S")
    out.append(
        f'<text x="{left}" y="{axis_y + 40}" font-size="11" fill="#57606a">time (UTC), '
        f"{e(first)} to {e(last)}; events are kept at least a marker apart, in order</text>"
    )
    for lane, ev, x in zip(lane_of, events, xs, strict=True):
        style = KIND_STYLES[ev["kind"]]
        cy = top + row[lane] * _LANE_H + _LANE_H / 2
        out.append(
            f'<g class="ev ev-{ev["kind"]}" data-seq="{ev["seq"]}">'
            f"<title>{e(_event_title(ev))}</title>{_marker(style.shape, x, cy, style.color)}</g>"
        )
    out.append("</svg>")
    return "".join(out)


# -- sections -------------------------------------------------------------------------------

_STATUS_TEXT: Final = {
    "green": "GREEN · all checks pass",
    "amber": "AMBER · attention needed",
    "red": "RED · action required",
}
_LEVEL_ICON: Final = {OK: "✓", WARN: "!", BAD: "✗"}


def _header(facts: ReportFacts, json_sha256: str) -> str:
    scope = facts["scope"]
    return (
        '<header class="doc-head"><div class="eyebrow">keycustody · evidence pack</div>'
        "<h1>Key custody report</h1>"
        + _dl(
            [
                ("Vault", _code(facts["vault_id"])),
                ("Scope", e(f"{scope} and its subtree") if scope else "all scopes"),
                ("Generated", _when(facts["generated_at"])),
                ("Database", e(facts["database"]["backend"])),
                ("report.json SHA-256", _code(json_sha256)),
                (
                    "Audit head",
                    _code(f"{facts['audit']['head_seq']}:{facts['audit']['head_hash']}"),
                ),
            ],
            "meta",
        )
        + "</header>"
    )


def _summary(facts: ReportFacts) -> str:
    s = facts["summary"]
    points = "".join(
        f'<li class="lvl-{e(p["level"])}"><span class="icon">{_LEVEL_ICON.get(p["level"], "")}'
        f"</span>{e(p['text'])}</li>"
        for p in s["points"]
    )
    versions = s["key_versions"]
    kpis = [
        (_n(s["records_protected"]), "live records under customer-held keys"),
        (_n(s["tenants"]), "tenants"),
        (_n(s["scopes"]), "scopes"),
        (_n(sum(versions.values())), "key versions"),
        (_n(sum(s["erasures"].values())), "erasures"),
        (_n(facts["audit"]["events_checked"]), "audit events verified"),
    ]
    tiles = "".join(
        f'<div class="kpi"><div class="kpi-n">{n}</div><div class="kpi-l">{label}</div></div>'
        for n, label in kpis
    )
    return (
        f'<section class="summary status-{e(s["status"])}" id="summary">'
        f'<div class="status-pill">{e(_STATUS_TEXT.get(s["status"], s["status"]))}</div>'
        f'<p class="headline">{e(s["headline"])}.</p><ul class="points">{points}</ul>'
        f'<div class="kpis">{tiles}</div></section>'
    )


def _integrity(facts: ReportFacts, json_sha256: str) -> str:
    a = facts["audit"]
    brk = a["first_break"]
    result = (
        '<span class="ok-text">✓ verified</span>'
        if a["ok"]
        else f'<span class="bad-text">✗ broken at event {e(brk and brk.get("seq"))}</span>'
    )
    rows = [
        ("Audit chain", result + " (hash chain and HMAC of every event, the whole trail)"),
        ("Events checked", _n(a["events_checked"])),
        ("Head (seq:hash)", _code(f"{a['head_seq']}:{a['head_hash']}")),
        ("First break", e(f"event {brk.get('seq')}: {brk.get('reason')}") if brk else "none"),
        ("report.json SHA-256", _code(json_sha256)),
    ]
    check = (
        "<p class='how'>To check this pack: <code>sha256sum report.json</code> must print the "
        "SHA-256 above, and <code>keycustody audit verify --expect-head "
        f"{e(a['head_seq'])}:{e(a['head_hash'])}</code> run against the vault must succeed "
        "(the trail still holds this head, unchanged).</p>"
    )
    return _section("integrity", "1. Evidence integrity", _dl(rows) + check)


def _keks(facts: ReportFacts) -> str:
    rows = []
    for t in facts["tenants"]:
        keks = t.get("keks") or ([t["kek"]] if t["kek"] is not None else [])
        if not keks:
            rows.append([e(t["tenant"]), _badge(t["state"]), _NONE, _NONE, _NONE, _NONE, "no KEK"])
            continue
        for i, kek in enumerate(keks):
            kms = kek["kms_state"]
            kms_text = "not queried (no KMS call for a report)"
            if kms is not None:
                versions = ", ".join(f"v{v} {s}" for v, s in (kms.get("versions") or {}).items())
                kms_text = f"{kms.get('state')}; primary v{kms.get('primary_version')}; {versions}"
            role = "" if len(keks) == 1 else (" (primary)" if i == 0 else f" (failover {i})")
            rows.append(
                [
                    f"<strong>{e(t['tenant'])}</strong>" if i == 0 else "",
                    _badge(t["state"]) if i == 0 else "",
                    e(kek["provider"]),
                    _code(kek["id"]) + e(role),
                    e(", ".join(kek["versions_in_use"]) or "none"),
                    e(kek["location"]),
                    e(kms_text),
                ]
            )
    body = _table(
        ["Tenant", "State", "Provider", "KEK id", "Versions in use", "Where it lives", "In KMS"],
        rows,
        "keks",
    )
    note = (
        "<p class='note'>Versions in use: the KEK versions that wrap the tenant's live scope "
        "key versions. Child scopes' keys are wrapped by their parent's scope key, so the "
        "tenant's KEK protects the whole tree below it. A tenant with several KEKs has every "
        "key version wrapped under each; any one of them unwraps it (the primary first), so "
        "disabling one of them does not revoke the tenant.</p>"
    )
    return _section("keks", "2. Tenants and their KEKs", body + note)


def _scopes(facts: ReportFacts) -> str:
    tree_rows = []
    version_rows = []
    for s in facts["scopes"]:
        pad = s["depth"] * 18
        name = s["path"] if s["depth"] == 0 else s["path"].rsplit("/", 1)[-1]
        versions = " ".join(
            f'<span class="kv">v{v["version"]} {_badge(v["state"])}</span>'
            for v in s["key_versions"]
        )
        cert = f"<br><small>certificate {_code(s['erasure_certificate'])}</small>"
        tree_rows.append(
            [
                f'<span class="tree" style="padding-left:{pad}px" title="{e(s["path"])}">'
                f"{'└ ' if s['depth'] else ''}<strong>{e(name)}</strong></span>",
                _badge(s["state"]) + (cert if s["erasure_certificate"] else ""),
                f"v{s['active_version']}",
                _n(s["records"]),
                _n(s["records_derived"]),
                e(_size(s["bytes"])),
                versions,
            ]
        )
        for v in s["key_versions"]:
            since = v.get("destroyed_at") or v.get("compromised_at") or v.get("deactivated_at")
            version_rows.append(
                [
                    e(s["path"]),
                    f"v{e(v['version'])}",
                    _badge(v["state"]),
                    _code(v["wrapped_by"]),
                    _n(v["records"]),
                    _when(v["created_at"]),
                    _when(since) if since else _NONE,
                ]
            )
    tree = _table(
        ["Scope", "State", "Active", "#Records", "#Derived", "#Size", "Key versions"],
        tree_rows,
        "tree-table",
    )
    versions_table = _table(
        ["Scope", "Version", "State", "Wrapped by", "#Records", "Created", "Left ACTIVE"],
        version_rows,
        "versions",
    )
    note = (
        "<p class='note'>Key states follow NIST SP 800-57: ACTIVE (encrypts new records), "
        "DEACTIVATED (decrypt only, until a rewrap), COMPROMISED (refuses to decrypt until "
        "re-encryption), DESTROYED (key material gone, metadata kept as evidence). Records "
        "are counted per key version with SQL aggregates; derived records hang below their "
        "source record's key.</p>"
    )
    return _section(
        "scopes",
        "3. Scope tree and key versions",
        tree + "<h3>Records per key version</h3>" + versions_table + note,
    )


def _timeline(facts: ReportFacts) -> str:
    events = facts["timeline"]
    rows = [
        [
            _n(ev["seq"]),
            _when(ev["at"]),
            f'<span class="kind kind-{e(ev["kind"])}">{e(KIND_STYLES[ev["kind"]].label)}</span>',
            e(ev["scope"]),
            f"v{ev['key_version']}" if ev["key_version"] is not None else _NONE,
            _code(f"{ev['kms_key_id']}#{ev['kms_key_version']}") if ev["kms_key_id"] else _NONE,
            e("; ".join(f"{k}: {_detail(v)}" for k, v in ev["details"].items())) or _NONE,
            e(ev["actor"]),
        ]
        for ev in events
    ]
    table = _table(
        ["#Seq", "When", "Event", "Scope", "Version", "KEK", "Details", "Actor"],
        rows,
        "events",
    )
    body = (
        f'<div class="svg-wrap">{timeline_svg(events, facts["scopes"])}</div>'
        # Open (and so printed) unless it is long.
        f"<details{' open' if len(events) <= _OPEN_EVENTS else ''}><summary>All "
        f"{len(events):,} key events as a table</summary>{table}</details>"
    )
    return _section("timeline", "4. Key event timeline", body)


def _scrub(scrub: dict[str, Any] | None) -> str:
    if not scrub:
        return _NONE
    if scrub.get("backend") == "sqlite":
        done = "complete" if scrub.get("checkpoint_complete") else "INCOMPLETE"
        return e(
            f"SQLite secure_delete={scrub.get('secure_delete')}, journal "
            f"{scrub.get('journal_mode')}, {scrub.get('checkpoint')} {done}"
        )
    return e(", ".join(f"{k}={v}" for k, v in scrub.items()))


def _certificate(c: CertificateFacts) -> str:
    scan = c["forensic_scan"]
    check = c["read_check"]
    kek = c["kek_destruction"]
    phase2 = c["phase2"]
    kek_text = "not requested"
    if kek:
        kek_text = (
            f"{kek.get('kek')} destroyed ({kek.get('call')})"
            if kek.get("destroyed")
            else f"{kek.get('kek')} not destroyed: {kek.get('why')}"
        )
    hits = int(scan.get("hits") or 0)
    rows = [
        ("Scope erased", f"{e(c['scope'])} (tenant {e(c['tenant'])})"),
        ("Reason", e(c["reason"])),
        ("Requested", _when(c["requested"])),
        ("Phase 1 completed", _when(c["phase1_completed"])),
        ("Records unreadable", _n(c["records_unreadable"])),
        (
            "Scopes / key versions destroyed",
            f"{c['scopes_erased']:,} / {c['key_versions_destroyed']:,}",
        ),
        ("Storage scrub", _scrub(c["storage_scrub"])),
        (
            "Forensic scan",
            f'<span class="{"ok-text" if hits == 0 else "bad-text"}">{hits:,} hits</span> in '
            f"{_n(scan.get('files'))} files ({_n(scan.get('values_searched'))} destroyed "
            "wrapped keys searched)",
        ),
        (
            "Read check",
            e(
                f"{check.get('result')}: {check.get('refused_with_shredded_error')} of "
                f"{check.get('tried')} scopes refused"
            ),
        ),
        ("KEK destruction", e(kek_text)),
        ("Phase 2 scheduled", _when(phase2.get("scheduled_at"))),
        ("Phase 2 confirmed", _when(phase2.get("confirmed_at"))),
    ]
    if phase2.get("events"):
        rows.append(("Phase 2 events", "<br>".join(e(x) for x in phase2["events"])))
    rows += [
        ("Certificate SHA-256", _code(c["sha256"])),
        ("Audit anchor", _code(f"{c['audit_seq']}:{c['audit_event_hash']}")),
        (
            "Verification",
            (
                f'<span class="ok-text">✓ {e(c["verification"])}</span>'
                if c["verified"]
                else f'<span class="bad-text">✗ {e(c["verification"])}</span>'
            ),
        ),
    ]
    risks = "".join(f"<li>{e(r)}</li>" for r in c["residual_risk"])
    return (
        f'<article class="cert"><header><h3>{e(c["certificate_id"])}</h3>'
        f"<span>phase 2 {_badge(phase2.get('status'))}</span></header>"
        f"{_dl(rows)}<h4>Residual risk</h4><ul class='risks'>{risks}</ul></article>"
    )


def _certificates(facts: ReportFacts) -> str:
    certs = facts["certificates"]
    if not certs:
        body = '<p class="empty">No erasure in this scope.</p>'
    else:
        body = "".join(_certificate(c) for c in certs)
    note = (
        "<p class='note'>Phase 1 destroys the scope keys at once (the data is unreadable "
        "through keycustody); phase 2 destroys the KEK versions that wrapped them, so no "
        "backup of the database can unwrap them either (NIST SP 800-88 cryptographic "
        "erase).</p>"
    )
    return _section("erasures", "5. Erasure certificates", note + body)


def _usage(facts: ReportFacts) -> str:
    rows = [
        [
            e(u["scope"]),
            _n(u["records"]),
            e(_size(int(u["bytes"]))),
            _n(u["writes"]),
            _n(u["key_operations"]),
            _n(u["kms_calls"]),
            _n(u["denied"]),
        ]
        for u in facts["usage"]
    ]
    table = _table(
        ["Scope", "#Records", "#Stored", "#Writes", "#Key operations", "#KMS calls", "#Denied"],
        rows,
        "usage",
    )
    note = (
        "<p class='note'>Records and bytes are what is stored now; writes, key operations, "
        "KMS calls and denied accesses are counted from the audit trail since the vault was "
        "created.</p>"
    )
    return _section("usage", "6. Usage per scope", table + note)


_CONFIG_WHY: Final = {
    "cache_ttl_s": "seconds an unwrapped scope key stays cached: a KEK disabled in the KMS "
    "stops working here after at most this long",
    "max_key_uses": "lookups a cached key serves before it is unwrapped again",
    "revalidate_s": "bound on how long another process takes to notice a suspend, shred or "
    "key destruction",
    "rotation_period_s": "automatic rotation of scope keys by age (none: rotated on request)",
    "max_record_bytes": "largest payload accepted per record",
    "audit_kek": "KEK wrapping the audit trail's HMAC key (never a tenant's KEK)",
    "kms_providers": "KMS providers configured, by key id prefix",
    "backend": "database backend (read from the engine's dialect)",
    "secure_delete": "deleted cells are overwritten (erasure depends on it)",
    "journal_mode": "WAL; emptied by a TRUNCATE checkpoint after each shred",
    "synchronous": "an acknowledged write survives power loss (FULL)",
    "scrub_on_shred": "storage scrub performed by every shred",
    "last_scrub": "the scrub recorded by the latest erasure certificate",
    "wal_level": "how much the write-ahead log keeps",
    "archive_mode": "whether WAL segments are archived (archives keep deleted rows)",
}


def _setting(key: str, value: object) -> str:
    if value is None:
        return "none (rotated on request)" if key == "rotation_period_s" else "none"
    if isinstance(value, dict):
        return e(", ".join(f"{k} → {v}" for k, v in value.items()))
    if key == "max_record_bytes" and isinstance(value, int):
        return e(_size(value))
    if key.endswith("_s") and isinstance(value, int | float):
        return e(f"{value:,g} s")
    return _n(value)


def _config(facts: ReportFacts) -> str:
    config = facts["config"]
    rows = []
    for key, value in config.items():
        if key in ("source", "storage"):
            continue
        rows.append([_code(key), _setting(key, value), e(_CONFIG_WHY.get(key))])
    for key, value in config["storage"].items():
        shown = e(value)
        if key == "last_scrub":
            shown = _scrub(value) if value else "no shred yet"
        rows.append([_code(f"storage.{key}"), shown, e(_CONFIG_WHY.get(key, ""))])
    table = _table(["Setting", "Value", "Why it matters"], rows, "config")
    note = (
        f"<p class='note'>Source: {e(config['source'])}; storage values read live from the "
        "database.</p>"
    )
    return _section("config", "7. Security configuration", table + note)


def _names(facts: ReportFacts) -> str:
    parts = []
    for s in facts["scopes"]:
        if s["names"] is None and s["names_note"] is None:
            continue
        rows = [
            [e(n["name"]), f"v{e(n['key_version'])}", e(_size(int(n["size"])))]
            for n in s["names"] or []
        ]
        parts.append(
            f"<h3>{e(s['path'])}</h3><p class='note'>{e(s['names_note'])}</p>"
            + (_table(["Name", "Key version", "#Size"], rows, "names") if s["names"] else "")
        )
    warning = (
        "<p class='warn-text'>This report lists plaintext record names (--include-names): "
        "handle it as confidential.</p>"
    )
    return _section("names", "8. Record names", warning + "".join(parts))


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{e(title)}</h2>{body}</section>'


_CSS: Final = """
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:#eef1f4;color:#1f2328;font:14px/1.5 -apple-system,BlinkMacSystemFont,
"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif}
main{max-width:1200px;margin:24px auto;background:#fff;padding:36px 40px 28px;
border:1px solid #d0d7de;border-radius:6px;box-shadow:0 1px 3px rgba(31,35,40,.08)}
code{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;
background:#f6f8fa;border:1px solid #eaeef2;border-radius:4px;padding:1px 4px;
overflow-wrap:break-word}
h1{font-size:28px;margin:2px 0 14px;letter-spacing:-.3px}
h2{font-size:19px;margin:34px 0 12px;padding-bottom:6px;border-bottom:2px solid #1f2d3d;
color:#1f2d3d}
h3{font-size:15px;margin:20px 0 8px}
h4{font-size:13px;margin:12px 0 4px;color:#57606a;text-transform:uppercase;letter-spacing:.4px}
.eyebrow{font-size:12px;text-transform:uppercase;letter-spacing:1.4px;color:#57606a;
font-weight:600}
.doc-head{border-bottom:1px solid #d0d7de;padding-bottom:14px}
dl.meta,dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:0}
dl.meta dt,dl.facts dt{color:#57606a;font-weight:600}
dl.meta dd,dl.facts dd{margin:0;min-width:0}
.tz{color:#6e7781;font-size:11px}
.when,code.nw{white-space:nowrap}
.summary{margin:22px 0 6px;border:1px solid;border-left-width:8px;border-radius:6px;
padding:16px 20px}
.status-green{background:#f0fbf3;border-color:#1a7f37}
.status-amber{background:#fff8e1;border-color:#bf8700}
.status-red{background:#fff0ef;border-color:#cf222e}
.status-pill{display:inline-block;font-weight:700;font-size:12px;letter-spacing:.8px;
padding:3px 10px;border-radius:12px;color:#fff}
.status-green .status-pill{background:#1a7f37}
.status-amber .status-pill{background:#9a6700}
.status-red .status-pill{background:#cf222e}
.headline{font-size:18px;font-weight:600;margin:10px 0 8px}
.points{list-style:none;margin:0 0 12px;padding:0}
.points li{padding:2px 0 2px 26px;position:relative}
.points .icon{position:absolute;left:0;width:18px;height:18px;border-radius:9px;
text-align:center;font-size:12px;line-height:18px;color:#fff;font-weight:700;top:4px}
.lvl-ok .icon{background:#1a7f37}.lvl-warn .icon{background:#bf8700}
.lvl-bad .icon{background:#cf222e}
.kpis{display:grid;grid-template-columns:repeat(6,1fr);gap:10px}
.kpi{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px}
.kpi-n{font-size:22px;font-weight:700;color:#1f2d3d}
.kpi-l{font-size:12px;color:#57606a}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-size:13px}
th{background:#f6f8fa;text-align:left;font-weight:600;color:#424a53;
border-bottom:2px solid #d0d7de;padding:6px 8px;white-space:nowrap}
td{border-bottom:1px solid #eaeef2;padding:5px 8px;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.empty{color:#6e7781;font-style:italic}
tbody tr:nth-child(even){background:#fbfcfd}
.badge{display:inline-block;font-size:11px;font-weight:600;letter-spacing:.3px;
padding:1px 7px;border-radius:10px;border:1px solid;white-space:nowrap}
.st-active{color:#1a7f37;background:#dafbe1;border-color:#8ddb9d}
.st-deactivated{color:#7d4e00;background:#fff8c5;border-color:#e8c355}
.st-suspended{color:#953800;background:#fff1e5;border-color:#f5b57f}
.st-compromised{color:#fff;background:#cf222e;border-color:#cf222e}
.st-destroyed{color:#57606a;background:#f6f8fa;border-color:#d0d7de}
.st-shredded{color:#fff;background:#82071e;border-color:#82071e}
.st-preactive{color:#0969da;background:#ddf4ff;border-color:#80ccff}
.st-other{color:#424a53;background:#f6f8fa;border-color:#d0d7de}
.kv{display:inline-block;margin:0 8px 2px 0;white-space:nowrap;font-size:12px}
.tree{display:inline-block;white-space:nowrap}
.svg-wrap{overflow-x:auto;border:1px solid #d0d7de;border-radius:6px;background:#fff}
#timeline{display:block;font-family:inherit}
#timeline .band-suspended,.band-suspended{fill:#ffe8b3}
details{margin:10px 0}
summary{cursor:pointer;color:#0969da;font-weight:600}
.cert{border:1px solid #d0d7de;border-radius:6px;padding:12px 16px;margin:12px 0;
page-break-inside:avoid}
.cert>header{display:flex;justify-content:space-between;align-items:center;
border-bottom:1px solid #eaeef2;margin-bottom:8px;padding-bottom:6px}
.cert h3{margin:0;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.risks{margin:0;padding-left:20px;color:#424a53}
.note{color:#57606a;font-size:12.5px;margin:6px 0}
.how{background:#f6f8fa;border:1px solid #eaeef2;border-radius:6px;padding:8px 12px}
.ok-text{color:#1a7f37;font-weight:600}.bad-text{color:#cf222e;font-weight:700}
.warn-text{color:#9a6700;font-weight:600}
.kind{font-weight:600}
table.config td:first-child code{word-break:normal;white-space:nowrap}
footer{margin-top:30px;padding-top:10px;border-top:1px solid #d0d7de;color:#57606a;
font-size:12px}
@media print{body{background:#fff}main{box-shadow:none;border:0;margin:0;padding:0}
section{page-break-inside:auto}h2{page-break-after:avoid}details{display:block}}
"""


def render(facts: ReportFacts, *, json_sha256: str) -> str:
    """The report as one HTML document (UTF-8 text).

    Args:
        facts: What :func:`keycustody.report.facts.gather` returned.
        json_sha256: SHA-256 (hex) of the exact report.json bytes this page goes with.
    """
    sections = [
        _header(facts, json_sha256),
        _summary(facts),
        _integrity(facts, json_sha256),
        _keks(facts),
        _scopes(facts),
        _timeline(facts),
        _certificates(facts),
        _usage(facts),
        _config(facts),
    ]
    if facts["include_names"]:
        sections.append(_names(facts))
    footer = (
        f"<footer>Generated by {e(facts['generator'])} on {_when(facts['generated_at'])} "
        f"({e(facts['format'])}). Every figure comes from the vault's database and its "
        "audit trail. This report holds no key material, no wrapped key and "
        + (
            "plaintext record names (requested with --include-names)."
            if facts["include_names"]
            else "no record name."
        )
        + f" report.json SHA-256 {_code(json_sha256)}.</footer>"
    )
    title = "Key custody report"
    if facts["scope"]:
        title += f" · {facts['scope']}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f'<meta name="generator" content="{e(facts["generator"])}">'
        f'<meta name="keycustody-report-json-sha256" content="{e(json_sha256)}">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(sections)}{footer}</main></body></html>\n"
    )


__all__ = ["KIND_STYLES", "render", "timeline_svg"]
