"""The Python API (``import recstream``, docs/python.md): what a notebook user calls.

The backtest runs on the small generated MovieLens folder of test_tune_sidebyside.py (real
text model, no broker) and must give the same figures as ``recstream backtest --dataset``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import recstream
from recstream.streams.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_tune_sidebyside import SPLIT, write_movielens  # noqa: E402  (tests/ is not a package)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_movielens(tmp_path_factory.mktemp("ml") / "ml-gen")


def test_import_recstream_is_light_and_every_public_name_resolves() -> None:
    code = "import sys, recstream; print(sorted(m for m in ('faust', 'torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for name in recstream.__all__:
        assert getattr(recstream, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        recstream.nope  # noqa: B018


def test_the_folders_are_the_recstream_subpackages() -> None:
    root = Path(__file__).resolve().parents[2]
    import recstream.encoders
    import recstream.scoring
    import recstream.streams

    for pkg, folder in ((recstream.streams, "streams"), (recstream.scoring, "scoring"), (recstream.encoders, "encoders")):
        assert Path(pkg.__file__).parent == root / folder


def test_an_engine_over_a_catalog_recommends_from_the_events_it_is_given(dataset: Path) -> None:
    ds = recstream.load_dataset(dataset)
    engine = recstream.Engine.for_catalog(ds.catalog, config=recstream.EngineConfig(k=5, emit="per-event"))
    first, rest = ds.events[:40], ds.events[40:80]
    res = engine.process_events(first)
    assert len(res.recommendations) == len(first)
    assert {r.user_id for r in res.recommendations} == {e.user_id for e in first}
    assert all(len(r.items) == 5 for r in res.recommendations)
    assert set(engine.profiles) == {e.user_id for e in first}  # kept for the next batch
    more = engine.process_events(rest)
    # a user seen again continues from the stored profile: the items they bought stay out of their lists
    bought = {(e.user_id, e.item_id) for e in first + rest if e.kind == "purchase"}
    last = {r.user_id: r for r in more.recommendations}
    assert all((u, i.item_id) not in bought for u, r in last.items() for i in r.items)
    # offsets go on from batch to batch, as on a topic
    assert min(r.trigger.offset for r in more.recommendations if r.trigger.topic == "clicks") > max(
        r.trigger.offset for r in res.recommendations if r.trigger.topic == "clicks"
    )


def test_backtest_from_python_equals_the_cli(dataset: Path, tmp_path: Path) -> None:
    run = recstream.backtest(dataset, SPLIT, methods="text-only,blend", ks=(10,), progress=False)
    out = tmp_path / "cli.json"
    assert main(["backtest", "--dataset", str(dataset), "--split", SPLIT, "--methods", "text-only,blend", "--ks", "10", "--json-file", str(out)]) == 0
    cli = orjson.loads(out.read_bytes())
    ours = run.to_dict()
    assert list(ours["methods"]) == list(cli["methods"]) == ["text-only", "blend", "popularity", "item-knn"]
    assert {n: m["metrics"] for n, m in ours["methods"].items()} == {n: m["metrics"] for n, m in cli["methods"].items()}
    assert ours["methods"]["blend"]["metrics"]["cases"] > 20


def test_the_docs_examples_run(dataset: Path, capsys) -> None:
    """docs/python.md's code blocks, run in order on the generated dataset."""
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "python.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 2
    scope: dict = {"DATASET": str(dataset), "SPLIT": SPLIT}
    for block in blocks:
        exec(compile(block, "docs/python.md", "exec"), scope)  # noqa: S102 - the project's own docs
    out = capsys.readouterr().out
    assert "NDCG@10: blend" in out and "item-knn" in out.lower()
    assert set(scope["run"].to_dict()["methods"]) == {"text-only", "blend", "popularity", "item-knn"}
