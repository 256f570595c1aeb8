"""Online weight adaptation (scoring/adapt.py) against fixed weights, on a validation window.

Runs recstream's engine offline (:func:`scoring.sidebyside.side_by_side`, per-event
emission, the worker's settings) over a dataset's events *before* ``--split`` only: the
events before ``--validation-from`` warm up, the targets after it are the cases.  Columns:

* ``fixed``: the default weights (:data:`scoring.blend.DEFAULT_WEIGHTS`), never moved;
* ``adaptive r=R e=E s=S``: the same start, adapted online with rate R, epoch E and step S
  (every combination of ``--rates``, ``--epochs``, ``--steps``);
* with ``--from-weights T,C,P``: the same fixed and adaptive columns from that start too
  (a start far from the default shows whether the adaptation finds its way back).

Each column's NDCG@10 and its ratio to ``fixed`` with a 95% paired bootstrap interval, and
each adaptive column's final weights per partition (the offline engine has one), are
printed as one JSON document.

    .venv/bin/python bench/adapt_validation.py --dataset ../shared/datasets/ml-latest-small \
        --split 2016-03-22 --validation-from 2013-08-24 --rates 0.5,1,2 --epochs 100,300
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) in sys.path:
    sys.path.remove(str(ROOT))
sys.path.insert(0, str(ROOT))

from bench.common import emit_result  # noqa: E402
from recstream.encoders.profile import ProfileConfig  # noqa: E402
from recstream.encoders.text import TextEncoder  # noqa: E402
from recstream.scoring.adapt import AdaptConfig  # noqa: E402
from recstream.scoring.backtest import BacktestConfig  # noqa: E402
from recstream.scoring.blend import DEFAULT_WEIGHTS, BlendWeights  # noqa: E402
from recstream.scoring.engine import EngineConfig  # noqa: E402
from recstream.scoring.sidebyside import EngineMethod, SideBySideOptions, side_by_side  # noqa: E402
from recstream.scoring.topk import ItemMatrix  # noqa: E402
from recstream.streams.produce import parse_time  # noqa: E402
from recstream.streams.tune import catalog_embeddings, load_source  # noqa: E402


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


class Recorder(EngineMethod):
    """An engine method that keeps its final adaptive weights."""

    final: dict | None = None

    def lists(self, events, catalog, config, progress=None):  # type: ignore[override]
        from recstream.scoring import engine as engine_module

        captured = {}
        real = engine_module.Engine

        class Capturing(real):  # type: ignore[misc, valid-type]
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                captured["engine"] = self

        engine_module.Engine = Capturing  # run_offline imports it when called
        try:
            out = super().lists(events, catalog, config, progress)
        finally:
            engine_module.Engine = real
        eng = captured.get("engine")
        if eng is not None and eng.adaptive is not None:
            self.final = {str(p): [round(x, 3) for x in w] for p, w in eng.adaptive.snapshot().items()}
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, type=Path)
    p.add_argument("--split", required=True, help="the test split: nothing from it on is read")
    p.add_argument("--validation-from", required=True, help="start of the validation window (its targets are the cases)")
    p.add_argument("--rates", default="1", type=floats)
    p.add_argument("--epochs", default="200", help="comma list of ints")
    p.add_argument("--steps", default="0.1", type=floats)
    p.add_argument("--from-weights", help="another start: text,cooccurrence,popularity")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    epochs = [int(x) for x in args.epochs.split(",") if x.strip()]
    started = time.monotonic()
    src = load_source(str(args.dataset), end_ms=parse_time(args.split))
    emb, info = catalog_embeddings(src.catalog, fields=("title", "description", "categories"))
    encoder = TextEncoder()
    matrix = ItemMatrix(encoder.dim, "cpu")
    matrix.upsert([it.item_id for it in src.catalog], emb)
    config = BacktestConfig(split_ms=parse_time(args.validation_from), ks=(10,))
    base = EngineConfig(k=10, emit="per-event")
    opts = SideBySideOptions(encoder=encoder, engine_config=base, profile_config=ProfileConfig(), matrix=matrix)
    starts = [("", DEFAULT_WEIGHTS)]
    if args.from_weights:
        t, c, pp = floats(args.from_weights)
        starts.append((f" from {t:g}/{c:g}/{pp:g}", BlendWeights(t, c, pp, "zscore")))
    methods: list[Recorder] = []
    for suffix, w in starts:
        methods.append(Recorder("fixed" + suffix, opts, replace(base, blend=w)))
        for rate, epoch, step in itertools.product(args.rates, epochs, args.steps):
            methods.append(
                Recorder(
                    f"adaptive r={rate:g} e={epoch} s={step:g}{suffix}", opts, replace(base, blend=w, adapt=AdaptConfig(step=step, rate=rate, epoch=epoch))
                )
            )

    def progress(name: str, n: int) -> None:
        pass

    result, seconds = side_by_side(src.events, src.catalog, config, methods, progress=progress)
    ratios = result.ratios(ks=(10,), metrics=("ndcg",))["ndcg@10"]
    doc = {
        "dataset": str(args.dataset),
        "split": args.split,
        "validation_from": args.validation_from,
        "cases": result.counts.get("cases"),
        "seconds": round(time.monotonic() - started, 1),
        "engine_s": seconds,
        "methods": {
            m.name: {
                "ndcg@10": result.metrics(m.name).get("ndcg@10"),
                "vs_fixed": ratios.get(m.name, {}).get("fixed" + max((s for s, _ in starts if m.name.endswith(s)), key=len)),
                "final_weights": m.final,
            }
            for m in methods
        },
        "baselines": {name: result.metrics(name).get("ndcg@10") for name in result.methods if name not in {m.name for m in methods}},
    }
    emit_result(doc, args.json, lambda msg: print(msg, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
