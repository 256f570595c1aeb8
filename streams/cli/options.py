"""What the commands share: the Kafka option groups, the engine and adaptation knobs, and
the ``RECSTREAM_*`` environment readers.

The environment is read when the parser is built (each flag's default is its variable's
value): a variable that does not parse is a :class:`~streams.config.ConfigError` naming it,
which :func:`streams.cli.main` reports in one line with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Iterator, Sequence

from ..config import ConfigError, KafkaSettings

Handler = Callable[[argparse.Namespace], int]


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


def adapt_knobs(g) -> None:
    """The online weight adaptation of the blend (scoring/adapt.py): worker and backtest."""
    from ..app import ADAPT_DEFAULTS as D

    g.add_argument(
        "--adapt",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("ADAPT"),
        help="move the blend's weights online, per partition, towards the weightings that would have ranked the next events higher (env RECSTREAM_ADAPT; default on unless --blend pins the weights)",
    )
    g.add_argument(
        "--adapt-step",
        type=float,
        metavar="W",
        default=_env_float("ADAPT_STEP", D.step),
        help=f"weight moved between two signals by a neighbouring weighting (env RECSTREAM_ADAPT_STEP; default {D.step:g})",
    )
    g.add_argument(
        "--adapt-rate",
        type=float,
        metavar="R",
        default=_env_float("ADAPT_RATE", D.rate),
        help=f"how strongly an epoch's gains pull the weights, 0 = never move (env RECSTREAM_ADAPT_RATE; default {D.rate:g})",
    )
    g.add_argument(
        "--adapt-epoch",
        type=int,
        metavar="N",
        default=_env_int("ADAPT_EPOCH", D.epoch),
        help=f"target events of a partition between two moves of its weights (env RECSTREAM_ADAPT_EPOCH; default {D.epoch})",
    )


def engine_knobs(g) -> None:
    """The worker settings that change what ``tune`` and ``backtest --dataset`` compute (same defaults and env)."""
    g.add_argument(
        "--item-fields",
        default=_env("ITEM_FIELDS", "title,categories,description"),
        help="item fields embedded, as the worker's (default title,categories,description)",
    )
    g.add_argument("--half-life-days", type=float, default=_env_float("HALF_LIFE_DAYS", 30), help="profile half-life (default 30)")
    g.add_argument("--popularity-half-life-days", type=float, default=_env_float("POPULARITY_HALF_LIFE_DAYS", 7), help="popularity half-life (default 7)")
    g.add_argument("--cooc-neighbours", type=int, default=_env_int("COOC_NEIGHBOURS", 100), help="co-occurrence neighbours per item (default 100)")
    g.add_argument("--cooc-history-len", type=int, default=_env_int("COOC_HISTORY_LEN", 20), help="positives per user paired and scored (default 20)")
    g.add_argument("--cooc-half-life-days", type=float, default=_env_float("COOC_HALF_LIFE_DAYS", 0), help="co-occurrence half-life, 0 = none (default 0)")
    g.add_argument(
        "--cooc-pair-decay",
        type=float,
        default=_env_float("COOC_PAIR_DECAY", 0.9),
        help="co-occurrence pair weight per history position between the two items, 1 = none (default 0.9)",
    )
    g.add_argument(
        "--cooc-recency",
        type=float,
        default=_env_float("COOC_RECENCY", 0.8),
        help="weight per position of an older history item when scoring co-occurrence, 1 = plain sum (default 0.8)",
    )
    if not any(a.dest == "history_len" for a in getattr(g, "_group_actions", ())):
        try:
            g.add_argument("--history-len", type=int, default=_env_int("HISTORY_LEN", 50), help="recent events kept per user (default 50)")
        except argparse.ArgumentError:
            pass


def parse_time_opt(text: str | None) -> int | None:
    """A ``--from``/``--to``/``--split`` date as epoch milliseconds (``None`` when not given)."""
    from ..produce import parse_time

    return parse_time(text) if text else None


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
    (``None`` when none is given); a ValueError (one line, exit status 1) when they are
    given without a dataset file or do not parse."""
    if args.columns is None and args.catalog_csv is None and args.catalog_columns is None:
        return None
    if not dataset:
        raise ValueError("--columns, --catalog-csv and --catalog-columns describe a CSV given with --dataset")
    from ..sources import CsvMapping

    return {"csv": CsvMapping.parse(args.columns, args.catalog_csv, args.catalog_columns)}
