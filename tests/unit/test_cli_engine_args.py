"""`recstream backtest`'s engine settings reach the replay's worker as the worker's own flags."""

from __future__ import annotations

from streams.cli import build_parser, engine_worker_args, worker_config


def test_backtest_engine_settings_become_the_replay_workers_flags() -> None:
    parser = build_parser()
    bt = parser.parse_args(["backtest", "--split", "2016-03-22", "--cooc-recency", "0.5", "--cooc-pair-decay", "0.7",
                            "--cooc-neighbours", "300", "--half-life-days", "12", "--item-fields", "title"])
    worker = worker_config(parser.parse_args(["worker", *engine_worker_args(bt)]))
    assert (worker.cooc_recency, worker.cooc_pair_decay, worker.cooc_neighbours) == (0.5, 0.7, 300)
    assert worker.half_life_days == 12.0 and worker.item_fields == ("title",)
    # the defaults are the worker's: passing them changes nothing
    defaults = worker_config(parser.parse_args(["worker", *engine_worker_args(parser.parse_args(["backtest", "--split", "2016-03-22"]))]))
    assert defaults == worker_config(parser.parse_args(["worker"]))
