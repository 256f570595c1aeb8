"""The config file holds any setting of any command: defaults < config file < environment < flags."""

from __future__ import annotations

import pytest

from recstream.streams.cli import apply_config_file, build_parser, main
from recstream.streams.cli.configfile import commands
from recstream.streams.config import COMMAND_TABLES, KafkaSettings

WORKER = """
[kafka]
broker = "kafka-1:9092"

[worker]
batch-max = 256
half_life_days = 12.5
exclude-seen = false
emit = "per-event"
metrics-host = "0.0.0.0"
"""

#: (key in the file, argparse dest, file value, env variable, env value, flag, flag value, parsed file, env, flag)
CASES = [
    ("batch-max", "batch_max", "256", "RECSTREAM_BATCH_MAX", "300", ["--batch-max", "400"], 256, 300, 400),
    ("half_life_days", "half_life_days", "12.5", "RECSTREAM_HALF_LIFE_DAYS", "20", ["--half-life-days", "3"], 12.5, 20.0, 3.0),
    ("exclude-seen", "exclude_seen", "false", "RECSTREAM_EXCLUDE_SEEN", "off", ["--exclude-seen"], False, False, True),
    ("adapt", "adapt", "false", "RECSTREAM_ADAPT", "on", ["--no-adapt"], False, True, False),
    ("emit", "emit", '"per-event"', "RECSTREAM_EMIT", "per-user", ["--emit", "per-event"], "per-event", "per-user", "per-event"),
    ("metrics-host", "metrics_host", '"0.0.0.0"', "RECSTREAM_METRICS_HOST", "10.0.0.1", ["--metrics-host", "::"], "0.0.0.0", "10.0.0.1", "::"),
]


def _parse(argv):
    parser = build_parser()
    apply_config_file(parser, argv)
    return parser.parse_args(argv)


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch):
    for name in ("RECSTREAM_CONFIG", *(case[3] for case in CASES)):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("key, dest, text, env, env_value, flag, from_file, from_env, from_flag", CASES)
def test_file_is_below_the_environment_and_the_flags(tmp_path, monkeypatch, key, dest, text, env, env_value, flag, from_file, from_env, from_flag):
    default = getattr(_parse(["worker"]), dest)
    config = tmp_path / "recstream.toml"
    config.write_text(f"[worker]\n{key} = {text}\n")
    argv = ["worker", "--config", str(config)]
    assert getattr(_parse(argv), dest) == from_file != default
    monkeypatch.setenv(env, env_value)
    assert getattr(_parse(argv), dest) == from_env
    assert getattr(_parse([*argv, *flag]), dest) == from_flag
    monkeypatch.delenv(env)
    assert getattr(_parse([*argv, *flag]), dest) == from_flag


def test_the_file_named_by_the_environment_and_with_equals(tmp_path, monkeypatch):
    config = tmp_path / "recstream.toml"
    config.write_text(WORKER)
    args = _parse(["worker", f"--config={config}"])
    assert (args.batch_max, args.half_life_days, args.exclude_seen, args.emit) == (256, 12.5, False, "per-event")
    monkeypatch.setenv("RECSTREAM_CONFIG", str(config))
    assert _parse(["-v", "worker"]).batch_max == 256
    assert KafkaSettings.from_env(config_file=str(config)).broker == "kafka-1:9092"  # [kafka] as before


def test_other_commands_tables_and_no_file_leave_the_defaults(tmp_path):
    config = tmp_path / "recstream.toml"
    config.write_text('[backtest]\nks = "5,10"\nhistory-len = 70\nease = true\n[worker]\nhistory-len = 120\n')
    args = _parse(["backtest", "--config", str(config), "--split", "2020-01-01"])
    assert (args.ks, args.history_len, args.ease) == ((5, 10), 70, True)
    assert _parse(["worker", "--config", str(config)]).history_len == 120
    assert _parse(["worker"]).history_len == 50
    assert _parse(["backtest", "--split", "2020-01-01"]).ks != (5, 10)


def test_the_tables_of_backtest_tune_and_train_hold_their_settings(tmp_path):
    from recstream.streams.cli import backtest_settings, train_settings, tune_settings
    from recstream.streams.produce import parse_time

    config = tmp_path / "recstream.toml"
    config.write_text(
        '[backtest]\nsplit = 2016-03-22\njson-file = "r.json"\nworkers = 2\n'
        '[tune]\nvalidation-from = "2016-01-01"\ngrid-step = 0.25\n'
        '[train]\nvalidation-from = 2016-01-01\nsplit = "2016-03-22"\ntorch-threads = 1\nno-progress = true\n'
    )
    backtest = backtest_settings(_parse(["backtest", "--config", str(config)]))
    assert (backtest.protocol.split_ms, backtest.json_file, backtest.workers) == (parse_time("2016-03-22"), "r.json", 2)
    tune = tune_settings(_parse(["tune", "--config", str(config), "--grid-step", "0.5"]))
    assert (tune.validation_from_ms, tune.grid_step) == (parse_time("2016-01-01"), 0.5)
    train = train_settings(_parse(["train", "--config", str(config), "-o", "c"]))
    assert (train.validation_from_ms, train.split_ms, train.engine.torch_threads, train.progress) == (
        parse_time("2016-01-01"),
        parse_time("2016-03-22"),
        1,
        False,
    )


def test_every_command_table_is_a_command():
    names = set(commands(build_parser()))
    assert set(COMMAND_TABLES) == names - {"kafka"}


@pytest.mark.parametrize(
    "text, message",
    [
        ('[worker]\nbatch-max = "lots"\n', "[worker] batch-max = 'lots': expected an integer"),
        ('[worker]\nhalf-life-days = "long"\n', "[worker] half-life-days = 'long': expected a number"),
        ('[worker]\nemit = "never"\n', "[worker] emit = 'never': expected one of per-user, per-event"),
        ('[worker]\nexclude-seen = "no"\n', "[worker] exclude-seen = 'no': expected true or false"),
        ("[worker]\nk = true\n", "[worker] k = True: expected an integer"),
        ("[worker]\nbatch-maxx = 3\n", "[worker] batch-maxx = 3: unknown key (did you mean batch-max?)"),
        ("[worker]\nbatch-max = 1\nbatch_max = 2\n", "[worker] batch_max = 2: the same setting as batch-max, given twice"),
        ('[worker]\nbroker = "h:1"\n', "[worker] broker = 'h:1': a Kafka connection setting, write it in [kafka]"),
        ("[tune]\nsplit = 3\n[wrker]\nk = 1\n", "unknown table or key wrker"),
        ("[backtest]\nks = [5, 10]\n", "[backtest] ks = [5, 10]: expected a string"),
        ('[backtest]\nks = "5,ten"\n', "[backtest] ks = '5,ten': expected integers separated by commas, got '5,ten'"),
        ('[backtest]\njson = "r.json"\n', "[backtest] json = 'r.json': renamed json-file"),
        ('[train]\nto = "2016-03-22"\n', "[train] to = '2016-03-22': renamed validation-from"),
        ('[train]\nepochs = "many"\n', "[train] epochs = 'many': expected an integer"),
        ('[tune]\nsplit = "someday"\n', "[tune] split = 'someday': 'someday' is not a date (YYYY-MM-DD) or ISO date-time"),
        ("worker = 3\n", "'worker' must be a table"),
    ],
)
def test_a_bad_setting_is_one_line_naming_file_table_key_and_value(tmp_path, capsys, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    for command in (["worker"], ["topics", "list"]):  # every table is checked, whichever command runs
        assert main([*command, "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"recstream: error: config file {config}: ")
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_bad_value_is_refused_even_when_the_environment_sets_it(tmp_path, monkeypatch, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[worker]\nbatch-max = 'lots'\n")
    monkeypatch.setenv("RECSTREAM_BATCH_MAX", "3")
    assert main(["worker", "--config", str(config)]) == 2
    assert "[worker] batch-max = 'lots'" in capsys.readouterr().err
