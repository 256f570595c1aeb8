"""A self-contained HTML report of a backtest (the ``recstream backtest --json-file`` document).

Pure code, no Kafka, no torch: :func:`render_html` turns the JSON document of
:meth:`scoring.backtest.BacktestResult.to_dict` (plus the optional ``replay_prefix``,
``invalid_records`` and ``timings`` the command adds, and an optional
``latency_ms["histogram"]`` from :func:`scoring.metrics.latency_histogram`) into one HTML
page with inline CSS and hand-built inline SVG charts; it fetches nothing (no scripts, no
fonts, no images).  :func:`write_html` writes it to a file.

The page holds, in order: the protocol and the key counts; a table of every metric at every
cut-off per method (best value per column highlighted); when the document has ``ratios``
(:meth:`scoring.backtest.BacktestResult.ratios`), tables of each method's NDCG and HR at
k = 10 (else the largest cut-off up to 10) relative to every other method, with their 95%
paired bootstrap intervals; bar charts of HR, NDCG and MRR per
method at two cut-offs; line charts of NDCG and HR per calendar month; the latency
percentiles and histogram; a footer.

Every string taken from the document is HTML-escaped (method names and topic prefixes come
from users).  Missing optional parts, ``None`` values and values of the wrong type are shown
as "–" or left out, never an error.  Each method keeps one colour in every chart (colours
repeat after eight methods).
"""

from __future__ import annotations

import html
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

__all__ = ["render_html", "write_html"]

#: Okabe–Ito colours (distinguishable with the common colour-vision deficiencies).
_PALETTE: Final = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#7F7F7F", "#000000")
#: The table's metrics, in column order, with their short names.
_TABLE_METRICS: Final = (
    ("hit_rate", "HR"), ("ndcg", "NDCG"), ("mrr", "MRR"), ("recall", "Recall"), ("precision", "Prec"),
)  # fmt: skip
_SHORT: Final = dict(_TABLE_METRICS)
_DASH: Final = "–"
_CHART_WIDTH: Final = 720
_LEFT: Final = 56  # room for the y-axis tick labels
_RIGHT: Final = 16
_MONTH_RE: Final = re.compile(r"^(\d{4})-(\d{2})$")
_MAX_FILLED_MONTHS: Final = 600  # longer month ranges are drawn with the given months only
_SOURCE: Final = "scoring/report.py"

_CSS: Final = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  margin: 0; background: #f5f6f8; color: #1f2328; line-height: 1.45; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 8px; background: #fff; }
h1 { font-size: 1.7rem; margin: 0 0 .3rem; }
h2 { font-size: 1.2rem; margin: 2.2rem 0 .6rem; padding-bottom: .3rem; border-bottom: 1px solid #d8dee4; }
h3 { font-size: 1rem; margin: 1.2rem 0 .3rem; color: #444c56; }
p { margin: .4rem 0; }
.protocol { color: #444c56; }
.muted, .note { color: #6e7781; font-size: .9rem; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; margin: 1rem 0 .6rem; padding: 0; list-style: none; }
.tiles li { border: 1px solid #d8dee4; border-radius: 8px; padding: 8px 14px; min-width: 92px; background: #fafbfc; }
.tiles .v { display: block; font-size: 1.35rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.tiles .k { display: block; font-size: .8rem; color: #6e7781; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .85rem; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 8px; border-bottom: 1px solid #eaeef2; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; font-weight: 600; }
th.group { text-align: center; border-left: 1px solid #d8dee4; }
td.first, th.first { border-left: 1px solid #d8dee4; }
td.name, th.name { text-align: left; }
td.best { background: #dafbe1; font-weight: 700; }
table.ratios td.up { background: #dafbe1; }
table.ratios td.down { background: #ffebe9; }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: 2px; margin-right: .4em;
  vertical-align: -1px; }
.sub { color: #6e7781; font-size: .8em; }
dl.timings { display: grid; grid-template-columns: max-content max-content; gap: 2px 16px; font-size: .9rem; }
dl.timings dt { color: #6e7781; } dl.timings dd { margin: 0; text-align: right; font-variant-numeric: tabular-nums; }
svg { display: block; width: 100%; max-width: 720px; height: auto; margin: .4rem 0 1rem; }
svg text { font-family: inherit; fill: #444c56; }
footer { max-width: 1040px; margin: 0 auto; padding: 12px 28px 24px; background: #fff; color: #6e7781;
  font-size: .8rem; border-top: 1px solid #eaeef2; }
"""


# --------------------------------------------------------------------------- values


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _float(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` (``None``, bools, strings, NaN, ...)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _metric(value: object) -> str:
    v = _float(value)
    return _DASH if v is None else f"{v:.4f}"


def _ms(value: object) -> str:
    v = _float(value)
    return _DASH if v is None else f"{v:,.1f}"


def _count(value: object) -> str:
    v = _float(value)
    if v is None:
        return _DASH
    return f"{v:,.0f}" if v == int(v) else f"{v:,.2f}"


def _timing_name(key: object) -> str:
    """``"replay_events_per_s"`` -> ``"replay events per second"``, ``"total_s"`` -> ``"total (s)"``."""
    name = str(key)
    if name.endswith("_per_s"):
        name = name[: -len("_per_s")] + " per second"
    elif name.endswith("_s"):
        name = name[: -len("_s")] + " (s)"
    return name.replace("_", " ")


def _timing(value: object) -> str:
    """A timing value: integers with separators, other numbers to 2 decimals, else as is."""
    v = _float(value)
    if v is None:
        return str(value)
    return f"{int(v):,}" if isinstance(value, numbers.Integral) else f"{v:,.2f}"


def _tick(value: float) -> str:
    return f"{round(value, 10):g}"


def _utc_iso(ms: object) -> str | None:
    v = _float(ms)
    if v is None:
        return None
    try:
        return datetime.fromtimestamp(v / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


def _duration(ms: float) -> str:
    hours = ms / 3_600_000
    return f"{hours / 24:g} d" if hours >= 48 else f"{hours:g} h" if hours >= 1 else f"{ms / 1000:g} s"


def _edge(ms: float) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"


def _bin_label(lo: float, hi: float | None) -> str:
    """``"10–20 ms"``, ``"500 ms–1 s"``, ``"1–2 s"``; ``"≥ 60 s"`` for the overflow bin."""
    if hi is None:
        return f"≥ {_edge(lo)}"
    if (lo >= 1000) == (hi >= 1000):
        unit, div = ("s", 1000) if lo >= 1000 else ("ms", 1)
        return f"{lo / div:g}–{hi / div:g} {unit}"
    return f"{_edge(lo)}–{_edge(hi)}"


def _ks(doc: Mapping[str, Any], methods: Mapping[str, Any]) -> list[int]:
    """The cut-offs: the config's, else those found in the methods' metric names."""
    given = _mapping(doc.get("config")).get("ks")
    ks: set[int] = set()
    if isinstance(given, Sequence) and not isinstance(given, str):
        ks = {k for k in given if isinstance(k, int) and not isinstance(k, bool) and k >= 1}
    if not ks:
        for m in methods.values():
            for key in _mapping(_mapping(m).get("metrics")):
                name, _, k = str(key).partition("@")
                if name in _SHORT and k.isdigit() and int(k) >= 1:
                    ks.add(int(k))
    return sorted(ks)


def _value(method: Mapping[str, Any], metric: str, k: int) -> float | None:
    return _float(_mapping(method.get("metrics")).get(f"{metric}@{k}"))


def _coverage(method: Mapping[str, Any], k: int) -> tuple[float | None, float | None]:
    """``(coverage, items)`` at ``k``."""
    row = _mapping(_mapping(method.get("coverage")).get(str(k)))
    return _float(row.get("coverage")), _float(row.get("items"))


# --------------------------------------------------------------------------- svg pieces


def _nice_ticks(vmax: float, n: int = 5, *, integer: bool = False) -> list[float]:
    """Evenly spaced ticks from 0 to a round value ``>= vmax`` (1-2-2.5-5 steps)."""
    if vmax <= 0:
        vmax = 1.0
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag * n >= vmax)
    if integer:
        step = max(1.0, math.ceil(step))
    return [i * step for i in range(math.ceil(vmax / step - 1e-9) + 1)]


def _text_width(text: str, size: float = 12) -> float:
    return len(text) * size * 0.6


@dataclass(frozen=True)
class _Plot:
    """The plotting area of a chart (SVG user units) and its y range ``[0, ymax]``."""

    left: float
    top: float
    width: float
    height: float
    ymax: float

    @property
    def bottom(self) -> float:
        return self.top + self.height

    @property
    def right(self) -> float:
        return self.left + self.width

    def y(self, value: float) -> float:
        return self.bottom - self.height * min(max(value / self.ymax, 0.0), 1.0)


def _svg(width: float, height: float, label: str, body: Sequence[str]) -> str:
    return (
        f'<svg viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" role="img" '
        f'aria-label="{_esc(label)}" font-size="12"><title>{_esc(label)}</title>\n' + "\n".join(body) + "\n</svg>"
    )


def _y_axis(plot: _Plot, ticks: Sequence[float]) -> list[str]:
    out = []
    for t in ticks:
        y = plot.y(t)
        out.append(f'<line x1="{plot.left:.1f}" y1="{y:.1f}" x2="{plot.right:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>')
        out.append(f'<text x="{plot.left - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">{_tick(t)}</text>')
    y = plot.bottom
    out.append(f'<line x1="{plot.left:.1f}" y1="{y:.1f}" x2="{plot.right:.1f}" y2="{y:.1f}" stroke="#8c959f"/>')
    return out


def _legend(methods: Sequence[str], colours: Mapping[str, str], x: float, y: float, width: float) -> tuple[str, float]:
    """A legend of coloured squares and names, wrapped into rows; returns it and its height."""
    parts, cx, cy, row = [], x, y, 18.0
    for name in methods:
        w = 18 + _text_width(name) + 18
        if cx > x and cx + w > x + width:
            cx, cy = x, cy + row
        parts.append(f'<rect x="{cx:.1f}" y="{cy + 2:.1f}" width="12" height="12" rx="2" fill="{colours[name]}"/>')
        parts.append(f'<text x="{cx + 18:.1f}" y="{cy + 12:.1f}">{_esc(name)}</text>')
        cx += w
    return '<g class="legend">' + "".join(parts) + "</g>", cy - y + row


def _bar_chart(
    label: str,
    groups: Sequence[tuple[str, str]],
    methods: Sequence[str],
    colours: Mapping[str, str],
    values: Sequence[Sequence[float | None]],
) -> str:
    """Grouped bars: one group per ``(metric key, group label)``, one bar per method.

    ``values[g][m]`` is method ``m``'s value in group ``g``; bars carry ``data-method`` and
    ``data-metric`` attributes and a tooltip.
    """
    width = float(_CHART_WIDTH)
    legend, legend_h = _legend(methods, colours, _LEFT, 8, width - _LEFT - _RIGHT)
    group_w = (width - _LEFT - _RIGHT) / len(groups)
    bar_w = group_w * 0.8 / len(methods)
    rotated = bar_w < 40  # value labels do not fit across the bar: write them upwards
    ticks = _nice_ticks(max((v for row in values for v in row if v is not None), default=0.0))
    plot = _Plot(_LEFT, 8 + legend_h + (50 if rotated else 20), width - _LEFT - _RIGHT, 220, ticks[-1])
    body = [legend, *_y_axis(plot, ticks)]
    for g, ((key, group_label), row) in enumerate(zip(groups, values)):
        x0 = plot.left + g * group_w + group_w * 0.1
        for m, (name, v) in enumerate(zip(methods, row)):
            x = x0 + m * bar_w
            cx = x + bar_w / 2
            if v is None:
                body.append(f'<text x="{cx:.1f}" y="{plot.bottom - 4:.1f}" text-anchor="middle">{_DASH}</text>')
                continue
            top = plot.y(v)
            tip = f"{name} · {group_label}: {_metric(v)}"
            body.append(
                f'<rect class="bar" data-method="{_esc(name)}" data-metric="{_esc(key)}" x="{x + 1:.1f}" '
                f'y="{top:.1f}" width="{max(bar_w - 2, 1):.1f}" height="{plot.bottom - top:.1f}" '
                f'fill="{colours[name]}"><title>{_esc(tip)}</title></rect>'
            )
            if rotated:
                tx, ty = cx + 4, top - 4
                body.append(f'<text x="{tx:.1f}" y="{ty:.1f}" font-size="11" transform="rotate(-90 {tx:.1f} {ty:.1f})">{_metric(v)}</text>')
            else:
                body.append(f'<text x="{cx:.1f}" y="{top - 4:.1f}" font-size="11" text-anchor="middle">{_metric(v)}</text>')
        gx, gy = plot.left + (g + 0.5) * group_w, plot.bottom + 18
        body.append(f'<text x="{gx:.1f}" y="{gy:.1f}" text-anchor="middle" font-weight="600">{_esc(group_label)}</text>')
    return _svg(width, plot.bottom + 30, label, body)


def _line_chart(
    label: str,
    months: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    colours: Mapping[str, str],
    cases: Sequence[float | None],
) -> str:
    """One line per method over the months (gaps at ``None``), points on every value, and
    a strip of bars with the number of cases per month under the x axis."""
    width = float(_CHART_WIDTH)
    legend, legend_h = _legend(list(series), colours, _LEFT, 8, width - _LEFT - _RIGHT)
    ticks = _nice_ticks(max((v for vs in series.values() for v in vs if v is not None), default=0.0))
    plot = _Plot(_LEFT, 8 + legend_h + 14, width - _LEFT - _RIGHT, 200, ticks[-1])
    n = len(months)
    pad = 28.0  # keeps the first and last month labels inside the chart
    step = (plot.width - 2 * pad) / (n - 1) if n > 1 else 0.0

    def x_of(i: int) -> float:
        return plot.left + pad + i * step if n > 1 else plot.left + plot.width / 2

    body = [legend, *_y_axis(plot, ticks)]
    label_every = math.ceil(n / max(1, int(plot.width // 58)))
    for i, month in enumerate(months):
        if i % label_every == 0:
            x, y = x_of(i), plot.bottom + 16
            body.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="middle">{_esc(month)}</text>')
    radius = 3.5 if n <= 40 else 2.0
    for name, vs in series.items():
        colour = colours[name]
        run: list[str] = []
        for i, v in enumerate([*vs, None]):  # the trailing None closes the last run
            if v is not None:
                run.append(f"{x_of(i):.1f},{plot.y(v):.1f}")
                continue
            if len(run) > 1:
                body.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="2"/>')
            run = []
        for i, v in enumerate(vs):
            if v is not None:
                tip = f"{name} · {months[i]}: {_metric(v)}"
                body.append(f'<circle cx="{x_of(i):.1f}" cy="{plot.y(v):.1f}" r="{radius}" fill="{colour}"><title>{_esc(tip)}</title></circle>')
    # cases per month: a strip of bars under the month labels
    strip_top, strip_h = plot.bottom + 30, 34.0
    most = max((c for c in cases if c is not None), default=0.0)
    body.append(f'<text x="{plot.left - 6:.1f}" y="{strip_top + strip_h / 2 + 4:.1f}" text-anchor="end">cases</text>')
    bar_w = max(1.0, min(step * 0.7 if n > 1 else 24.0, 24.0))
    for i, c in enumerate(cases):
        if c is None or most <= 0:
            continue
        h = max(strip_h * c / most, 1.0)
        body.append(
            f'<rect class="cases" x="{x_of(i) - bar_w / 2:.1f}" y="{strip_top + strip_h - h:.1f}" width="{bar_w:.1f}" '
            f'height="{h:.1f}" fill="#afb8c1"><title>{_esc(months[i])}: {_count(c)} cases</title></rect>'
        )
    body.append(
        f'<text x="{plot.right:.1f}" y="{strip_top + strip_h + 16:.1f}" text-anchor="end" font-size="11">cases per month (tallest: {_count(most)})</text>'
    )
    return _svg(width, strip_top + strip_h + 24, label, body)


def _histogram_chart(edges: Sequence[float], counts: Sequence[float], markers: Mapping[str, float]) -> str:
    """Equal-width bars for the bins (leading and trailing empty bins dropped) with dashed
    markers at the given percentiles, placed linearly inside their bin."""
    nonzero = [i for i, c in enumerate(counts) if c > 0]
    first, last = (nonzero[0], nonzero[-1]) if nonzero else (0, len(counts) - 1)
    width = float(_CHART_WIDTH)
    ticks = _nice_ticks(max(counts[first : last + 1]), integer=True)
    # marker labels one row each above the plot, then room for the count over the tallest bar
    plot = _Plot(_LEFT, 8 + 14 * len(markers) + 20, width - _LEFT - _RIGHT, 200, ticks[-1])
    n = last - first + 1
    bin_w = plot.width / n
    body = _y_axis(plot, ticks)
    for j, i in enumerate(range(first, last + 1)):
        x, c = plot.left + j * bin_w, counts[i]
        label = _bin_label(edges[i], edges[i + 1] if i + 1 < len(edges) else None)
        top = plot.y(c)
        body.append(
            f'<rect class="bin" x="{x + 1:.1f}" y="{top:.1f}" width="{max(bin_w - 2, 1):.1f}" '
            f'height="{plot.bottom - top:.1f}" fill="#8fb8de"><title>{_esc(label)}: {_count(c)}</title></rect>'
        )
        if c > 0 and _text_width(_count(c), 10) <= bin_w:
            body.append(f'<text x="{x + bin_w / 2:.1f}" y="{top - 3:.1f}" font-size="10" text-anchor="middle">{_count(c)}</text>')
        lx, ly = x + bin_w / 2, plot.bottom + 12
        body.append(f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="10" text-anchor="end" transform="rotate(-40 {lx:.1f} {ly:.1f})">{_esc(label)}</text>')
    for row, (name, v) in enumerate(markers.items()):
        at = next((i for i in range(len(edges) - 1, -1, -1) if v >= edges[i]), None)
        if at is None or not first <= at <= last:
            continue
        frac = (v - edges[at]) / (edges[at + 1] - edges[at]) if at + 1 < len(edges) else 0.5
        x = plot.left + (at - first + min(max(frac, 0.0), 1.0)) * bin_w
        y = 8 + 14 * row + 10
        anchor, tx = ("end", x - 3) if x > plot.right - 110 else ("start", x + 3)
        body.append(f'<line class="marker" x1="{x:.1f}" y1="{y - 8:.1f}" x2="{x:.1f}" y2="{plot.bottom:.1f}" stroke="#cf222e" stroke-dasharray="4 3"/>')
        body.append(f'<text x="{tx:.1f}" y="{y:.1f}" font-size="11" text-anchor="{anchor}" fill="#cf222e">{name} {_ms(v)} ms</text>')
    return _svg(width, plot.bottom + 80, "latency histogram", body)


# --------------------------------------------------------------------------- sections


def _header(doc: Mapping[str, Any], title: str) -> str:
    config = _mapping(doc.get("config"))
    counts = _mapping(doc.get("counts"))
    parts = [f"<h1>{_esc(title)}</h1>"]

    split = _utc_iso(config.get("split_ms"))
    threshold = _float(config.get("positive_threshold"))
    names = {"click": "clicks", "purchase": "purchases"}
    names["positive"] = "positive reviews" + (f" (rating ≥ {threshold:g})" if threshold is not None else "")
    targets = config.get("targets")
    if not isinstance(targets, Sequence) or isinstance(targets, str):
        targets = []
    kinds = [names.get(str(t), str(t)) for t in targets]
    if len(kinds) > 1:
        kinds = [", ".join(kinds[:-1]), kinds[-1]]
    kinds_text = " and ".join(kinds) or "the target events"
    ks = _ks(doc, _mapping(doc.get("methods")))
    protocol = (
        f"Events before <b>{_esc(split or '?')}</b> warm up the state; later {_esc(kinds_text)} are the cases, "
        "each ranked against the list the user held just before it" + (f", at cut-offs k = {', '.join(map(str, ks))}." if ks else ".")
    )
    parts.append(f'<p class="protocol">{protocol}</p>')

    settings = []
    if (knn := _float(config.get("knn_history_len"))) is not None:
        settings.append(f"item-kNN history {knn:g} items")
    if (hl := _float(config.get("popularity_half_life_ms"))) is not None and hl > 0:
        settings.append(f"popularity half-life {_duration(hl)}")
    if "replay_prefix" in doc:
        settings.append(f"replay prefix <code>{_esc(doc['replay_prefix'])}</code>")
    if settings:
        parts.append(f'<p class="muted">{" · ".join(settings)}</p>')

    tiles = [
        ("cases", f'{_count(counts.get("cases"))}<span class="sub"> of {_count(counts.get("targets"))} targets</span>'),
        ("cold", _count(counts.get("cold"))),
        ("missing", _count(counts.get("missing"))),
        ("skipped", _count(counts.get("skipped"))),
        ("warm-up events", _count(counts.get("warm"))),
        ("catalog items", _count(doc.get("catalog_size"))),
    ]
    if "invalid_records" in doc:
        tiles.append(("invalid records", _count(doc.get("invalid_records"))))
    parts.append('<ul class="tiles">' + "".join(f'<li><span class="v">{v}</span><span class="k">{k}</span></li>' for k, v in tiles) + "</ul>")
    notes = [
        (counts.get("excluded_targets"), "cases target an item excluded for the user"),
        (counts.get("unknown_targets"), "cases target an item outside the catalog"),
        (counts.get("fallback_cases"), "cases where recstream held a popularity fallback"),
    ]
    shown = [f"{_count(n)} {text}" for n, text in notes if (_float(n) or 0) > 0]
    if shown:
        parts.append(f'<p class="note">{"; ".join(shown)}.</p>')

    timings = _mapping(doc.get("timings"))
    if timings:
        rows = "".join(f"<dt>{_esc(_timing_name(k))}</dt><dd>{_esc(_timing(v))}</dd>" for k, v in timings.items())
        parts.append(f'<h3>Timings</h3><dl class="timings">{rows}</dl>')
    return "\n".join(parts)


def _best(values: Sequence[float | None]) -> float | None:
    """The largest value, when there is something to compare (two values, not all equal)."""
    present = [v for v in values if v is not None]
    if len(present) < 2 or max(present) == min(present):
        return None
    return max(present)


def _metrics_table(methods: Mapping[str, Mapping[str, Any]], ks: Sequence[int], colours: Mapping[str, str]) -> str:
    names = list(methods)
    head1 = ['<th class="name" rowspan="2">method</th>', '<th rowspan="2">cases</th>']
    head1 += [f'<th class="group" colspan="{len(_TABLE_METRICS)}">@{k}</th>' for k in ks]
    head1.append(f'<th class="group" colspan="{len(ks)}">catalog coverage (items)</th>')
    head2 = [f"{short}@{k}" for k in ks for _, short in _TABLE_METRICS] + [f"@{k}" for k in ks]

    columns: list[list[tuple[float | None, str]]] = []  # per column: (value to compare, cell html) per method
    for k in ks:
        for metric, _ in _TABLE_METRICS:
            values = [_value(methods[n], metric, k) for n in names]
            columns.append([(v, _metric(v)) for v in values])
    for k in ks:
        col = []
        for n in names:
            cov, items = _coverage(methods[n], k)
            extra = f' <span class="sub">({_count(items)})</span>' if items is not None else ""
            col.append((cov, _metric(cov) + extra))
        columns.append(col)
    # the first column of each group gets a left border
    firsts = {i * len(_TABLE_METRICS) for i in range(len(ks))} | {len(ks) * len(_TABLE_METRICS)}
    bests = [_best([v for v, _ in col]) for col in columns]
    head = [f'<th class="first">{h}</th>' if c in firsts else f"<th>{h}</th>" for c, h in enumerate(head2)]

    rows = []
    for m, name in enumerate(names):
        cells = [
            f'<td class="name"><span class="swatch" style="background:{colours[name]}"></span>{_esc(name)}</td>',
            f"<td>{_count(_mapping(methods[name].get('metrics')).get('cases'))}</td>",
        ]
        for c, col in enumerate(columns):
            v, text = col[m]
            classes = (["first"] if c in firsts else []) + (["best"] if v is not None and v == bests[c] else [])
            cells.append(f'<td class="{" ".join(classes)}">{text}</td>' if classes else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<div class="scroll"><table class="metrics">'
        f"<thead><tr>{''.join(head1)}</tr><tr>{''.join(head)}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        '<p class="note">HR hit rate, NDCG normalised discounted cumulative gain, MRR mean reciprocal rank, '
        "Prec precision; means over the cases. Coverage: share of the catalog that appeared in some top-k "
        "(distinct items in brackets). The best value of each column is highlighted.</p>"
    )


def _ratio_cell(entry: object) -> str:
    """One ratio with its interval; green when the interval is above 1, red when below."""
    entry = _mapping(entry)
    ratio = _float(entry.get("ratio"))
    if ratio is None:
        return f"<td>{_DASH}</td>"
    ci = entry.get("ci95")
    if not (isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2):
        return f"<td>{ratio:.3f}</td>"  # no interval
    lo, hi = _float(ci[0]), _float(ci[1])  # None: not finite (an upper bound: unbounded)
    interval = f"[{_DASH if lo is None else f'{lo:.3f}'}, {'∞' if hi is None else f'{hi:.3f}'}]"
    cls = ' class="up"' if lo is not None and lo > 1 else ' class="down"' if hi is not None and hi < 1 else ""
    return f'<td{cls}>{ratio:.3f} <span class="sub">{_esc(interval)}</span></td>'


def _ratios(doc: Mapping[str, Any], methods: Mapping[str, Any], ks: Sequence[int], colours: Mapping[str, str]) -> str | None:
    """Tables of the ratios of NDCG and HR at one cut-off, row method over column method;
    ``None`` when the document has none."""
    ratios = _mapping(doc.get("ratios"))
    at = [k for k in ks if f"ndcg@{k}" in ratios or f"hit_rate@{k}" in ratios]
    if not at:
        return None
    k = 10 if 10 in at else max((k for k in at if k <= 10), default=at[0])
    tables = []
    for metric in ("ndcg", "hit_rate"):
        block = {str(name): _mapping(row) for name, row in _mapping(ratios.get(f"{metric}@{k}")).items()}
        names = [n for n in methods if n in block] + [n for n in block if n not in methods]
        others = list(dict.fromkeys(o for n in names for o in block[n]))
        others = [n for n in methods if n in others] + [n for n in others if n not in methods]
        if not names or not others:
            continue
        head = '<th class="name">method</th>' + "".join(f"<th>vs {_esc(o)}</th>" for o in others)
        rows = []
        for name in names:
            swatch = f'<span class="swatch" style="background:{colours.get(name, _PALETTE[-1])}"></span>'
            cells = [f'<td class="name">{swatch}{_esc(name)}</td>']
            cells += [f"<td>{_DASH}</td>" if o == name else _ratio_cell(block[name].get(o)) for o in others]
            rows.append("<tr>" + "".join(cells) + "</tr>")
        tables.append(
            f'<h3>{_SHORT[metric]}@{k}</h3><div class="scroll"><table class="ratios"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        )
    if not tables:
        return None
    boot = _mapping(doc.get("ratios_bootstrap"))
    cases, resamples = _float(boot.get("cases")), _float(boot.get("resamples"))
    over = f" over the {_count(cases)} cases" if cases is not None else " over the cases"
    draws = f" ({_count(resamples)} resamples)" if resamples is not None else ""
    note = (
        "<p class=\"note\">Each cell is the row method's mean divided by the column method's mean, "
        f"on the same cases; in brackets its 95% paired bootstrap interval{_esc(over)}{_esc(draws)}, "
        "resampling the cases jointly for both methods. Green: the interval lies above 1 (a gain beyond noise); "
        "red: below 1. The JSON document holds every cut-off.</p>"
    )
    return "\n".join(tables) + note


def _comparison(methods: Mapping[str, Mapping[str, Any]], ks: Sequence[int], colours: Mapping[str, str]) -> str:
    small = max((k for k in ks if k <= 10), default=ks[0])
    names = list(methods)
    charts = []
    for k in dict.fromkeys((small, ks[-1])):
        groups = [(f"{metric}@{k}", f"{_SHORT[metric]}@{k}") for metric in ("hit_rate", "ndcg", "mrr")]
        values = [[_value(methods[n], metric, k) for n in names] for metric in ("hit_rate", "ndcg", "mrr")]
        chart = _bar_chart(f"HR, NDCG and MRR at k = {k}", groups, names, colours, values)
        charts.append(f"<h3>At k = {k}</h3>{chart}")
    return "\n".join(charts)


def _month_axis(labels: Sequence[str]) -> list[str]:
    """The months to draw: every calendar month from the first to the last when all labels
    are ``YYYY-MM`` (months without cases become gaps), else the labels as given."""
    parsed = [_MONTH_RE.match(m) for m in labels]
    if not labels or not all(parsed):
        return list(labels)
    index = [int(p.group(1)) * 12 + int(p.group(2)) - 1 for p in parsed if p]
    lo, hi = min(index), max(index)
    if hi - lo >= _MAX_FILLED_MONTHS:
        return list(labels)
    return [f"{i // 12:04d}-{i % 12 + 1:02d}" for i in range(lo, hi + 1)]


def _slices(methods: Mapping[str, Mapping[str, Any]], ks: Sequence[int], colours: Mapping[str, str]) -> str:
    by_method: dict[str, dict[str, Mapping[str, Any]]] = {}
    order: dict[str, tuple[float, str]] = {}
    for name, m in methods.items():
        rows = m.get("slices")
        rows = rows if isinstance(rows, Sequence) and not isinstance(rows, str) else []
        for row in map(_mapping, rows):
            month = row.get("month")
            if month is None:
                iso = _utc_iso(row.get("start_ms"))
                month = iso[:7] if iso else None
            if month is None:
                continue
            month = str(month)
            by_method.setdefault(name, {})[month] = row
            start = _float(row.get("start_ms"))
            order.setdefault(month, (start if start is not None else math.inf, month))
    if not order:
        return '<p class="muted">No per-month slices in this document.</p>'
    months = _month_axis(sorted(order, key=order.__getitem__))
    k = 10 if 10 in ks else ks[-1]
    cases: list[float | None] = []  # the same for every method (same cases): take the largest
    for month in months:
        known = [c for rows in by_method.values() if (c := _float(rows.get(month, {}).get("cases"))) is not None]
        cases.append(max(known, default=None))
    charts = []
    for metric in ("ndcg", "hit_rate"):
        key = f"{metric}@{k}"
        series = {name: [_float(by_method.get(name, {}).get(mo, {}).get(key)) for mo in months] for name in methods}
        label = f"{_SHORT[metric]}@{k} per month"
        charts.append(f"<h3>{_esc(label)}</h3>" + _line_chart(label, months, series, colours, cases))
    return "\n".join(charts)


def _floats(values: object) -> list[float] | None:
    """A list of finite numbers as floats; ``None`` when it is anything else."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        return None
    out = [_float(v) for v in values]
    return None if None in out else [v for v in out if v is not None]


def _histogram(latency: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    """``(edges, counts)`` when the document holds a consistent, non-empty histogram."""
    hist = _mapping(latency.get("histogram"))
    edges, counts = _floats(hist.get("edges_ms")), _floats(hist.get("counts"))
    if not edges or counts is None or len(edges) != len(counts):
        return None
    if any(b <= a for a, b in zip(edges, edges[1:])) or min(counts) < 0 or sum(counts) <= 0:
        return None
    return edges, counts


def _latency(doc: Mapping[str, Any]) -> str:
    latency = _mapping(doc.get("latency_ms"))
    if not (_float(latency.get("count")) or 0) > 0:
        return '<p class="muted">No latency was measured in this backtest.</p>'
    stats = ("p50", "p95", "p99", "max", "mean")
    table = (
        '<table class="latency"><thead><tr>'
        + "".join(f"<th>{s}</th>" for s in stats)
        + "<th>count</th></tr></thead><tbody><tr>"
        + "".join(f"<td>{_ms(latency.get(s))} ms</td>" for s in stats)
        + f"<td>{_count(latency.get('count'))}</td></tr></tbody></table>"
    )
    hist = _histogram(latency)
    if hist is None:
        return table + '<p class="muted">No latency histogram in this document: no distribution to draw.</p>'
    markers = {s: v for s in ("p50", "p95", "p99") if (v := _float(latency.get(s))) is not None}
    return table + "<h3>Distribution</h3>" + _histogram_chart(*hist, markers)


# --------------------------------------------------------------------------- public


def render_html(doc: Mapping[str, Any], *, title: str = "recstream backtest") -> str:
    """The report of a ``recstream backtest --json-file`` document, as one HTML page."""
    methods = {str(name): _mapping(m) for name, m in _mapping(doc.get("methods")).items()}
    ks = _ks(doc, methods)
    colours = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(methods)}
    sections = [_header(doc, title)]
    if methods and ks:
        sections += [
            "<h2>Metrics</h2>" + _metrics_table(methods, ks, colours),
            *([f"<h2>Ratios with 95% intervals</h2>{ratios}"] if (ratios := _ratios(doc, methods, ks, colours)) is not None else []),
            "<h2>Comparison with the baselines</h2>" + _comparison(methods, ks, colours),
            "<h2>Metrics per time slice</h2>" + _slices(methods, ks, colours),
        ]
    else:
        sections.append('<h2>Metrics</h2><p class="muted">No method metrics in this document.</p>')
    sections.append(
        "<h2>Latency</h2>"
        '<p class="note">Per event: from when the worker\'s consumer received it to when its recommendation '
        "was published (offline: the engine time of its micro-batch). A replay runs as fast as the machine "
        "allows, so the events wait in the worker's fetch buffer: this includes that backlog.</p>" + _latency(doc)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(sections)
        + f"\n</main>\n<footer>Generated by recstream <code>{_SOURCE}</code> from a "
        "<code>recstream backtest --json-file</code> document.</footer>\n</body>\n</html>\n"
    )


def write_html(doc: Mapping[str, Any], path: str | os.PathLike[str], *, title: str = "recstream backtest") -> None:
    """Write :func:`render_html` of ``doc`` to ``path`` (UTF-8)."""
    Path(path).write_text(render_html(doc, title=title), encoding="utf-8")
