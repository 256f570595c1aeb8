"""recstream: real-time, text-aware recommendations on Apache Kafka.

The command line is ``recstream`` (``python -m recstream``).  From Python, the names below
are the supported API (docs/python.md has an example); everything else is reached through
the subpackages, whose layout may change between releases:

* :mod:`recstream.streams` - the Kafka side: the Faust worker, topics, tables, the CLI;
* :mod:`recstream.scoring` - pure ranking math: candidates, top-k, metrics, the backtest;
* :mod:`recstream.encoders` - the text encoder and the user profile models.

Records (the topics' contract, docs/contract.md): :class:`Item`, :class:`Click`,
:class:`Purchase`, :class:`Review`, :class:`Recommendation`, and :func:`parse_event` /
:func:`encode` to read and write their JSON.  Data: :func:`load_dataset` (MovieLens,
Amazon reviews, the JSONL contract, a CSV with a column mapping).  Ranking:
:class:`Engine` (:meth:`Engine.for_catalog`, :meth:`Engine.process_events`) with
:class:`EngineConfig` and :class:`WorkerConfig` (every setting of ``recstream worker``).
Evaluation: :func:`backtest` (what ``recstream backtest --dataset`` runs) and
:class:`BacktestConfig`.

Names are imported on first use: ``import recstream`` itself loads neither torch nor faust.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# In a source checkout the subpackages are the repository's top-level folders (pyproject.toml
# maps them into this package for installs): let the package find them there too.
_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if not os.path.isdir(os.path.join(_HERE, "streams")) and os.path.isfile(os.path.join(_ROOT, "streams", "__init__.py")):
    __path__.append(_ROOT)  # noqa: F821 - a package's __path__ is set by the import system

if TYPE_CHECKING:
    from recstream.scoring.backtest import BacktestConfig
    from recstream.scoring.engine import Engine, EngineConfig
    from recstream.streams.app import WorkerConfig
    from recstream.streams.backtest import DatasetBacktest, backtest
    from recstream.streams.records import Click, Item, Purchase, Recommendation, Review, encode, parse_event
    from recstream.streams.sources import Dataset, DatasetError, load_dataset

#: public name -> the module that defines it
_EXPORTS = {
    "Item": "recstream.streams.records",
    "Click": "recstream.streams.records",
    "Purchase": "recstream.streams.records",
    "Review": "recstream.streams.records",
    "Recommendation": "recstream.streams.records",
    "parse_event": "recstream.streams.records",
    "encode": "recstream.streams.records",
    "load_dataset": "recstream.streams.sources",
    "Dataset": "recstream.streams.sources",
    "DatasetError": "recstream.streams.sources",
    "Engine": "recstream.scoring.engine",
    "EngineConfig": "recstream.scoring.engine",
    "WorkerConfig": "recstream.streams.app",
    "backtest": "recstream.streams.backtest",
    "DatasetBacktest": "recstream.streams.backtest",
    "BacktestConfig": "recstream.scoring.backtest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'recstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
