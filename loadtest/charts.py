"""Small inline-SVG charts for the HTML report (no JavaScript, nothing fetched)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = {"blue": "#2563eb", "orange": "#ea580c", "red": "#dc2626", "green": "#16a34a",
           "grey": "#6b7280", "purple": "#7c3aed", "teal": "#0d9488", "amber": "#d97706"}
FONT = "font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif"


@dataclass
class Line:
    """One plotted series; ``None`` in ``ys`` leaves a gap. ``points`` draws dots only."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    color: str = PALETTE["blue"]
    points: bool = False
    dashed: bool = False
    width: float = 1.8
    markers: bool = False  # a dot on every point of the line


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    lines: list[Line] = field(default_factory=list)
    width: int = 860
    height: int = 300
    log_y: bool = False
    y_min: float | None = 0.0
    hlines: list[tuple[float, str, str]] = field(default_factory=list)  # value, label, color
    shade: tuple[float, float, str] | None = None  # x0, x1, label
    x_ticks: list[tuple[float, str]] | None = None  # explicit (position, label)
    marks: list[float] = field(default_factory=list)  # x positions of small red ticks on top
    marks_label: str = ""

    def svg(self) -> str:
        return _render(self)


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out = []
    v = start
    while v <= hi + step * 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 10_000:
        return f"{v / 1000:g}k"
    if a >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"


def _render(c: Chart) -> str:
    left, right, top, bottom = 64, 16, 34, 46
    pw, ph = c.width - left - right, c.height - top - bottom
    xs_all = [x for ln in c.lines for x, y in zip(ln.xs, ln.ys, strict=True) if y is not None]
    ys_all = [y for ln in c.lines for y in ln.ys if y is not None]
    ys_all += [v for v, _, _ in c.hlines]
    if c.x_ticks:
        xs_all += [p for p, _ in c.x_ticks]
    if c.shade:
        xs_all += [c.shade[0], c.shade[1]]
    xs_all += c.marks
    if not xs_all or not ys_all:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{c.width}" height="60" '
                f'style="{FONT}"><text x="10" y="30" font-size="13">{escape(c.title)}: '
                "no data</text></svg>")
    x0, x1 = min(xs_all), max(xs_all)
    if x1 <= x0:
        x1 = x0 + 1
    if c.log_y:
        positive = [y for y in ys_all if y > 0] or [1.0]
        y0 = 10 ** math.floor(math.log10(min(positive)))
        y1 = 10 ** math.ceil(math.log10(max(positive)))
        if y1 <= y0:
            y1 = y0 * 10

        def ty(v: float) -> float:
            v = max(v, y0)
            return top + ph - (math.log10(v) - math.log10(y0)) / (
                math.log10(y1) - math.log10(y0)) * ph
        yt = [10.0 ** k for k in range(int(math.log10(y0)), int(math.log10(y1)) + 1)]
    else:
        y0 = c.y_min if c.y_min is not None else min(ys_all)
        y1 = max(ys_all) * 1.08 if max(ys_all) > y0 else y0 + 1
        yt = nice_ticks(y0, y1)
        y1 = max(y1, yt[-1])

        def ty(v: float) -> float:
            return top + ph - (v - y0) / (y1 - y0) * ph

    def tx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {c.width} {c.height}" '
           f'width="{c.width}" height="{c.height}" style="{FONT};background:#fff" '
           f'role="img" aria-label="{escape(c.title)}">'),
           f'<text x="{left}" y="20" font-size="14" font-weight="600">{escape(c.title)}</text>']
    if c.shade:
        a, b, label = c.shade
        out.append(f'<rect x="{tx(a):.1f}" y="{top}" width="{max(0, tx(b) - tx(a)):.1f}" '
                   f'height="{ph}" fill="#f3f4f6"/>')
        out.append(f'<text x="{tx(a) + 4:.1f}" y="{top + ph - 6}" font-size="11" '
                   f'fill="#6b7280">{escape(label)}</text>')
    for v in yt:
        y = ty(v)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#e5e7eb"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                   f'fill="#374151">{fmt(v)}</text>')
    xticks = c.x_ticks or [(v, fmt(v)) for v in nice_ticks(x0, x1, 8)]
    for v, label in xticks:
        x = tx(v)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" '
                   'stroke="#9ca3af"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 17}" font-size="11" '
                   f'text-anchor="middle" fill="#374151">{escape(label)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
               'stroke="#9ca3af"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{c.height - 8}" font-size="12" '
               f'text-anchor="middle" fill="#111827">{escape(c.x_label)}</text>')
    out.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
               f'font-size="12" text-anchor="middle" fill="#111827">'
               f'{escape(c.y_label)}</text>')
    for v, label, color in c.hlines:
        y = ty(v)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="{color}" stroke-dasharray="6 4" stroke-width="1.5"/>')
        out.append(f'<text x="{left + pw - 4}" y="{y - 4:.1f}" font-size="11" '
                   f'text-anchor="end" fill="{color}">{escape(label)}</text>')
    for ln in c.lines:
        if ln.points:
            dots = "".join(f'<circle cx="{tx(x):.1f}" cy="{ty(y):.1f}" r="1.6"/>'
                           for x, y in zip(ln.xs, ln.ys, strict=True) if y is not None)
            out.append(f'<g fill="{ln.color}" fill-opacity="0.45">{dots}</g>')
            continue
        segs: list[list[str]] = [[]]
        for px, py in zip(ln.xs, ln.ys, strict=True):
            if py is None:
                if segs[-1]:
                    segs.append([])
                continue
            segs[-1].append(f"{tx(px):.1f},{ty(py):.1f}")
        dash = ' stroke-dasharray="5 3"' if ln.dashed else ""
        for seg in segs:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{ln.color}"/>')
            elif seg:
                out.append(f'<polyline fill="none" stroke="{ln.color}" '
                           f'stroke-width="{ln.width}"{dash} points="{" ".join(seg)}"/>')
            if ln.markers and len(seg) > 1:
                out.append(f'<g fill="{ln.color}">' + "".join(
                    f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="3"/>'
                    for p in seg) + "</g>")
    if c.marks:
        ticks = "".join(f'<line x1="{tx(x):.1f}" x2="{tx(x):.1f}" y1="{top}" y2="{top + 7}"/>'
                        for x in c.marks)
        out.append(f'<g stroke="{PALETTE["red"]}" stroke-width="1">{ticks}</g>')
    legend = [(ln.name, ln.color, ln.points, ln.dashed) for ln in c.lines]
    if c.marks:
        legend.append((c.marks_label or "marks", PALETTE["red"], False, False))
    lx = left + pw
    for name, color, points, dashed in reversed(legend):
        w = 7 * len(name) + 26
        lx -= w
        if points:
            sym = f'<circle cx="{lx + 6}" cy="15" r="3" fill="{color}"/>'
        else:
            dash = ' stroke-dasharray="5 3"' if dashed else ""
            sym = (f'<line x1="{lx}" x2="{lx + 14}" y1="15" y2="15" stroke="{color}" '
                   f'stroke-width="2.5"{dash}/>')
        out.append(sym + f'<text x="{lx + 18}" y="19" font-size="11" fill="#374151">'
                   f'{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def bars(title: str, rows: Sequence[tuple[str, Sequence[float]]], series: Sequence[str],
         unit: str, width: int = 860) -> str:
    """Horizontal grouped bars: one group per row, one bar per series."""
    colors = [PALETTE["blue"], PALETTE["orange"], PALETTE["purple"]]
    label_w, right, top, bar_h, gap = 170, 70, 40, 11, 10
    group_h = bar_h * len(series) + gap
    height = top + group_h * len(rows) + 10
    vmax = max([v for _, vals in rows for v in vals if v is not None] + [1e-9])
    pw = width - label_w - right
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" style="{FONT};background:#fff" role="img" '
           f'aria-label="{escape(title)}">'),
           f'<text x="8" y="20" font-size="14" font-weight="600">{escape(title)}</text>']
    lx = width - right
    for name, color in reversed(list(zip(series, colors, strict=False))):
        lx -= 7 * len(name) + 30
        out.append(f'<rect x="{lx}" y="10" width="12" height="10" fill="{color}"/>'
                   f'<text x="{lx + 16}" y="19" font-size="11" fill="#374151">'
                   f'{escape(name)}</text>')
    for r, (label, vals) in enumerate(rows):
        y = top + r * group_h
        out.append(f'<text x="{label_w - 8}" y="{y + group_h / 2 + 2:.1f}" font-size="12" '
                   f'text-anchor="end" fill="#111827">{escape(label)}</text>')
        for k, v in enumerate(vals):
            if v is None:
                continue
            w = max(0.0, v) / vmax * pw
            yy = y + k * bar_h
            out.append(f'<rect x="{label_w}" y="{yy}" width="{w:.1f}" height="{bar_h - 2}" '
                       f'fill="{colors[k % len(colors)]}"/>')
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{yy + bar_h - 3}" font-size="10" '
                       f'fill="#374151">{fmt(v)} {escape(unit)}</text>')
    out.append("</svg>")
    return "\n".join(out)
