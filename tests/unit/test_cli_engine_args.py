"""`recstream backtest`'s engine settings reach the replay's worker as the worker's own flags."""

from __future__ import annotations

from recstream.streams.cli import backtest_settings, build_parser, engine_worker_args, worker_config


def test_backtest_engine_settings_become_the_replay_workers_flags() -> None:
    parser = build_parser()
    bt = parser.parse_args(
        [
            "backtest",
            "--split",
            "2016-03-22",
            "--cooc-recency",
            "0.5",
            "--cooc-pair-decay",
            "0.7",
            "--cooc-neighbours",
            "300",
            "--half-life-days",
            "12",
            "--item-fields",
            "title",
        ]
    )
    worker = worker_config(parser.parse_args(["worker", *engine_worker_args(backtest_settings(bt).worker)]))
    assert (worker.cooc_recency, worker.cooc_pair_decay, worker.cooc_neighbours) == (0.5, 0.7, 300)
    assert worker.half_life_days == 12.0 and worker.item_fields == ("title",)
    # the defaults are the worker's: passing them changes nothing
    defaults = worker_config(
        parser.parse_args(["worker", *engine_worker_args(backtest_settings(parser.parse_args(["backtest", "--split", "2016-03-22"])).worker)])
    )
    assert defaults == worker_config(parser.parse_args(["worker"]))


def test_the_weight_adaptation_settings_reach_the_replays_worker() -> None:
    parser = build_parser()
    bt = parser.parse_args(["backtest", "--split", "2016-03-22", "--no-adapt", "--adapt-rate", "2", "--adapt-epoch", "50"])
    worker = worker_config(parser.parse_args(["worker", *engine_worker_args(backtest_settings(bt).worker)]))
    assert (worker.adapt, worker.adapt_rate, worker.adapt_epoch) == (False, 2.0, 50)
    assert worker.adapt_config is None
    on = worker_config(parser.parse_args(["worker", "--adapt-step", "0.05"]))
    assert on.adapt is None and on.adapt_config is not None and on.adapt_config.step == 0.05  # on by default


def test_a_blend_file_pins_the_weights_unless_adaptation_is_asked_for(tmp_path) -> None:
    from recstream.scoring.blend import BlendWeights

    path = BlendWeights(0.2, 0.7, 0.1).save(tmp_path / "w.json")
    parser = build_parser()
    assert worker_config(parser.parse_args(["worker", "--blend", str(path)])).adapt_config is None
    assert worker_config(parser.parse_args(["worker", "--blend", str(path), "--adapt"])).adapt_config is not None
    assert worker_config(parser.parse_args(["worker", "--ranker", "text"])).adapt_config is None
