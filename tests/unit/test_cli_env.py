"""The commands' settings: every flag's default is its settings model's field, RECSTREAM_*
variables are typed, a bad variable or flag is one line naming it (exit 2), never a traceback,
and renamed flags keep working with a notice."""

from __future__ import annotations

import os

import pytest

from recstream.encoders.sasrec import SASRecConfig
from recstream.scoring.backtest import BacktestConfig
from recstream.streams.app import WorkerConfig
from recstream.streams.backtest import BacktestSettings
from recstream.streams.cli import backtest_settings, build_parser, main, train_settings, tune_settings, worker_config
from recstream.streams.produce import parse_time
from recstream.streams.train import TrainSettings
from recstream.streams.tune import TuneSettings

SPLIT = "2016-03-22"


@pytest.fixture
def clean_env(monkeypatch):
    """No RECSTREAM_* variable of the machine running the tests sets a setting."""
    for name in list(os.environ):
        if name.startswith("RECSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "1000")  # --help on one line per flag


def _status(argv: list[str]) -> int:
    """The exit status of ``recstream ARGV`` (main returns it, or argparse and the settings errors exit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("RECSTREAM_K", "ten", "RECSTREAM_K: expected an integer, got 'ten'"),
        ("RECSTREAM_HALF_LIFE_DAYS", "a month", "RECSTREAM_HALF_LIFE_DAYS: expected a number, got 'a month'"),
        ("RECSTREAM_EXCLUDE_SEEN", "maybe", "RECSTREAM_EXCLUDE_SEEN: expected true or false"),
        ("RECSTREAM_RANKER", "best", "RECSTREAM_RANKER: expected one of blend, text, learned, got 'best'"),
        ("RECSTREAM_PROCESSING_GUARANTEE", "exactly-once", "RECSTREAM_PROCESSING_GUARANTEE: expected one of at_least_once, exactly_once, got 'exactly-once'"),
    ],
)
def test_a_bad_variable_is_named_with_its_value(monkeypatch, capsys, name, value, expected):
    monkeypatch.setenv(name, value)
    assert main(["--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recstream: error: {expected}") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(("value", "expected"), [("on", True), ("yes", True), ("1", True), ("off", False), ("false", False), ("", True)])
def test_exclude_seen_reads_the_same_words_as_every_boolean_variable(monkeypatch, value, expected):
    monkeypatch.setenv("RECSTREAM_EXCLUDE_SEEN", value)
    assert build_parser().parse_args(["worker"]).exclude_seen is expected


def test_numbers_from_the_environment_are_typed(monkeypatch):
    monkeypatch.setenv("RECSTREAM_K", " 25 ")
    monkeypatch.setenv("RECSTREAM_MAX_SKEW_MS", "0")
    monkeypatch.setenv("RECSTREAM_HISTORY_LEN", "70")
    args = build_parser().parse_args(["worker"])
    assert (args.k, args.max_skew_ms, args.history_len) == (25, 0, 70)
    assert build_parser().parse_args(["backtest", "--dataset", "x", "--split", "2020-01-01"]).history_len == 70


def test_a_choice_from_the_environment_is_the_flags_default(monkeypatch):
    monkeypatch.setenv("RECSTREAM_RANKER", " text ")
    monkeypatch.setenv("RECSTREAM_LOG_FORMAT", "json")
    args = build_parser().parse_args(["worker"])
    assert (args.ranker, args.log_format, args.index) == ("text", "json", "auto")


def test_every_flag_defaults_to_its_settings_models_field(clean_env):
    """A default written again as a literal in a flag would make these differ."""
    parser = build_parser()
    assert worker_config(parser.parse_args(["worker"])) == WorkerConfig()
    backtest = backtest_settings(parser.parse_args(["backtest", "--dataset", "x", "--split", SPLIT]))
    assert backtest == BacktestSettings(protocol=BacktestConfig(split_ms=parse_time(SPLIT)), dataset="x")
    assert tune_settings(parser.parse_args(["tune", "--dataset", "x"])) == TuneSettings(dataset="x")
    train = train_settings(parser.parse_args(["train", "--dataset", "x", "--validation-from", SPLIT, "-o", "c", "--version", "v"]))
    assert train == TrainSettings(output="c", validation_from_ms=parse_time(SPLIT), dataset="x", model=SASRecConfig(vocab=(), version="v"))
    # without a dataset, the deployment's connection is part of the settings
    assert tune_settings(parser.parse_args(["tune", "--topic-prefix", "shop."])).kafka.topic("clicks") == "shop.clicks"


@pytest.mark.parametrize("command", ["worker", "backtest", "tune", "train"])
def test_the_help_shows_the_models_defaults(clean_env, capsys, command):
    assert _status([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    if command != "train":  # the engine settings the three share, declared once
        assert f"--history-len N recent events kept per user (env RECSTREAM_HISTORY_LEN; default {WorkerConfig().history_len})" in out
        assert f"(env RECSTREAM_COOC_PAIR_DECAY; default {WorkerConfig().cooc_pair_decay:g})" in out
    assert f"--item-fields FIELD,... item fields embedded, in order (env RECSTREAM_ITEM_FIELDS; default {','.join(WorkerConfig().item_fields)})" in out
    if command == "backtest":
        assert "--json-file FILE" in out and "--html-file FILE" in out and "--json " not in out and "--html " not in out
        assert "--ks K,... cut-offs (default 5,10,20)" in out
    if command == "train":
        assert "--torch-threads N" in out and "--threads" not in out.replace("--torch-threads", "")
        assert "--validation-from DATE" in out and "--split DATE" in out and "--to " not in out and "--validate-to" not in out
        assert "--batch-size BATCH_SIZE training sequences per step (default 32)" in out


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        # variables, read as the parser is built
        (
            ["backtest", "--dataset", "x", "--split", SPLIT],
            ("RECSTREAM_COOC_NEIGHBOURS", "many"),
            "recstream: error: RECSTREAM_COOC_NEIGHBOURS: expected an integer, got 'many'",
        ),
        (["tune", "--dataset", "x"], ("RECSTREAM_COOC_RECENCY", "high"), "recstream: error: RECSTREAM_COOC_RECENCY: expected a number, got 'high'"),
        (
            ["train", "--dataset", "x", "--validation-from", SPLIT, "-o", "c"],
            ("RECSTREAM_ITEM_FIELDS", "title,price"),
            "recstream: error: item fields must be a non-empty subset of title, categories, description, got title, price",
        ),
        # flags argparse refuses
        (
            ["backtest", "--split", "someday"],
            None,
            "recstream backtest: error: argument --split: 'someday' is not a date (YYYY-MM-DD) or ISO date-time (see 'recstream backtest --help')",
        ),
        (["backtest", "--split", SPLIT, "--ks", "5,ten"], None, "recstream backtest: error: argument --ks: expected integers separated by commas, got '5,ten'"),
        (["tune", "--grid-step", "fine"], None, "recstream tune: error: argument --grid-step: invalid float value: 'fine'"),
        (["train", "--epochs", "x"], None, "recstream train: error: argument --epochs: invalid int value: 'x'"),
        # values the settings refuse, every problem in the one line
        (["backtest", "--dataset", "x"], None, "recstream: error: --split DATE is required: events before it warm the state, later ones are tested"),
        (
            ["backtest", "--dataset", "x", "--split", SPLIT, "--ks", "0,5", "--workers", "0", "--cooc-recency", "2"],
            None,
            "recstream: error: ks: must be integers >= 1, got (0, 5); cooc-recency must be in (0, 1], got 2.0; --workers must be at least 1, got 0",
        ),
        (["tune", "--dataset", "x", "--grid-step", "0.3", "-k", "0"], None, "recstream: error: k must be at least 1, got 0; step must divide 1, got 0.3"),
        (
            ["train", "--dataset", "x", "--validation-from", SPLIT, "-o", "c", "--heads", "3", "--epochs", "0", "--torch-threads", "0"],
            None,
            "recstream: error: dim (64) must be a multiple of heads (3); epochs, batch_size, k, patience and eval_batch must be at least 1, "
            "got 0, 32, 10, 3 and 512; torch threads must be at least 1, got 0",
        ),
        (
            ["worker", "--partitions", "0", "--session-timeout", "2"],
            None,
            "recstream: error: partitions must be at least 1, got 0; session timeout must be between 6",
        ),
    ],
)
def test_a_bad_variable_or_flag_of_a_command_is_one_line_naming_it(clean_env, monkeypatch, capsys, argv, env, expected):
    if env:
        monkeypatch.setenv(*env)
    assert _status(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1 and "Traceback" not in err


def test_backtests_old_json_and_html_flags_still_work_with_a_notice(clean_env, capsys):
    parser = build_parser()
    common = ["backtest", "--dataset", "x", "--split", SPLIT]
    new = backtest_settings(parser.parse_args([*common, "--json-file", "r.json", "--html-file", "r.html"]))
    assert capsys.readouterr().err == ""
    old = backtest_settings(parser.parse_args([*common, "--json", "r.json", "--html", "r.html"]))
    assert old == new and (new.json_file, new.html_file) == ("r.json", "r.html")
    assert capsys.readouterr().err.splitlines() == [
        "recstream backtest: warning: --json is deprecated, use --json-file",
        "recstream backtest: warning: --html is deprecated, use --html-file",
    ]
