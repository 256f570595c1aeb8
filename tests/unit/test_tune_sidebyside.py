"""``recstream tune`` and ``recstream backtest --dataset`` on a small generated MovieLens
folder (real text model, no broker).

The generated users follow one strong collaborative pattern: whoever likes movie ``2j``
likes movie ``2j + 1`` next, across genres, so that co-occurrence is the signal that ranks
the next item and the tuned weights must use it.  The side-by-side table is checked
against independent runs of :func:`scoring.backtest.run_offline`.
"""

from __future__ import annotations

import csv
import random
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from recstream.scoring.backtest import BacktestConfig, run_offline
from recstream.scoring.blend import BlendWeights
from recstream.scoring.engine import EngineConfig
from recstream.streams.cli import main
from recstream.streams.produce import parse_time

DAY_S = 86400
T0_S = 1_500_000_000  # 2017-07-14
GENRES = ["Comedy", "Drama", "Horror", "Sci-Fi", "Romance"]
SPLIT = "2017-07-29"  # about the 80% point of the ratings


def write_movielens(folder: Path, users: int = 60, movies: int = 30, seed: int = 1) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "movies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        for m in range(movies):
            w.writerow([m + 1, f"Movie number {m} ({1980 + m})", GENRES[(m * 7) % len(GENRES)]])
    rows = []
    for u in range(users):
        t = T0_S + rng.randint(0, 10 * DAY_S)
        seen: set[int] = set()
        for _ in range(6):
            a = 2 * rng.randrange(movies // 2)
            for m in (a, a + 1):  # the pair, in order
                if m in seen:
                    continue
                seen.add(m)
                t += rng.randint(3600, 2 * DAY_S)
                rows.append((u + 1, m + 1, rng.choice([4.0, 4.5, 5.0]), t))
    rows.sort(key=lambda r: r[3])
    with open(folder / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        w.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_movielens(tmp_path_factory.mktemp("ml") / "ml-gen")


def test_tune_writes_weights_the_worker_reads_from_before_the_split(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "blend.json"
    rc = main(["tune", "--dataset", str(dataset), "--split", SPLIT, "-o", str(out), "--grid-step", "0.25", "--normalizations", "zscore"])
    assert rc == 0
    weights = BlendWeights.load(out)  # what `recstream worker --blend` loads
    doc = orjson.loads(out.read_bytes())
    v = doc["meta"]["validation"]
    split_ms = parse_time(SPLIT)
    assert v["to_ms"] < split_ms and v["from_ms"] < v["to_ms"] and v["cases"] > 20
    # the pairs make co-occurrence the signal that finds the next movie
    assert weights.cooccurrence > 0
    assert v["best_ndcg@10"] > v["baselines"]["popularity"]["ndcg@10"]
    assert v["best_ndcg@10"] >= v["baselines"]["text-only"]["ndcg@10"]
    assert "HR@10" in capsys.readouterr().out


def test_tune_rejects_a_validation_window_after_the_split(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--dataset", str(dataset), "--split", SPLIT, "--validation-from", "2017-08-05", "-o", str(tmp_path / "b.json")])
    assert exc.value.code == 2  # a settings error
    assert not (tmp_path / "b.json").exists()


def test_side_by_side_columns_equal_their_own_offline_runs(dataset: Path, tmp_path: Path) -> None:
    weights = BlendWeights(0.3, 0.5, 0.2, "zscore")
    wfile = weights.save(tmp_path / "w.json")
    out = tmp_path / "side.json"
    rc = main(["backtest", "--dataset", str(dataset), "--split", SPLIT, "--blend", str(wfile), "--json-file", str(out), "--ks", "10"])
    assert rc == 0
    doc = orjson.loads(out.read_bytes())
    methods = doc["methods"]
    assert list(methods) == ["text-only", "blend", "popularity", "item-knn"]
    cases = {name: m["metrics"]["cases"] for name, m in methods.items()}
    assert len(set(cases.values())) == 1 and doc["counts"]["cases"] == cases["text-only"] > 20

    # each engine column equals the engine's own offline backtest (its recstream column)
    from recstream.encoders.text import TextEncoder
    from recstream.streams.sources import load_dataset

    ds = load_dataset(dataset)
    cfg = BacktestConfig(split_ms=parse_time(SPLIT), ks=(10,), popularity_half_life_ms=7 * DAY_S * 1000)
    enc = TextEncoder(device="cpu")
    for name, blend in (("text-only", None), ("blend", weights)):
        ref = run_offline(ds.events, ds.catalog, cfg, encoder=enc, engine_config=replace(EngineConfig(), blend=blend))
        assert methods[name]["metrics"] == ref.methods["recstream"].metrics.flat(), name
        assert methods["item-knn"]["metrics"] == ref.methods["item-knn"].metrics.flat()
    # and the blend, which has the co-occurrence, beats the text profile on these users
    assert methods["blend"]["metrics"]["ndcg@10"] > methods["text-only"]["metrics"]["ndcg@10"]
