"""bench/cooc_partitions.py: co-occurrence counted per partition and summed against one model."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchload import load_bench  # noqa: E402  (tests/ is not a package)

cp = load_bench("recstream_bench_cooc_partitions", "cooc_partitions.py")

SPLIT_MS = 1_500_000_000_000


def movielens(folder: Path, users: int = 40, items: int = 30, ratings: int = 900) -> Path:
    """A small MovieLens-format dataset: each user rates items around a favourite one."""
    rng = random.Random(4)
    folder.mkdir()
    (folder / "movies.csv").write_text("movieId,title,genres\n" + "".join(f"{i},Movie {i} (2000),Drama|Comedy\n" for i in range(1, items + 1)))
    rows = ["userId,movieId,rating,timestamp"]
    for n in range(ratings):
        u = rng.randint(1, users)
        i = (u * 7 + rng.randint(0, 8)) % items + 1
        rows.append(f"{u},{i},{rng.choice([3.0, 4.0, 4.5, 5.0])},{1_400_000_000 + n * 60}")
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_without_pruning_the_summed_partitions_equal_one_model(tmp_path: Path) -> None:
    doc = cp.compare(str(movielens(tmp_path / "ml")), SPLIT_MS, partitions=4, workers=2, exchange=7, neighbours=1000)
    assert doc["positive_events"] > 500 and len(doc["per_worker"]) == 2
    for w in doc["per_worker"]:
        assert w["rows_top10_neighbours_in_common"] == 1.0 and w["users_top10_cooccurrence_items_in_common"] == 1.0
        assert w["shared_weights_abs_log2_error_mean"] < 1e-9 and w["users"] > 0
    assert sorted(p for w in doc["per_worker"] for p in w["partitions"]) == [0, 1, 2, 3]


def test_bounded_rows_summed_differ_from_one_bounded_model(tmp_path: Path) -> None:
    """Rows of at most 2 neighbours, bounded per partition and after the sum, are not those
    of one model of the whole stream; one worker over every partition has that one model."""
    path = str(movielens(tmp_path / "ml"))
    split = cp.compare(path, SPLIT_MS, partitions=4, workers=2, neighbours=1)
    assert min(w["users_top10_cooccurrence_items_in_common"] for w in split["per_worker"]) < 1.0
    [whole] = cp.compare(path, SPLIT_MS, partitions=4, workers=1, neighbours=1)["per_worker"]
    assert whole["rows_top10_neighbours_in_common"] == 1.0 and whole["users_top10_cooccurrence_items_in_common"] == 1.0


def test_more_workers_than_partitions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers"):
        cp.compare(str(tmp_path), SPLIT_MS, partitions=2, workers=3)
