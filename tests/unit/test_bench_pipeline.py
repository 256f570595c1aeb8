"""The pure parts of the pipeline benchmark (bench/pipeline.py, bench/ceiling.py, bench/naive_agent.py):
argument lists, ratios and targets, the saturation cut, the ceiling's template record. No broker."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson
import pytest

from recstream.encoders.profile import HistoryEntry, new_profile
from recstream.streams.records import RecItem, Recommendation, Trigger, decode_recommendation, encode

ROOT = Path(__file__).resolve().parents[2]


sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchload import load_bench as _load  # noqa: E402  (tests/ is not a package)


pl = _load("recstream_bench_pipeline", "pipeline.py")
ceiling = _load("recstream_bench_ceiling", "ceiling.py")
naive = _load("recstream_bench_naive_agent", "naive_agent.py")


# ------------------------------------------------------------------------------ arguments


def test_systems_list_runs_recstream_first_and_rejects_unknown_names() -> None:
    assert pl.parse_systems("ceiling, naive,recstream") == ["recstream", "naive", "ceiling"]
    assert pl.parse_systems("ceiling") == ["ceiling"]
    for bad in ("", "recstream,faiss", ","):
        with pytest.raises(argparse.ArgumentTypeError):
            pl.parse_systems(bad)


def test_partition_and_rate_lists() -> None:
    assert pl.parse_partitions("1,4") == [1, 4]
    assert pl.parse_partitions(" 4 ") == [4]
    for bad in ("0", "1,1", "one", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            pl.parse_partitions(bad)
    assert pl.parse_rates("500,2000,5000") == [500.0, 2000.0, 5000.0]
    for bad in ("0", "-5", "fast", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            pl.parse_rates(bad)


def test_defaults_full_and_quick() -> None:
    full = pl.resolve_args(pl.build_parser().parse_args([]))
    assert full.systems == ["recstream", "naive", "ceiling"]
    assert full.partitions == [1, 4]
    assert full.rates_clicks == [500.0, 2000.0, 5000.0]
    assert full.catalog_size == 10000 and full.events == 20000
    quick = pl.resolve_args(pl.build_parser().parse_args(["--quick"]))
    assert quick.partitions == [1] and quick.catalog_size == 1000 and quick.max_phase_s < full.max_phase_s
    given = pl.resolve_args(pl.build_parser().parse_args(["--quick", "--partitions", "4", "--systems", "ceiling"]))
    assert given.partitions == [4] and given.systems == ["ceiling"]


def test_bad_arguments_exit_with_a_message(capsys) -> None:
    with pytest.raises(SystemExit):
        pl.resolve_args(pl.build_parser().parse_args(["--systems", "naive,fast"]))
    assert "systems must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pl.resolve_args(pl.build_parser().parse_args(["--duration", "2", "--warmup", "3"]))


def test_system_commands() -> None:
    common = dict(broker="127.0.0.1:9092", prefix="bench-x.", partitions=4, data_dir=Path("/tmp/d"))
    worker = pl.system_command("recstream", extra_args=["--batch-max 256"], **common)
    assert worker[worker.index("--emit") + 1] == "per-event"
    assert worker[worker.index("--partitions") + 1] == "4" and worker[-2:] == ["--batch-max", "256"]
    loaded = pl.system_command("naive", items_changelog="bench-y.recstream-item-embeddings-changelog", **common)
    assert loaded[loaded.index("--items-changelog") + 1] == "bench-y.recstream-item-embeddings-changelog"
    assert "--encode-catalog" in pl.system_command("naive", **common)
    assert pl.system_command("ceiling", **common)[-2:] == ["--topic-prefix", "bench-x."]
    with pytest.raises(ValueError):
        pl.system_command("faust", **common)


# ------------------------------------------------------------------------------ ratios and targets


def run(events_per_s: float | None, steps: dict[float, tuple[float, bool]], reviews: float | None = None) -> dict:
    def latency(items):
        return [{"offered_events_per_s": r, "latency": {"p99_ms": p99}, "keeps_up": ok} for r, (p99, ok) in items]

    out = {"workloads": {"clicks": {"throughput": {"events_per_s": events_per_s}, "latency": latency(steps.items())}}}
    if reviews is not None:
        out["workloads"]["reviews"] = {"throughput": {"events_per_s": reviews}, "latency": []}
    return out


RATES = {"clicks": [500.0, 2000.0], "reviews": []}


def test_ratios_of_events_per_s_and_p99() -> None:
    runs = {
        "recstream": run(6000.0, {500: (40.0, True), 2000: (120.0, True)}, reviews=60.0),
        "naive": run(400.0, {500: (80.0, True), 2000: (9000.0, False)}, reviews=30.0),
        "ceiling": run(10000.0, {500: (20.0, True), 2000: (30.0, True)}, reviews=9000.0),
    }
    r = pl.compute_ratios(runs, RATES)
    clicks = r["clicks_events_per_s"]
    assert clicks["ours_over_naive"] == 15.0 and clicks["ours_over_ceiling"] == 0.6
    assert clicks["recstream"] == 6000.0 and clicks["naive"] == 400.0
    assert r["reviews_events_per_s"]["ours_over_naive"] == 2.0
    at_500, at_2000 = r["clicks_p99_latency"]
    assert at_500["ours_over_naive"] == 0.5 and at_500["ours_over_ceiling"] == 2.0
    assert at_2000["keeps_up"] == {"recstream": True, "naive": False, "ceiling": True}
    assert at_2000["p99_ms"]["naive"] == 9000.0

    t = pl.compute_targets(runs)
    assert t["clicks_vs_naive_10x"] is True and t["clicks_vs_ceiling_50pct"] is True
    assert t["p99_under_250ms_at_2000"] is True
    assert t["computed_from"]["ours_over_naive"] == 15.0
    assert t["computed_from"]["recstream_clicks_p99_ms_at_2000_per_s"] == 120.0


def test_targets_missed_and_unknown() -> None:
    runs = {
        "recstream": run(3000.0, {2000: (200.0, False)}),  # p99 under 250 ms but not keeping up: missed
        "naive": run(400.0, {}),
        "ceiling": run(10000.0, {}),
    }
    t = pl.compute_targets(runs)
    assert t["clicks_vs_naive_10x"] is False  # 7.5x
    assert t["clicks_vs_ceiling_50pct"] is False  # 30%
    assert t["p99_under_250ms_at_2000"] is False
    only_ours = pl.compute_targets({"recstream": run(3000.0, {500: (10.0, True)})})
    assert only_ours["clicks_vs_naive_10x"] is None and only_ours["clicks_vs_ceiling_50pct"] is None
    assert only_ours["p99_under_250ms_at_2000"] is None  # 2,000/s was not run
    r = pl.compute_ratios({"recstream": run(3000.0, {500: (10.0, True)})}, RATES)
    assert r["clicks_events_per_s"]["ours_over_naive"] is None
    assert r["clicks_p99_latency"][0]["p99_ms"] == {"recstream": 10.0, "naive": None, "ceiling": None}


def test_ratio_edge_cases() -> None:
    assert pl.ratio(10, 4) == 2.5
    assert pl.ratio(None, 4) is None and pl.ratio(4, None) is None and pl.ratio(4, 0) is None


# ------------------------------------------------------------------------------ pacing and saturation


def test_throughput_window_keeps_two_seconds_of_work() -> None:
    assert pl.throughput_window(0.0, 1000) == 1000
    assert pl.throughput_window(5000.0, 1000) == 10000


def test_saturation_cut_only_when_the_backlog_is_large_and_growing() -> None:
    rate = 2000.0
    # answers at 500/s while 2,000/s are sent: the backlog grows by 1,500 events/s
    growing = [(t / 4, int(rate * t / 4), int(500 * t / 4)) for t in range(0, 13)]
    assert pl.clearly_saturated(growing[:4], rate, warmup=0.5) is None  # too early
    why = pl.clearly_saturated(growing, rate, warmup=0.5)
    assert why is not None and "growing" in why
    # a steady backlog of 0.3 s of load (latency, not saturation)
    steady = [(t / 4, int(rate * t / 4), max(0, int(rate * (t / 4 - 0.3)))) for t in range(0, 13)]
    assert pl.clearly_saturated(steady, rate, warmup=0.5) is None
    # a large backlog that is shrinking (catching up after a pause) is not cut either
    shrinking = [(0.0, 0, 0), (1.0, 4000, 0), (2.0, 6000, 3500), (3.0, 8000, 6000)]
    assert pl.clearly_saturated(shrinking, rate, warmup=0.5) is None


# ------------------------------------------------------------------------------ the ceiling's record


def real_recommendation(topic: str, event_id: str, user_id: str) -> bytes:
    """A record as the worker writes it (float32 scores widened to float, because = a history item)."""
    import numpy as np

    scores = np.linspace(0.81, 0.52, 10).astype(np.float32)
    items = [RecItem(f"I{1234 + 7 * i:06d}", float(scores[i]), f"I{4321 + i:06d}") for i in range(10)]
    rec = Recommendation(
        user_id=user_id,
        items=items,
        trigger=Trigger(topic, 0, 12345, event_id, 1_764_000_000_123),
        event_ts=1_764_000_000_100,
        emitted_ts=1_764_000_000_150,
        model="all-MiniLM-L6-v2/decayed-sum",
    )
    return encode(rec)


def test_ceiling_record_has_the_shape_and_size_of_a_recommendation() -> None:
    topic, eid, user = "bench-0123456789.clicks", "clicks-tp.1234", "cu1234"
    items = ceiling.template_items(10)
    raw = ceiling.ceiling_record(
        items,
        user_id=user,
        topic=topic,
        partition=0,
        offset=12345,
        event_id=eid,
        event_ts=1_764_000_000_100,
        received_ts=1_764_000_000_123,
        emitted_ts=1_764_000_000_150,
    )
    rec = decode_recommendation(raw)  # passes the contract check the harness runs
    assert rec.trigger.event_id == eid and rec.user_id == user and rec.trigger.topic == topic
    assert len(rec.items) == 10 and all(i.because for i in rec.items)
    real = real_recommendation(topic, eid, user)
    assert list(orjson.loads(raw)) == list(orjson.loads(real))  # same fields, same order
    assert list(orjson.loads(raw)["trigger"]) == list(orjson.loads(real)["trigger"])
    assert abs(len(raw) - len(real)) <= 0.05 * len(real)


def test_ceiling_answers_each_event_with_its_id_and_key() -> None:
    items = ceiling.template_items(10)
    value = orjson.dumps({"user_id": "cu7", "item_id": "I000001", "ts": 1_764_000_000_000, "event_id": "clicks-r500.3"})
    key, raw = ceiling.answer(items, "p.clicks", 2, 99, b"cu7", value, received_ts=1_764_000_000_010)
    rec = decode_recommendation(raw)
    assert key == b"cu7" and rec.user_id == "cu7"
    assert rec.trigger.event_id == "clicks-r500.3" and (rec.trigger.partition, rec.trigger.offset) == (2, 99)
    assert rec.event_ts == 1_764_000_000_000
    # an unreadable event still gets a record (no event id), never an exception
    key, raw = ceiling.answer(items, "p.clicks", 0, 1, None, b"not json", received_ts=5)
    assert decode_recommendation(raw).trigger.event_id is None


# ------------------------------------------------------------------------------ the naive agent's rules


def test_naive_exclusions_and_explanations_follow_the_worker() -> None:
    profile = new_profile("u", 4)
    profile.history = [HistoryEntry("a", 1, "click"), HistoryEntry("b", 2, "review", 2.0), HistoryEntry("c", 3, "click"), HistoryEntry("b", 4, "click")]
    profile.purchased = {"p"}
    assert naive.exclusions(profile, exclude_seen=True) == frozenset({"a", "b", "c", "p"})
    assert naive.exclusions(profile, exclude_seen=False) == frozenset({"p"})
    # b's latest review is 2 stars: it cannot explain a recommendation
    assert naive.liked_history(profile) == ["a", "c"]


def test_naive_agent_needs_an_item_source() -> None:
    with pytest.raises(SystemExit):
        naive.build_parser().parse_args(["--topic-prefix", "x."])
    args = naive.build_parser().parse_args(["--encode-catalog"])
    assert args.encode_catalog and args.items_changelog is None
