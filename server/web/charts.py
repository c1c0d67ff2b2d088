"""Charts drawn on the server as SVG: no script, no style attribute (the dashboard's CSP allows neither inline),
readable in a screenshot (axis, ticks, day labels, a legend) and with a text alternative (``role="img"``,
``<title>``/``<desc>`` named by ``aria-labelledby``, a ``<title>`` on every bar part; the page puts the same numbers
in a table beside it).

:func:`stacked_days_svg` draws a doctor's days: per day two stacked bars side by side, the first how the visits were
verified, the second what the patients answered. It takes its words already translated, so it knows no language.
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Protocol

WIDTH, HEIGHT = 760, 360
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 44, 112  # the plot's margins: room for ticks, title, day labels and legend
FONT = "DejaVu Sans, Arial, sans-serif"
INK, GRID, MUTED = "#222222", "#d9d9d9", "#555555"


@dataclass(frozen=True)
class Segment:
    key: str  # the attribute of a day it counts (e.g. "code")
    colour: str
    outline: bool = False  # a pale colour drawn with a border so it shows on white


# Colour-blind-safe pairs (ColorBrewer PuOr / RdBu families); evidence from strongest to none, answers from yes to none.
METHOD_SEGMENTS = (Segment("face_live", "#1b7837"), Segment("face", "#7fbf7b"), Segment("code", "#e08214"),
                   Segment("unverified", "#b2182b"), Segment("scheduled", "#f0f0f0", outline=True))
ANSWER_SEGMENTS = (Segment("confirmed", "#2166ac"), Segment("claimed", "#92c5de"), Segment("disputed", "#762a83"),
                   Segment("no_answer", "#f0f0f0", outline=True))


class Day(Protocol):
    @property
    def day(self) -> dt.date: ...


@dataclass(frozen=True)
class ChartText:
    """Every word the chart shows, already in the reader's language."""
    title: str
    desc: str  # one or two sentences of what the chart shows, with the totals (screen readers read it)
    y_axis: str  # e.g. "visits"
    methods: str  # the first bar's legend heading, e.g. "Verified by"
    answers: str  # the second bar's heading, e.g. "Patient's answer"
    labels: Mapping[str, str]  # a segment's key -> its name
    empty: str  # said across the plot when no day has a visit


def nice_step(top: int, ticks: int = 5) -> int:
    """A step of 1, 2 or 5 times a power of ten giving at most ``ticks`` steps up to ``top``."""
    if top <= ticks:
        return 1
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    return int(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def _count(day: Day, key: str) -> int:
    return int(getattr(day, key))


def stacked_days_svg(days: Sequence[Day], text: ChartText, *, id_prefix: str = "chart",
                     methods: Sequence[Segment] = METHOD_SEGMENTS,
                     answers: Sequence[Segment] = ANSWER_SEGMENTS) -> str:
    """An SVG document fragment (``<svg …>…</svg>``) for inline use in a page."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    totals = [max(sum(_count(d, s.key) for s in methods), sum(_count(d, s.key) for s in answers)) for d in days]
    step = nice_step(max(totals, default=0))
    top = max(step, math.ceil(max(totals, default=0) / step) * step)
    scale = plot_h / top
    base = TOP + plot_h
    title_id, desc_id = f"{id_prefix}-title", f"{id_prefix}-desc"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
           f'height="{HEIGHT}" role="img" aria-labelledby="{title_id} {desc_id}" class="chart" '
           f'font-family="{FONT}" font-size="12" fill="{INK}">',
           f'<title id="{title_id}">{escape(text.title)}</title>',
           f'<desc id="{desc_id}">{escape(text.desc)}</desc>',
           f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
           f'<text x="{LEFT}" y="20" font-size="15" font-weight="bold">{escape(text.title)}</text>']
    # the y axis: grid lines at each step, their counts, the axis name
    out.append('<g class="y-axis" aria-hidden="true">')
    for value in range(0, top + 1, step):
        y = base - value * scale
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="{GRID}"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    out.append(f'<text x="14" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {TOP + plot_h / 2:.1f})">{escape(text.y_axis)}</text>')
    out.append("</g>")
    # the bars: per day the methods' bar, then the answers' bar
    slot = plot_w / max(len(days), 1)
    bar = max(2.0, min(14.0, slot * 0.4))
    out.append('<g class="bars">')
    for n, day in enumerate(days):
        x0 = LEFT + n * slot + (slot - 2 * bar - 1) / 2
        for x, segments, heading in ((x0, methods, text.methods), (x0 + bar + 1, answers, text.answers)):
            y = float(base)
            for segment in segments:
                count = _count(day, segment.key)
                if not count:
                    continue
                h = count * scale
                y -= h
                border = f' stroke="{MUTED}" stroke-width="0.75"' if segment.outline else ""
                label = f"{day.day:%d.%m}: {heading}: {text.labels.get(segment.key, segment.key)} {count}"
                out.append(f'<rect class="seg-{segment.key}" data-day="{day.day.isoformat()}" data-count="{count}" '
                           f'x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                           f'fill="{segment.colour}"{border}><title>{escape(label)}</title></rect>')
    out.append("</g>")
    out.append(f'<line x1="{LEFT}" y1="{base}" x2="{LEFT + plot_w}" y2="{base}" stroke="{INK}"/>')
    if not any(totals):
        out.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
                   f'fill="{MUTED}" font-size="14">{escape(text.empty)}</text>')
    # day labels: every fifth day counted back from the last, so the last day is always named
    out.append('<g class="x-axis" aria-hidden="true">')
    for n, day in enumerate(days):
        if (len(days) - 1 - n) % 5 == 0:
            x = LEFT + n * slot + slot / 2
            out.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="{INK}"/>')
            out.append(f'<text x="{x:.1f}" y="{base + 18}" text-anchor="middle">{day.day:%d.%m}</text>')
    out.append("</g>")
    # the legend: one row per bar, its heading then a swatch and a name per part (wrapping when a row is full)
    out.append('<g class="legend">')
    y = base + 40
    start = LEFT + max(150, 8 * max(len(text.methods), len(text.answers)) + 16)  # past the longer heading
    for segments, heading in ((methods, text.methods), (answers, text.answers)):
        out.append(f'<text x="{LEFT}" y="{y + 10}" font-weight="bold">{escape(heading)}</text>')
        x = start
        for segment in segments:
            name = text.labels.get(segment.key, segment.key)
            width = 17 + 7 * len(name) + 16
            if x + width > WIDTH - RIGHT and x > start:
                x, y = start, y + 20
            border = f' stroke="{MUTED}" stroke-width="0.75"' if segment.outline else ""
            out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{segment.colour}"{border}/>')
            out.append(f'<text x="{x + 17}" y="{y + 10}">{escape(name)}</text>')
            x += width
        y += 24
    out.append("</g></svg>")
    return "".join(out)
