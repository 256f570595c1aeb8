"""The HTML backtest report (:mod:`scoring.report`): documents built by hand, and one from a
real :func:`scoring.backtest.evaluate_records` run, checked the way a reader would check them
(well-formed, every method shown, the numbers right, nothing fetched, nothing injected)."""

from __future__ import annotations

import copy
import json
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from recstream.scoring.backtest import BacktestConfig, evaluate_records
from recstream.scoring.metrics import latency_histogram
from recstream.scoring.report import render_html, write_html
from recstream.streams.records import Click, Purchase, RecItem, Recommendation, Review, Trigger

METRICS = ("hit_rate", "recall", "precision", "ndcg", "mrr")
MAR1_2017 = 1_488_326_400_000  # 2017-03-01T00:00:00Z
APR1_2017 = 1_491_004_800_000  # 2017-04-01T00:00:00Z
MAY1_2017 = 1_493_596_800_000  # 2017-05-01T00:00:00Z


# --------------------------------------------------------------------------- helpers


def method(ks: tuple[int, ...], values: dict[str, float | None], months: list[dict[str, Any]] | None = None, cases: int = 100) -> dict[str, Any]:
    """A method's document: every metric at every k is 0.1 unless ``values`` says otherwise."""
    metrics: dict[str, Any] = {"cases": cases}
    for k in ks:
        for m in METRICS:
            metrics[f"{m}@{k}"] = values.get(f"{m}@{k}", 0.1)
    return {
        "metrics": metrics,
        "coverage": {str(k): {"items": 10 * k, "coverage": values.get(f"coverage@{k}", k / 100)} for k in ks},
        "slices": months if months is not None else [],
    }


def month_row(month: str, start_ms: int, cases: int, ks: tuple[int, ...], value: float | None) -> dict[str, Any]:
    return {"month": month, "start_ms": start_ms, "cases": cases, **{f"{m}@{k}": value for k in ks for m in METRICS}}


def make_doc(methods: dict[str, dict[str, Any]], ks: tuple[int, ...] = (5, 10, 20), **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "config": {
            "split_ms": MAR1_2017,
            "targets": ["click", "positive", "purchase"],
            "positive_threshold": 4.0,
            "ks": list(ks),
            "knn_history_len": 20,
            "popularity_half_life_ms": 7 * 86_400_000,
        },
        "catalog_size": 1000,
        "counts": {
            "events": 5000,
            "warm": 4000,
            "test": 1000,
            "targets": 900,
            "skipped": 100,
            "cold": 30,
            "missing": 7,
            "cases": 863,
            "excluded_targets": 0,
            "unknown_targets": 0,
            "fallback_cases": 0,
        },  # fmt: skip
        "latency_ms": {"p50": None, "p95": None, "p99": None, "max": None, "mean": None, "count": 0},
        "methods": methods,
    }
    doc.update(extra)
    return doc


def two_months(ks: tuple[int, ...], a: float | None, b: float | None) -> list[dict[str, Any]]:
    return [month_row("2017-03", MAR1_2017, 40, ks, a), month_row("2017-04", APR1_2017, 60, ks, b)]


def standard_doc() -> dict[str, Any]:
    ks = (5, 10, 20)
    return make_doc(
        {
            "recstream": method(ks, {"hit_rate@10": 0.4, "ndcg@10": 0.3}, two_months(ks, 0.3, 0.35)),
            "popularity": method(ks, {"hit_rate@10": 0.2, "ndcg@10": None}, two_months(ks, 0.1, 0.15)),
            "item-knn": method(ks, {"hit_rate@10": 0.25, "coverage@20": 0.9}, two_months(ks, 0.2, 0.25)),
        }
    )


class StrictTags(HTMLParser):
    """Fails on a closing tag that does not close the innermost open element, and
    records every attribute, so that a test can look for outside references."""

    VOID = frozenset({"meta", "br", "img", "link", "input", "hr", "col", "source", "wbr", "area", "base"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def check_well_formed(page: str) -> StrictTags:
    parser = StrictTags()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed elements: {parser.stack}"
    assert page.startswith("<!DOCTYPE html>")
    return parser


def svgs(page: str) -> list[ET.Element]:
    blocks = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    return [ET.fromstring(b) for b in blocks]


def legend_names(svg: ET.Element) -> list[str]:
    legend = svg.find("g[@class='legend']")
    assert legend is not None
    return [t.text or "" for t in legend.iter("text")]


def bars(svg: ET.Element) -> dict[tuple[str, str], float]:
    """``(method, metric) -> bar height`` of a comparison chart."""
    return {(r.get("data-method", ""), r.get("data-metric", "")): float(r.get("height", "nan")) for r in svg.iter("rect") if r.get("class") == "bar"}


def comparison_charts(page: str) -> list[ET.Element]:
    return [s for s in svgs(page) if any(r.get("class") == "bar" for r in s.iter("rect"))]


def line_charts(page: str) -> list[ET.Element]:
    return [s for s in svgs(page) if (s.get("aria-label") or "").endswith("per month")]


def table_html(page: str) -> str:
    match = re.search(r'<table class="metrics">.*?</table>', page, flags=re.S)
    assert match is not None
    return match.group(0)


# --------------------------------------------------------------------------- the page


def test_a_standard_document_is_well_formed_html_with_parseable_svg() -> None:
    page = render_html(standard_doc())
    check_well_formed(page)
    charts = svgs(page)
    # 2 comparison charts (k = 10 and k = 20), 2 per-month charts; no latency histogram
    assert len(charts) == 4
    for svg in charts:
        assert svg.tag == "svg" and svg.get("viewBox")
    # the sections, in the order a reader meets them
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == ["Metrics", "Comparison with the baselines", "Metrics per time slice", "Latency"]
    assert page.index('<table class="metrics">') < page.index("<h2>Comparison")
    assert "scoring/report.py" in page.split("<footer>")[1]


def test_header_states_the_protocol_and_the_counts() -> None:
    page = render_html(standard_doc(), title="March backtest")
    assert "<title>March backtest</title>" in page and "<h1>March backtest</h1>" in page
    assert "2017-03-01T00:00:00Z" in page
    assert "clicks, positive reviews (rating ≥ 4) and purchases" in page
    assert "k = 5, 10, 20" in page
    for count, label in [
        ("863", "cases"),
        ("900 targets", None),
        ("30", "cold"),
        ("7", "missing"),
        ("100", "skipped"),
        ("4,000", "warm-up events"),
        ("1,000", "catalog items"),
    ]:
        assert count in page
        if label:
            assert f'<span class="k">{label}</span>' in page
    # optional parts absent: no invalid-records tile, no timings, no prefix
    assert "invalid records" not in page and "Timings" not in page and "replay prefix" not in page


def test_optional_header_parts_when_present() -> None:
    doc = standard_doc()
    timings = {"replay_s": 12.345, "replay_events_per_s": 405.0, "events": 5000}
    doc.update(replay_prefix="bt-1.", invalid_records=12, timings=timings)
    doc["counts"]["fallback_cases"] = 5
    page = render_html(doc)
    assert "<code>bt-1.</code>" in page
    assert '<span class="v">12</span><span class="k">invalid records</span>' in page
    assert "<dt>replay (s)</dt><dd>12.35</dd>" in page
    assert "<dt>replay events per second</dt><dd>405.00</dd>" in page
    assert "<dt>events</dt><dd>5,000</dd>" in page
    assert "5 cases where recstream held a popularity fallback" in page


def test_every_method_is_in_the_table_and_in_every_legend() -> None:
    doc = standard_doc()
    page = render_html(doc)
    table = table_html(page)
    for name in doc["methods"]:
        assert f"</span>{name}</td>" in table
    charts = comparison_charts(page) + line_charts(page)
    assert len(charts) == 4
    for svg in charts:
        assert legend_names(svg) == list(doc["methods"])


def test_table_values_are_formatted_none_is_a_dash_and_the_best_is_highlighted() -> None:
    page = render_html(standard_doc())
    table = table_html(page)
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
    assert len(rows) == 3
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    # method, cases, 3 ks x 5 metrics, 3 coverages
    assert all(len(c) == 2 + 15 + 3 for c in cells)
    head = re.findall(r"<th[^>]*>(.*?)</th>", table.split("<tbody>")[0])
    columns = head[head.index("HR@5") :]
    hr10, ndcg10, cov20 = columns.index("HR@10") + 2, columns.index("NDCG@10") + 2, 2 + 15 + 2
    assert [c[hr10] for c in cells] == ["0.4000", "0.2000", "0.2500"]
    assert [c[ndcg10] for c in cells] == ["0.3000", "–", "0.1000"]
    assert [c[cov20] for c in cells] == [f'{v} <span class="sub">(200)</span>' for v in ("0.2000", "0.2000", "0.9000")]
    assert [c[1] for c in cells] == ["100"] * 3
    best = re.findall(r'<td class="[^"]*\bbest\b[^"]*">(.*?)</td>', table)
    # the only columns with a winner: HR@10 (recstream), NDCG@10 (recstream), coverage@20 (item-knn)
    assert best == ["0.4000", "0.3000", '0.9000 <span class="sub">(200)</span>']


def test_bar_heights_follow_the_values() -> None:
    ks = (10,)
    doc = make_doc(
        {
            "recstream": method(ks, {"hit_rate@10": 0.4, "ndcg@10": 0.3, "mrr@10": 0.0}),
            "popularity": method(ks, {"hit_rate@10": 0.2, "ndcg@10": 0.3, "mrr@10": None}),
        },
        ks=ks,
    )
    page = render_html(doc)
    (chart,) = comparison_charts(page)  # one k: one chart
    h = bars(chart)
    assert h[("recstream", "hit_rate@10")] == pytest.approx(2 * h[("popularity", "hit_rate@10")], rel=0.01)
    assert h[("recstream", "ndcg@10")] == pytest.approx(h[("popularity", "ndcg@10")])
    assert h[("recstream", "mrr@10")] == 0.0
    assert ("popularity", "mrr@10") not in h  # no bar for a missing value: a dash instead
    labels = [t.text for t in chart.iter("text")]
    assert {"0.4000", "0.2000", "0.3000", "0.0000", "–"} <= set(labels)
    assert {"HR@10", "NDCG@10", "MRR@10"} <= set(labels)


@pytest.mark.parametrize(
    ("ks", "chart_ks", "slice_k"),
    [((5, 10, 20), [10, 20], 10), ((1, 3, 5), [5], 5), ((20, 50), [20, 50], 50), ((5, 8, 100), [8, 100], 100)],
)
def test_which_cut_offs_are_charted(ks: tuple[int, ...], chart_ks: list[int], slice_k: int) -> None:
    months = two_months(ks, 0.2, 0.3)
    page = render_html(make_doc({"recstream": method(ks, {}, months), "popularity": method(ks, {}, months)}, ks=ks))
    charted = [sorted({metric for _, metric in bars(svg)}) for svg in comparison_charts(page)]
    assert charted == [sorted(f"{m}@{k}" for m in ("hit_rate", "ndcg", "mrr")) for k in chart_ks]
    assert f"<h3>NDCG@{slice_k} per month</h3>" in page and f"<h3>HR@{slice_k} per month</h3>" in page


def test_each_method_keeps_its_colour_in_every_chart() -> None:
    page = render_html(standard_doc())
    colours: dict[str, set[str]] = {}
    for svg in comparison_charts(page):
        for r in svg.iter("rect"):
            if r.get("class") == "bar":
                colours.setdefault(r.get("data-method", ""), set()).add(r.get("fill", ""))
    assert all(len(c) == 1 for c in colours.values())
    assert len({next(iter(c)) for c in colours.values()}) == 3  # distinct per method
    for svg in line_charts(page):
        legend = svg.find("g[@class='legend']")
        assert legend is not None
        fills = [r.get("fill") for r in legend.iter("rect")]
        assert fills == [next(iter(colours[n])) for n in ("recstream", "popularity", "item-knn")]


# --------------------------------------------------------------------------- escaping and resources


def test_user_strings_are_escaped() -> None:
    evil = "<script>alert(1)</script>"
    ks = (5, 10, 20)
    months = [month_row("<img src=x onerror=alert(2)>", MAR1_2017, 3, ks, 0.2)]
    doc = make_doc({"recstream": method(ks, {}, months), evil: method(ks, {}, months)}, replay_prefix='"><script>x</script>', timings={"<b>": "<i>"})
    page = render_html(doc, title="<script>t</script>")
    parser = check_well_formed(page)
    assert "<script" not in page.lower()
    assert "script" not in parser.tags and "img" not in parser.tags and "i" not in parser.tags
    assert "<dt>&lt;b&gt;</dt><dd>&lt;i&gt;</dd>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in table_html(page)
    for svg in comparison_charts(page) + line_charts(page):
        assert evil in legend_names(svg)  # the SVG text reads back as the plain name
    assert "&lt;img src=x onerror=alert(2)&gt;" in page


def test_nothing_is_fetched_from_outside() -> None:
    doc = standard_doc()
    doc["latency_ms"] = {"p50": 3.0, "p95": 9.0, "p99": 12.0, "max": 20.0, "mean": 4.0, "count": 4, "histogram": latency_histogram([1.0, 3.0, 9.0, 20.0])}
    page = render_html(doc)
    parser = check_well_formed(page)
    assert "http://" not in page and "https://" not in page
    refs = [v for name, v in parser.attrs if name in {"src", "href", "xlink:href", "action", "data"}]
    assert refs == []
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(parser.tags)
    assert "@import" not in page and "url(" not in page


# --------------------------------------------------------------------------- time slices


def test_month_lines_points_and_cases_strip() -> None:
    page = render_html(standard_doc())
    ndcg_chart, hr_chart = line_charts(page)
    assert ndcg_chart.get("aria-label") == "NDCG@10 per month"
    texts = [t.text for t in ndcg_chart.iter("text")]
    assert "2017-03" in texts and "2017-04" in texts
    assert len(list(ndcg_chart.iter("polyline"))) == 3  # one line per method, no gap
    assert len(list(ndcg_chart.iter("circle"))) == 6  # a point per method per month
    cases = [r for r in ndcg_chart.iter("rect") if r.get("class") == "cases"]
    assert [r.findtext("title") for r in cases] == ["2017-03: 40 cases", "2017-04: 60 cases"]
    assert float(cases[1].get("height", "0")) > float(cases[0].get("height", "0"))
    # y ticks are labelled
    assert {"0", "0.1", "0.2", "0.3"} <= set(texts)


def test_a_single_month_draws_points() -> None:
    ks = (5, 10, 20)
    rows = [month_row("2017-03", MAR1_2017, 12, ks, 0.25)]
    doc = make_doc({"recstream": method(ks, {}, rows), "popularity": method(ks, {}, copy.deepcopy(rows))})
    page = render_html(doc)
    check_well_formed(page)
    for chart in line_charts(page):
        assert list(chart.iter("polyline")) == []
        assert len(list(chart.iter("circle"))) == 2
        assert "2017-03" in [t.text for t in chart.iter("text")]


def test_missing_values_and_missing_months_are_gaps() -> None:
    ks = (10,)
    rows = [
        month_row("2017-03", MAR1_2017, 10, ks, 0.2),
        month_row("2017-04", APR1_2017, 10, ks, None),
        month_row("2017-05", MAY1_2017, 10, ks, 0.3),
        month_row("2017-07", MAY1_2017 + 61 * 86_400_000, 10, ks, 0.4),  # no case at all in June
        month_row("2017-08", MAY1_2017 + 92 * 86_400_000, 10, ks, 0.5),
    ]
    page = render_html(make_doc({"recstream": method(ks, {}, rows)}, ks=ks))
    chart = line_charts(page)[0]
    assert len(list(chart.iter("circle"))) == 4  # April has no value
    (line,) = chart.iter("polyline")  # only July-August are consecutive values
    assert len(line.get("points", "").split()) == 2
    texts = [t.text for t in chart.iter("text")]
    assert "2017-06" in texts  # the month without cases keeps its place on the axis
    assert len([r for r in chart.iter("rect") if r.get("class") == "cases"]) == 5


def test_no_slices_says_so() -> None:
    ks = (5, 10, 20)
    page = render_html(make_doc({"recstream": method(ks, {}, [])}))
    assert "No per-month slices in this document." in page
    assert line_charts(page) == []


# --------------------------------------------------------------------------- latency


def test_no_latency_says_so() -> None:
    for latency in ({"p50": None, "p95": None, "p99": None, "max": None, "mean": None, "count": 0}, None):
        doc = standard_doc()
        if latency is None:
            del doc["latency_ms"]
        else:
            doc["latency_ms"] = latency
        page = render_html(doc)
        assert "No latency was measured in this backtest." in page
        assert '<table class="latency">' not in page


def test_latency_table_histogram_and_percentile_markers() -> None:
    values = [0.5, 3.0, 12.0, 12.0, 15.0, 18.0, 45.0, 70_000.0]
    doc = standard_doc()
    doc["latency_ms"] = {
        "p50": 15.0,
        "p95": 150.0,
        "p99": 65_000.0,
        "max": 70_000.0,
        "mean": 8_770.0625,
        "count": len(values),
        "histogram": latency_histogram(values),
    }
    page = render_html(doc)
    check_well_formed(page)
    cells = "<td>15.0 ms</td><td>150.0 ms</td><td>65,000.0 ms</td><td>70,000.0 ms</td><td>8,770.1 ms</td><td>8</td>"
    assert cells in page
    (hist,) = [s for s in svgs(page) if s.get("aria-label") == "latency histogram"]
    bins = {r.findtext("title"): r for r in hist.iter("rect") if r.get("class") == "bin"}
    # from the first non-empty bin (0-1 ms) to the overflow bin: every default bin is drawn
    assert list(bins)[0] == "0–1 ms: 1" and list(bins)[-1] == "≥ 60 s: 1"
    assert {"2–5 ms: 1", "10–20 ms: 4", "20–50 ms: 1", "500 ms–1 s: 0", "1–2 s: 0", "30–60 s: 0"} <= bins.keys()
    assert len(bins) == 16
    widths = {round(float(r.get("width", "0")), 1) for r in bins.values()}
    assert len(widths) == 1  # equal-width bars
    texts = [t.text for t in hist.iter("text")]
    assert "10–20 ms" in texts and "≥ 60 s" in texts

    markers = [line for line in hist.iter("line") if line.get("class") == "marker"]
    assert len(markers) == 3
    assert {"p50 15.0 ms", "p95 150.0 ms", "p99 65,000.0 ms"} <= set(texts)

    def inside(x: float, label: str) -> bool:
        r = bins[label]
        return float(r.get("x", "0")) - 1 <= x <= float(r.get("x", "0")) + float(r.get("width", "0")) + 1

    p50, p95, p99 = (float(m.get("x1", "nan")) for m in markers)
    assert inside(p50, "10–20 ms: 4")
    assert inside(p95, "100–200 ms: 0")
    assert inside(p99, "≥ 60 s: 1")
    assert p50 < p95 < p99


def test_latency_without_histogram_shows_the_table_only() -> None:
    doc = standard_doc()
    doc["latency_ms"] = {"p50": 1.26, "p95": 2.0, "p99": 3.0, "max": 4.0, "mean": 1.5, "count": 10}
    page = render_html(doc)
    assert "<td>1.3 ms</td><td>2.0 ms</td><td>3.0 ms</td><td>4.0 ms</td><td>1.5 ms</td><td>10</td>" in page
    assert "No latency histogram in this document" in page
    assert all(s.get("aria-label") != "latency histogram" for s in svgs(page))


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"methods": {}},
        {"config": None, "counts": None, "methods": None, "latency_ms": None, "timings": None},
        {"config": {"ks": [10]}, "methods": {"recstream": {}}},
        {"methods": {"recstream": {"metrics": {"cases": 0, "hit_rate@10": None, "ndcg@10": None}}}},
        {
            "config": {"ks": [5], "split_ms": None, "targets": "click"},
            "methods": {
                "m": {
                    "metrics": {"hit_rate@5": "high", "ndcg@5": math.nan},
                    "coverage": {"5": None},
                    "slices": [None, {"month": None}, {"start_ms": MAR1_2017, "hit_rate@5": 0.1}],
                }
            },
            "latency_ms": {"count": 3, "p50": "x", "histogram": {"edges_ms": [0, 1], "counts": [1]}},
        },
        {"latency_ms": {"count": 2, "p50": 1.0, "histogram": {"edges_ms": [5, 1], "counts": [1, 1]}}},
        {"config": {"split_ms": 10**30}, "catalog_size": "many", "counts": {"cases": None}},
    ],
)
def test_degenerate_documents_still_render(doc: dict[str, Any]) -> None:
    page = render_html(doc)
    check_well_formed(page)
    for svg in svgs(page):
        assert svg.tag == "svg"
    assert "<h2>Latency</h2>" in page


def test_all_metrics_none_draws_dashes_not_bars() -> None:
    ks = (10,)
    none = {f"{m}@10": None for m in METRICS}
    doc = make_doc({"recstream": method(ks, none, cases=0), "popularity": method(ks, none, cases=0)}, ks=ks)
    page = render_html(doc)
    (chart,) = svgs(page)  # no slices: only the comparison chart
    assert [r for r in chart.iter("rect") if r.get("class") == "bar"] == []
    assert [t.text for t in chart.iter("text")].count("–") == 6
    assert "best" not in table_html(page)


def test_write_html_writes_the_same_page(tmp_path: Path) -> None:
    doc = standard_doc()
    out = tmp_path / "report.html"
    write_html(doc, out, title="Ünïcode ≥")
    assert out.read_text(encoding="utf-8") == render_html(doc, title="Ünïcode ≥")
    write_html(doc, str(tmp_path / "again.html"))
    assert (tmp_path / "again.html").read_text(encoding="utf-8") == render_html(doc)


# --------------------------------------------------------------------------- a real backtest

MINUTE = 60_000
DAY = 86_400_000
JAN31 = 1_706_659_200_000  # 2024-01-31T00:00:00Z
SPLIT = JAN31 + 10 * MINUTE

# the hand stream of tests/unit/test_backtest.py: 4 cases (e6, e9 in January; e10, e11 in February)
EVENTS = [
    Click("u1", "a", JAN31 + 1 * MINUTE, "e1"),
    Click("u1", "b", JAN31 + 2 * MINUTE, "e2"),
    Click("u2", "a", JAN31 + 3 * MINUTE, "e3"),
    Purchase("u2", "c", JAN31 + 4 * MINUTE, "e4"),
    Purchase("u1", "a", JAN31 + 5 * MINUTE, "e5"),
    Click("u1", "c", JAN31 + 10 * MINUTE, "e6"),  # case: held [c d b] -> rank 1
    Click("u3", "a", JAN31 + 11 * MINUTE, "e7"),  # cold
    Review("u2", "d", 2.0, "meh", JAN31 + 12 * MINUTE, "e8"),  # skipped
    Review("u2", "b", 5.0, "great", JAN31 + 13 * MINUTE, "e9"),  # case: held [d e b] -> rank 3
    Purchase("u3", "b", JAN31 + DAY + MINUTE, "e10"),  # case: held [b c d] -> rank 1
    Review("u1", "e", 4.0, "fine", JAN31 + 2 * DAY, "e11"),  # case: held [d e c] -> rank 2
]
LISTS = {"e5": ["c", "d", "b"], "e6": ["d", "e", "c"], "e7": ["b", "c", "d"], "e8": ["d", "e", "b"]}


def real_doc() -> dict[str, Any]:
    """The document ``recstream backtest`` builds, from records emitted in time order, each
    ``2 + 4 n`` ms after its event was received (2, 6, ..., 42 ms)."""
    latencies = [2.0 + 4.0 * n for n in range(len(EVENTS))]
    records = [
        Recommendation(
            ev.user_id,
            [RecItem(i, 1.0, None) for i in LISTS.get(ev.event_id or "", ["a", "b", "c"])],
            Trigger("clicks", 0, n, ev.event_id, received_ts=ev.ts),
            ev.ts,
            ev.ts + int(latencies[n]),
            "m",
        )
        for n, ev in enumerate(EVENTS)
    ]
    result = evaluate_records(EVENTS, records, ["a", "b", "c", "d", "e"], BacktestConfig(SPLIT, ks=(1, 3)), exclude_seen=False)
    doc = {"replay_prefix": "recstream.backtest-1.", "invalid_records": 0, "timings": {"total_s": 1.5}, **result.to_dict()}
    doc["latency_ms"].setdefault("histogram", latency_histogram(latencies))
    return doc


@pytest.mark.parametrize("via_json", [False, True])
def test_report_of_a_real_backtest(via_json: bool) -> None:
    doc = real_doc()
    if via_json:  # as read back from the --json file
        doc = json.loads(json.dumps(doc))
    assert list(doc["methods"]) == ["recstream", "popularity", "item-knn"]
    page = render_html(doc)
    check_well_formed(page)
    table = table_html(page)
    for name in doc["methods"]:
        assert f"</span>{name}</td>" in table
    for svg in comparison_charts(page) + line_charts(page):
        assert legend_names(svg) == ["recstream", "popularity", "item-knn"]
    # recstream by hand: ranks 1, 3, 1, 2 -> HR@1 = 0.5, HR@3 = 1, MRR@3 = (1 + 1/3 + 1 + 1/2) / 4,
    # NDCG@3 = (1 + 1/2 + 1 + 1/log2(3)) / 4
    row = re.search(r"</span>recstream</td>(.*?)</tr>", table)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
    assert cells[0] == "4"  # cases
    assert cells[1:3] == ["0.5000", "0.5000"]  # HR@1, NDCG@1
    assert cells[6:9] == ["1.0000", f"{(2.5 + 1 / math.log2(3)) / 4:.4f}", f"{(1 + 1 / 3 + 1 + 1 / 2) / 4:.4f}"]
    assert "0.7083" in cells  # MRR@3
    # one comparison chart (k = 3 is both the largest k <= 10 and the largest), per-month charts at
    # k = 3 over January and February 2024
    (chart,) = comparison_charts(page)
    assert {metric for _, metric in bars(chart)} == {"hit_rate@3", "ndcg@3", "mrr@3"}
    assert "<h3>NDCG@3 per month</h3>" in page
    month_texts = [t.text for t in line_charts(page)[0].iter("text")]
    assert "2024-01" in month_texts and "2024-02" in month_texts
    assert "2024-01-31T00:10:00Z" in page
    assert "<code>recstream.backtest-1.</code>" in page
    assert "<dt>total (s)</dt><dd>1.50</dd>" in page
    # latency of the 11 events: 2 .. 42 ms, p50 = 22 ms
    assert "<td>22.0 ms</td>" in page
    assert any(s.get("aria-label") == "latency histogram" for s in svgs(page))


# --------------------------------------------------------------------------- ratios


def ratios_table(page: str, metric: str) -> str:
    match = re.search(rf'<h3>{metric}</h3><div class="scroll"><table class="ratios">.*?</table>', page, flags=re.S)
    assert match is not None, metric
    return match.group(0)


def ratio_cells(table: str, name: str) -> list[str]:
    row = re.search(rf"</span>{re.escape(name)}</td>(.*?)</tr>", table)
    assert row is not None, name
    return re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))


@pytest.mark.parametrize("via_json", [False, True])
def test_report_shows_the_ratios_of_a_real_backtest_with_their_intervals(via_json: bool) -> None:
    doc = real_doc()
    if via_json:
        doc = json.loads(json.dumps(doc))
    page = render_html(doc)
    check_well_formed(page)
    assert "<h2>Ratios with 95% intervals</h2>" in page
    assert page.index("<h2>Metrics</h2>") < page.index("<h2>Ratios with 95% intervals</h2>") < page.index("<h2>Comparison with the baselines</h2>")
    names = ["recstream", "popularity", "item-knn"]
    # k = 3: the largest cut-off up to 10 (the JSON has k = 1 too)
    for metric, short in (("ndcg", "NDCG"), ("hit_rate", "HR")):
        table = ratios_table(page, f"{short}@3")
        assert re.findall(r"<th>vs (.*?)</th>", table) == names
        for a in names:
            cells = ratio_cells(table, a)
            expected = []
            for b in names:
                if a == b:
                    expected.append("–")
                    continue
                entry = doc["ratios"][f"{metric}@3"][a][b]
                lo, hi = entry["ci95"]
                interval = f"[{lo:.3f}, {'∞' if hi is None else f'{hi:.3f}'}]"
                expected.append(f'{entry["ratio"]:.3f} <span class="sub">{interval}</span>')
            assert cells == expected, (metric, a)
    assert "over the 4 cases (1,000 resamples)" in page
    assert "<h3>NDCG@1</h3>" not in page


def test_ratio_cells_are_coloured_by_where_the_interval_lies() -> None:
    ks = (10,)
    doc = make_doc({n: method(ks, {}) for n in ("new", "old", "<b>x</b>")}, ks=ks)
    doc["ratios"] = {
        "ndcg@10": {
            "new": {"old": {"ratio": 1.5, "ci95": [1.2, 1.9]}, "<b>x</b>": {"ratio": 1.1, "ci95": [0.9, None]}},
            "old": {"new": {"ratio": 0.66, "ci95": [0.52, 0.83]}, "<b>x</b>": {"ratio": None, "ci95": None}},
            "<b>x</b>": {"new": {"ratio": "high", "ci95": "wide"}, "old": {"ratio": 2.0, "ci95": [1.0]}},
        },
        "hit_rate@10": None,
    }
    page = render_html(doc)
    check_well_formed(page)
    table = ratios_table(page, "NDCG@10")
    assert "<h3>HR@10</h3>" not in page  # nothing for HR in this document
    new = ratio_cells(table, "new")
    assert new[1] == '1.500 <span class="sub">[1.200, 1.900]</span>'
    assert new[2] == '1.100 <span class="sub">[0.900, ∞]</span>'
    assert '<td class="up">1.500' in table and '<td class="down">0.660' in table
    assert ratio_cells(table, "old")[2] == "–"  # undefined: the other never hits
    assert ratio_cells(table, "&lt;b&gt;x&lt;/b&gt;")[:2] == ["–", "2.000"]  # malformed interval: left out
    assert "<b>x</b>" not in page
    # a document without ratios (an older one) has no such section
    assert "Ratios with 95% intervals" not in render_html(standard_doc())
    del doc["ratios"]["ndcg@10"]
    assert "Ratios with 95% intervals" not in render_html(doc)
