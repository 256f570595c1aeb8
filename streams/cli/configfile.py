"""Any setting of any command in the config file (``--config FILE`` / ``RECSTREAM_CONFIG``).

Besides ``[kafka]`` (the connection, read by :class:`streams.config.KafkaSettings`), the
file holds a table per command, named after it, whose keys are the command's long flags
without the dashes, as ``batch-max`` or ``batch_max``::

    [worker]
    batch-max = 256
    exclude-seen = false
    emit = "per-event"

    [backtest]
    ks = "5,10"

A value goes through the flag's own conversion and checks (its argparse ``type`` and
``choices``; ``true``/``false`` for a switch) and becomes the flag's default, below the
environment and the flags: defaults < config file < ``RECSTREAM_*`` < flags. A value that
does not convert, an unknown key or table is a :class:`~streams.config.ConfigError` naming the
file, the table, the key and the value (one line, exit status 2); a flag's old, deprecated
name is not a key (the error names the new one). Every command table of the
file is checked, whichever command runs; ``recstream kafka`` (the local broker) has none.
"""

from __future__ import annotations

import argparse
import difflib
import os
import weakref
from typing import Any, Mapping, Sequence

from ..config import COMMAND_TABLES, ENV_CONFIG, FILE_KEYS, ConfigError, read_config_file
from .options import Renamed

#: the ``RECSTREAM_*`` names (without the prefix) set in the environment when each command's
#: parser was built: these settings keep the environment's value over the file's
_ENV_SET: weakref.WeakKeyDictionary[argparse.ArgumentParser, frozenset[str]] = weakref.WeakKeyDictionary()

_SWITCHES = (argparse.BooleanOptionalAction, argparse._StoreTrueAction, argparse._StoreFalseAction)


def note_environment(command: argparse.ArgumentParser, names: set[str]) -> None:
    """Record the variables the environment set for a command's parser (see :func:`streams.cli.options.env_reads`)."""
    _ENV_SET[command] = frozenset(names)


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of the ``recstream`` parser, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_and_file(parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The command of a command line and the config file it names (``--config``, else
    ``RECSTREAM_CONFIG``; ``None`` for none), found before the full parse."""
    subs = commands(parser)
    at = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if at is None or argv[at] not in subs:
        return None, None  # no command, or one argparse will refuse
    path: str | None = None
    if "--config" in subs[argv[at]]._option_string_actions:
        rest = list(argv[at + 1 :])
        for i, token in enumerate(rest):
            if token == "--":
                break
            if token == "--config" and i + 1 < len(rest):
                path = rest[i + 1]
            elif token.startswith("--config="):
                path = token.partition("=")[2]
    return argv[at], path or environ.get(ENV_CONFIG) or None


def _keys(command: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """A command's settings the file may hold, by long flag with ``_`` for ``-``: not the
    Kafka connection (``[kafka]``), ``--config`` itself, ``--help`` or positional arguments."""
    keys: dict[str, argparse.Action] = {}
    for action in command._actions:
        if not action.option_strings or action.dest == "config" or action.dest in FILE_KEYS:
            continue
        if not isinstance(action, (argparse._StoreAction, *_SWITCHES)):
            continue
        for option in action.option_strings:
            if not option.startswith("--"):
                continue
            if isinstance(action, argparse.BooleanOptionalAction) and option.startswith("--no-"):
                continue
            keys[option[2:].replace("-", "_")] = action
    return keys


def _expected(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(str(c) for c in action.choices)
    return {int: "an integer", float: "a number"}.get(action.type, "a string")  # type: ignore[call-overload]


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """A file value as the flag would have parsed it, or a ConfigError naming it."""
    if isinstance(action, _SWITCHES):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return (not value) if isinstance(action, argparse._StoreFalseAction) else value
    if isinstance(value, (bool, list, dict)):
        raise ConfigError(f"{where}: expected {_expected(action)}")
    text = value if isinstance(value, str) else str(value)
    try:
        result = action.type(text) if callable(action.type) else text
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {_expected(action)}") from None
    if action.choices is not None and result not in action.choices:
        raise ConfigError(f"{where}: expected {_expected(action)}")
    return result


def table_settings(command: argparse.ArgumentParser, name: str, table: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The settings of a command table, by argparse destination, converted and checked."""
    keys = _keys(command)
    renamed = {option[2:].replace("-", "_"): action.new[2:] for action in command._actions if isinstance(action, Renamed) for option in action.option_strings}
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in table.items():
        norm = key.replace("-", "_")
        where = f"config file {path}: [{name}] {key} = {value!r}"
        if norm in FILE_KEYS:
            raise ConfigError(f"{where}: a Kafka connection setting, write it in [kafka]")
        action = keys.get(norm)
        if action is None and norm in renamed:
            raise ConfigError(f"{where}: renamed {renamed[norm]}")
        if action is None:
            close = difflib.get_close_matches(norm, list(keys), n=1)
            hint = f" (did you mean {close[0].replace('_', '-')}?)" if close else ""
            raise ConfigError(f"{where}: unknown key{hint}; the keys are the long flags of 'recstream {name} --help'")
        if action.dest in out:
            raise ConfigError(f"{where}: the same setting as {given[action.dest]}, given twice")
        out[action.dest] = _convert(action, value, where)
        given[action.dest] = key
    return out


def apply_config_file(parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> None:
    """Make the config file's table of the command of ``argv`` the defaults of its flags,
    except those the environment sets (the flags still win: they are parsed after). Every
    command table is checked; a bad one raises :class:`~streams.config.ConfigError`."""
    command, path = command_and_file(parser, argv, os.environ if environ is None else environ)
    if command is None or path is None:
        return
    doc = read_config_file(path)
    subs = commands(parser)
    chosen: dict[str, Any] = {}
    for name in COMMAND_TABLES:
        if name in doc and name in subs:
            settings = table_settings(subs[name], name, doc[name], path)
            if name == command:
                chosen = settings
    env_set = _ENV_SET.get(subs[command], frozenset())
    defaults = {dest: value for dest, value in chosen.items() if dest.upper() not in env_set}
    if defaults:
        subs[command].set_defaults(**defaults)
