"""Several recstream methods and the baselines, side by side on the same test cases.

Pure code, no Kafka.  ``recstream backtest --dataset PATH`` runs this: each *method* is a
way of running recstream's engine (:class:`scoring.engine.Engine`) offline over the same
event log, in per-event mode, exactly as :func:`scoring.backtest.run_offline` does; the
lists every method emitted are then scored by one :class:`scoring.backtest.Backtest`, so
every method and every baseline (decayed popularity, item-kNN) is scored on exactly the
same cases, with the same exclusions and the same protocol (see :mod:`scoring.backtest`).

Methods are looked up by name in :data:`METHODS`, a registry of factories
``(options) -> OfflineMethod``:

* ``text-only``: the engine as the worker runs it with ``--ranker text`` (text-profile similarity);
* ``blend``: the engine with blend weights (``--blend PATH``, a file written by
  ``recstream tune``; without one, :data:`scoring.blend.DEFAULT_WEIGHTS`), adapted online
  with ``options.adapt`` (:mod:`scoring.adapt`), as the worker runs it by default
  (``--ranker blend``);
* ``learned``: the engine with the learned user encoder of the checkpoint
  ``options.extra["user_model"]`` (``--user-model CKPT``, written by ``recstream train``),
  as the worker runs it with ``--user-model``; listed by default only when one is given.

A learned user encoder is added by registering a factory here (e.g. ``METHODS["learned"]``)
that returns an :class:`OfflineMethod` whose :meth:`~OfflineMethod.lists` gives the list
it held after each event; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from recstream.scoring.backtest import (
    RECSTREAM,
    Backtest,
    BacktestConfig,
    BacktestResult,
    ExclusionTracker,
    _time_ordered,
    default_baselines,
    interaction_kinds,
    run_offline,
)
from recstream.scoring.records import Event, Item

if TYPE_CHECKING:
    from recstream.encoders.profile import ProfileConfig
    from recstream.scoring.adapt import AdaptConfig
    from recstream.encoders.text import TextEncoder
    from recstream.scoring.blend import BlendWeights
    from recstream.scoring.engine import EngineConfig

__all__ = ["METHODS", "EngineMethod", "HeldLists", "OfflineMethod", "SideBySideOptions", "method_names", "side_by_side"]


@dataclass(frozen=True)
class SideBySideOptions:
    """What the method factories may need (the shared engine settings, the encoder...)."""

    encoder: TextEncoder
    engine_config: EngineConfig
    profile_config: ProfileConfig | None = None
    blend: BlendWeights | None = None
    #: how the blend's weights adapt online (``None``: they stay as given)
    adapt: AdaptConfig | None = None
    item_fields: Sequence[str] | None = None
    batch_size: int = 512
    matrix: Any = None  # a prebuilt ItemMatrix of the catalog (saves embedding it per method)
    partition_of: Callable[[str], int] | None = None  # a user's input partition (run_offline)
    extra: Mapping[str, Any] = field(default_factory=dict)  # for registered methods (e.g. a checkpoint path)


class OfflineMethod(Protocol):
    """One column of the side-by-side table."""

    name: str

    def lists(
        self, events: Sequence[Event], catalog: Sequence[Item], config: BacktestConfig, progress: Callable[[int], None] | None = None
    ) -> list[tuple[str, ...] | None]:
        """The list emitted right after each event of ``events`` (time order, as given)."""
        ...


@dataclass
class EngineMethod:
    """recstream's engine with one configuration, run offline (:func:`run_offline`)."""

    name: str
    options: SideBySideOptions
    engine_config: EngineConfig
    user_encoder: Any = None

    def lists(
        self, events: Sequence[Event], catalog: Sequence[Item], config: BacktestConfig, progress: Callable[[int], None] | None = None
    ) -> list[tuple[str, ...] | None]:
        o = self.options
        res = run_offline(
            events,
            catalog,
            config,
            encoder=o.encoder,
            engine_config=self.engine_config,
            profile_config=o.profile_config,
            batch_size=o.batch_size,
            item_fields=o.item_fields,
            baselines=[],
            keep_lists=True,
            progress=progress,
            matrix=o.matrix,
            user_encoder=self.user_encoder,
            partition_of=o.partition_of,
        )
        assert res.per_event is not None
        return [items for _, items in res.per_event]


def _text_only(o: SideBySideOptions) -> OfflineMethod:
    return EngineMethod("text-only", o, replace(o.engine_config, blend=None, adapt=None))


def _blend(o: SideBySideOptions) -> OfflineMethod:
    from recstream.scoring.blend import DEFAULT_WEIGHTS

    return EngineMethod("blend", o, replace(o.engine_config, blend=o.blend or DEFAULT_WEIGHTS, adapt=o.adapt))


def _learned(o: SideBySideOptions) -> OfflineMethod:
    from recstream.scoring.learned import LearnedUserEncoder

    path = o.extra.get("user_model")
    if not path:
        raise ValueError("the learned method needs a checkpoint (--user-model CKPT, written by 'recstream train')")
    return EngineMethod("learned", o, replace(o.engine_config, blend=None, adapt=None), user_encoder=LearnedUserEncoder(path))


#: name -> factory; the order is the table's order (a learned encoder registers here too)
METHODS: dict[str, Callable[[SideBySideOptions], OfflineMethod]] = {
    "text-only": _text_only,
    "blend": _blend,
    "learned": _learned,
}


def method_names() -> list[str]:
    return list(METHODS)


class HeldLists:
    """A method's precomputed per-event lists, played back as a baseline: after each
    observed event it holds the list emitted after that event, and recommends it to the
    user until their next event (what the user held, as :class:`Backtest` does for
    recstream's own lists).  Events must be observed in the order the lists were made."""

    def __init__(self, name: str, events: Sequence[Event], lists: Sequence[tuple[str, ...] | None]) -> None:
        if len(events) != len(lists):
            raise ValueError(f"{name}: {len(lists)} lists for {len(events)} events")
        self.name = name
        self._events = events
        self._lists = lists
        self._pos = 0
        self._held: dict[str, tuple[str, ...]] = {}

    def observe(self, user_id: str, item_id: str, ts: int, kind: str, rating: float | None = None) -> None:
        ev = self._events[self._pos]
        if (ev.user_id, ev.item_id, int(ev.ts), ev.kind) != (user_id, item_id, int(ts), kind):
            raise ValueError(f"{self.name}: events observed out of the lists' order at event {self._pos}")
        items = self._lists[self._pos]
        self._pos += 1
        if items is None:
            self._held.pop(user_id, None)
        else:
            self._held[user_id] = items

    def recommend(self, user_id: str, k: int, exclude: Any = (), now_ms: int | None = None) -> list[str]:
        return list(self._held.get(user_id, ()))[:k]


def side_by_side(
    events: Sequence[Event],
    catalog: Sequence[Item],
    config: BacktestConfig,
    methods: Sequence[OfflineMethod],
    *,
    progress: Callable[[str, int], None] | None = None,
) -> tuple[BacktestResult, dict[str, float]]:
    """Every method's lists, then one backtest of all of them and the default baselines on
    the same cases.  Returns the result (methods in order: ``methods``, then popularity and
    item-kNN) and the seconds each method's engine run took."""
    import time

    if not methods:
        raise ValueError("at least one method")
    names = [m.name for m in methods]
    if len(set(names)) != len(names) or RECSTREAM in names:
        raise ValueError(f"method names must be distinct and not {RECSTREAM!r}, got {names}")
    if config.popularity_half_life_ms is None:
        first = getattr(methods[0], "engine_config", None)
        if first is not None:
            config = replace(config, popularity_half_life_ms=first.popularity_half_life_ms)
    ordered = _time_ordered(events)
    lists: dict[str, list[tuple[str, ...] | None]] = {}
    seconds: dict[str, float] = {}
    for m in methods:
        t0 = time.perf_counter()
        cb = (lambda n, name=m.name: progress(name, n)) if progress is not None else None
        lists[m.name] = m.lists(ordered, catalog, config, cb)
        seconds[m.name] = round(time.perf_counter() - t0, 2)
    first, rest = methods[0], methods[1:]
    ids = list(dict.fromkeys(item.item_id for item in catalog))
    baselines = [HeldLists(m.name, ordered, lists[m.name]) for m in rest] + default_baselines(config, ids)
    bt = Backtest(config, ids, baselines)
    ec = getattr(first, "engine_config", None)
    tracker = ExclusionTracker(ec.exclude_seen if ec is not None else True, _history_len(first))
    for ev, kind, rec in zip(ordered, interaction_kinds(ordered, config), lists[first.name]):
        bt.observe(ev, rec, exclude_before=tracker.exclusion(ev.user_id), kind=kind)
        tracker.observe(ev)
    res = bt.result()
    # recstream's own column is the first method: give it its name, keep the order
    order = [first.name, *(m.name for m in rest), *(b.name for b in baselines[len(rest) :])]
    renamed = {first.name if k == RECSTREAM else k: replace(v, name=first.name) if k == RECSTREAM else v for k, v in res.methods.items()}
    res.methods = {name: renamed[name] for name in order}
    return res, seconds


def _history_len(method: OfflineMethod) -> int:
    opts = getattr(method, "options", None)
    pc = getattr(opts, "profile_config", None)
    if pc is not None:
        return pc.history_len
    from recstream.encoders.profile import ProfileConfig

    return ProfileConfig().history_len
