"""RECSTREAM_* variables: typed, and a bad value is one line naming it (exit 2), never a traceback."""

from __future__ import annotations

import pytest

from recstream.streams.cli import build_parser, main


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
