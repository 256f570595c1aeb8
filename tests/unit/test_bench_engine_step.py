"""bench/engine_step.py on tiny sizes: the JSON document and its workload. No timing assertions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from recstream.streams.records import Click, Purchase, parse_event

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchload import load_bench  # noqa: E402  (tests/ is not a package)

es = load_bench("recstream_bench_engine_step", "engine_step.py")


def test_events_are_valid_clicks_and_purchases_of_the_catalog() -> None:
    events = es.make_events(400, users=30, items=50, rng=np.random.default_rng(1), start_ts=1_700_000_000_000)
    parsed = [parse_event(kind, key, value, now_ms=1_700_000_001_000) for kind, key, value in events]
    assert {type(e) for e in parsed} == {Click, Purchase}
    assert all(isinstance(e, Purchase) == (kind == "purchases") for e, (kind, _, _) in zip(parsed, events))
    assert 0.03 < sum(isinstance(e, Purchase) for e in parsed) / len(parsed) < 0.2
    assert {e.item_id for e in parsed} <= {f"item-{i:06d}" for i in range(50)}
    assert len({e.user_id for e in parsed}) > 20 and [e.ts for e in parsed] == sorted(e.ts for e in parsed)


def test_cli_writes_one_json_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    argv = ["--items", "60", "--users", "15", "--events", "48", "--rounds", "2", "--warmup-events", "40", "--batch", "8,48", "--output", str(out)]
    assert es.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == doc
    assert doc["parameters"]["batches"] == [8, 48] and doc["parameters"]["items"] == 60
    assert [r["batch"] for r in doc["rows"]] == [8, 48]
    for row in doc["rows"]:
        cpu = row["cpu_s_per_1000_events"]
        assert set(cpu) == set(es.STAGES) | {"total"}
        assert all(v >= 0 for v in cpu.values()) and cpu["total"] > 0


def test_bad_arguments_exit_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        es.parse_args(["--batch", "0"])
    assert exc.value.code == 2 and "batch" in capsys.readouterr().err
