"""``recstream train`` and the learned column of ``recstream backtest --dataset``, on a small
generated MovieLens folder (real text model, no broker).

The generated users follow a sequential pattern across genres: whoever rates movie ``2j``
rates movie ``2j + 1`` next.  The text profile cannot know it; the trained model must learn
it on the training range, which its validation metric and then the backtest show.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import orjson
import pytest
import torch

from recstream.encoders.sasrec import load_checkpoint
from recstream.streams.cli import build_parser, main, train_settings
from recstream.streams.produce import parse_time

DAY_S = 86400
T0_S = 1_500_000_000  # 2017-07-14
GENRES = ["Comedy", "Drama", "Horror", "Sci-Fi", "Romance"]
SPLIT = "2017-07-29"  # about the 80% point of the ratings
VALIDATE_FROM = "2017-07-26"


def write_movielens(folder: Path, users: int = 80, movies: int = 30, seed: int = 3) -> Path:
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
            for m in (a, a + 1):
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


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_then_backtest_the_learned_column(tmp_path: Path, capsys) -> None:
    data = write_movielens(tmp_path / "ml-seq")
    ckpt = tmp_path / "seq.ckpt"
    rc = main(
        [
            "train",
            "--dataset",
            str(data),
            "--validation-from",
            VALIDATE_FROM,
            "--split",
            SPLIT,
            "-o",
            str(ckpt),
            "--epochs",
            "20",
            "--patience",
            "20",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--dim",
            "32",
            "--max-len",
            "8",
            "--dropout",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert f"wrote {ckpt}" in out and "validation HR@10" in out
    model = load_checkpoint(ckpt)
    assert model.config.training["to"] == VALIDATE_FROM and model.config.metric["cases"] > 20
    assert model.config.metric["hr@10"] > 0.8  # the pair pattern is learned (chance: 10/28)

    side = tmp_path / "side.json"
    rc = main(["backtest", "--dataset", str(data), "--split", SPLIT, "--user-model", str(ckpt), "--json-file", str(side), "--ks", "10"])
    assert rc == 0
    methods = orjson.loads(side.read_bytes())["methods"]
    assert list(methods) == ["text-only", "blend", "learned", "popularity", "item-knn"]
    cases = {name: m["metrics"]["cases"] for name, m in methods.items()}
    assert len(set(cases.values())) == 1 and cases["learned"] > 20
    assert methods["learned"]["metrics"]["ndcg@10"] > methods["text-only"]["metrics"]["ndcg@10"] + 0.2


def test_train_refuses_bad_ranges_with_a_message(tmp_path: Path, capsys) -> None:
    data = write_movielens(tmp_path / "ml", users=5)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", str(data), "--validation-from", SPLIT])  # --output is required
    assert exc.value.code == 2
    assert "the following arguments are required: -o/--output" in capsys.readouterr().err
    # settings errors: one line each, exit status 2, before any data is read
    for argv, message in (
        ([], "--validation-from DATE is required: the end of the training range, where validation starts"),
        (["--validation-from", SPLIT, "--split", VALIDATE_FROM], "--split must be after --validation-from"),
        (["--from", SPLIT, "--validation-from", VALIDATE_FROM], "--from must be before --validation-from"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["train", "--dataset", str(data), "-o", str(tmp_path / "x.ckpt"), *argv])
        assert exc.value.code == 2
        assert capsys.readouterr().err == f"recstream: error: {message}\n"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", str(data), "--validation-from", "1990-01-01", "-o", str(tmp_path / "x.ckpt")])
    assert exc.value.code == 1
    assert "no interaction on a catalog item in the training range" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()


def test_the_old_names_of_trains_flags_still_work_with_a_notice(capsys, monkeypatch) -> None:
    monkeypatch.delenv("RECSTREAM_TORCH_THREADS", raising=False)
    parser = build_parser()
    common = ["train", "--dataset", "d", "-o", "c", "--version", "v"]
    new = train_settings(parser.parse_args([*common, "--validation-from", VALIDATE_FROM, "--split", SPLIT, "--torch-threads", "2"]))
    assert capsys.readouterr().err == ""
    assert (new.validation_from_ms, new.split_ms, new.engine.torch_threads) == (parse_time(VALIDATE_FROM), parse_time(SPLIT), 2)
    old = train_settings(parser.parse_args([*common, "--to", VALIDATE_FROM, "--validate-to", SPLIT, "--threads", "2"]))
    assert old == new
    assert capsys.readouterr().err.splitlines() == [
        "recstream train: warning: --to is deprecated, use --validation-from",
        "recstream train: warning: --validate-to is deprecated, use --split",
        "recstream train: warning: --threads is deprecated, use --torch-threads",
    ]
    # --threads 0 was torch's own count, what no --torch-threads means; the worker's variable is read too
    assert train_settings(parser.parse_args([*common, "--to", VALIDATE_FROM, "--threads", "0"])).engine.torch_threads is None
    monkeypatch.setenv("RECSTREAM_TORCH_THREADS", "3")
    assert train_settings(build_parser().parse_args([*common, "--validation-from", VALIDATE_FROM])).engine.torch_threads == 3
