"""Blend weights that tune themselves from the stream (online, no offline step).

The worker tests itself on every target event (:mod:`scoring.prequential`): the list a user
held just before a click or purchase either contains the item or not.  This module uses the
same tests to move the blend's weights.  Alongside the list it sends, the ranker keeps the
lists a small grid of *neighbouring* weightings would have sent (:meth:`WeightAdapter.grid`:
the weights in use, and the six moves of ``step`` of weight from one signal to another), and
each test credits every grid point with the NDCG@k gain it would have earned.  After each
*epoch* (``epoch`` target events of the partition) the weights move to the average of the
grid points, each weighted by ``exp(rate * (its gains - the best gains))``: exponentiated
gradient over the grid, so a direction that ranked the epoch's items higher pulls the weights
towards it, by at most ``step`` per epoch, and an epoch without evidence (no case, or equal
gains) leaves them where they are.

Each input partition has its own adapter, keyed by partition: its state moves with the
partition's other state (the worker persists it in a table with a changelog), and the
weights in use for a partition do not depend on which worker holds it, how many workers
share the partitions, or how the events were cut into micro-batches (epochs are counted in
the partition's events, and a snapshot is ranked with the weights of its epoch).

Pure code, no Kafka.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import orjson

from recstream.scoring.blend import SIGNALS, BlendWeights

__all__ = ["AdaptConfig", "AdaptFormatError", "DIRECTIONS", "WeightAdapter", "AdaptiveWeights"]

#: ``(G, 3)``: the grid's moves, in units of ``step``: none (the weights in use), then from
#: each signal to each other one (text, co-occurrence, popularity order).
DIRECTIONS: Final = np.array(
    [[0, 0, 0]] + [[1 if s == a else -1 if s == b else 0 for s in range(3)] for a in range(3) for b in range(3) if a != b],
    dtype=np.float64,
)
STATE_FORMAT: Final = "recstream-adaptive-weights"
STATE_VERSION: Final = 1


class AdaptFormatError(ValueError):
    """A stored adapter state is unreadable or of an unknown version."""


@dataclass(frozen=True, slots=True)
class AdaptConfig:
    """How the weights adapt.

    Attributes:
        step: weight moved from one signal to another by a grid point (the weights sum to 1).
        rate: how decisively an epoch's gains pull (``exp(rate * gain difference)``; 0:
            the weights never move).
        epoch: target events of a partition between two moves.
        k: the list length credited (NDCG@k).
    """

    step: float = 0.1
    rate: float = 1.0
    epoch: int = 200
    k: int = 10

    def __post_init__(self) -> None:
        if not (0 < self.step <= 0.5):
            raise ValueError(f"adaptation step: must be in (0, 0.5], got {self.step}")
        if not (math.isfinite(self.rate) and self.rate >= 0):
            raise ValueError(f"adaptation rate: must be finite and >= 0, got {self.rate}")
        if self.epoch < 1 or self.k < 1:
            raise ValueError(f"adaptation epoch and k: must be at least 1, got {self.epoch} and {self.k}")


@dataclass(slots=True)
class WeightAdapter:
    """One partition's weights in use and the gains of its grid over the current epoch."""

    weights: np.ndarray  # (3,) float64, >= 0, sums to 1
    gains: np.ndarray = field(default_factory=lambda: np.zeros(len(DIRECTIONS)))
    cases: int = 0  # tests credited in the current epoch
    targets: int = 0  # target events in the current epoch
    epochs: int = 0  # epochs completed
    _grid: tuple[float, np.ndarray] | None = field(default=None, repr=False, compare=False)  # (step, grid) of these weights

    @classmethod
    def start(cls, weights: BlendWeights) -> WeightAdapter:
        w = np.asarray(weights.as_tuple(), dtype=np.float64)
        return cls(w / w.sum())

    def grid(self, step: float) -> np.ndarray:
        """``(G, 3)`` float64: the weights in use, then the six moves (a move takes at most
        what the giving signal has, so every point has non-negative weights summing to 1).
        Kept until the weights move (read-only)."""
        if self._grid is not None and self._grid[0] == step:
            return self._grid[1]
        out = np.repeat(self.weights[None, :], len(DIRECTIONS), axis=0)
        for g, d in enumerate(DIRECTIONS[1:], start=1):
            a, b = int(np.argmax(d)), int(np.argmin(d))
            moved = min(step, self.weights[b])
            out[g, a] += moved
            out[g, b] -= moved
        out.flags.writeable = False
        self._grid = (step, out)
        return out

    def credit(self, gains: np.ndarray) -> None:
        """One test: the NDCG gain each grid point's list would have earned."""
        self.gains += gains
        self.cases += 1

    def target(self) -> None:
        """A target event of the partition was applied (the caller ends the epoch after
        its ``epoch``-th: :meth:`end_epoch`)."""
        self.targets += 1

    def end_epoch(self, config: AdaptConfig) -> None:
        """Move to the gain-weighted average of the grid and start a new epoch."""
        if self.cases and config.rate > 0 and float(np.ptp(self.gains)) > 0:
            pi = np.exp(config.rate * (self.gains - self.gains.max()))
            pi /= pi.sum()
            w = pi @ self.grid(config.step)
            w = np.clip(w, 0.0, None)
            self.weights = w / w.sum()
            self._grid = None
        self.gains = np.zeros(len(DIRECTIONS))
        self.cases = 0
        self.targets = 0
        self.epochs += 1

    def blend_weights(self, normalization: str = "zscore") -> BlendWeights:
        t, c, p = (round(float(x), 6) for x in self.weights)
        return BlendWeights(t, c, p, normalization)

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "weights": dict(zip(SIGNALS, map(float, self.weights))),
            "gains": [float(g) for g in self.gains], "cases": self.cases, "targets": self.targets, "epochs": self.epochs,
        })  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> WeightAdapter:
        try:
            doc = orjson.loads(bytes(data))
            if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
                raise AdaptFormatError("not an adaptive weights state")
            if doc.get("version") != STATE_VERSION:
                raise AdaptFormatError(f"adaptive weights state version {doc.get('version')!r}, this code reads {STATE_VERSION}")
            w = np.array([float(doc["weights"][s]) for s in SIGNALS], dtype=np.float64)
            gains = np.array([float(g) for g in doc["gains"]], dtype=np.float64)
            if len(gains) != len(DIRECTIONS) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise AdaptFormatError("adaptive weights state out of range")
            return cls(w / w.sum(), gains, int(doc["cases"]), int(doc["targets"]), int(doc["epochs"]))
        except AdaptFormatError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise AdaptFormatError(f"unreadable adaptive weights state: {exc}") from exc


class AdaptiveWeights:
    """The adapters of every partition, started from ``initial`` weights."""

    def __init__(self, initial: BlendWeights, config: AdaptConfig | None = None) -> None:
        self.initial = initial
        self.config = config or AdaptConfig()
        self.adapters: dict[int, WeightAdapter] = {}
        #: partitions whose adapter changed since the caller last cleared it (to persist)
        self.touched: set[int] = set()
        #: ``(weights, epochs)`` by partition as of the last :meth:`publish` (a new mapping
        #: each time: safe to read from another thread)
        self.published: dict[int, tuple[tuple[float, float, float], int]] = {}

    def __getitem__(self, partition: int) -> WeightAdapter:
        a = self.adapters.get(partition)
        if a is None:
            a = self.adapters[partition] = WeightAdapter.start(self.initial)
        return a

    def grid(self, partition: int) -> np.ndarray:
        return self[partition].grid(self.config.step)

    def credit(self, partition: int, gains: np.ndarray) -> None:
        self[partition].credit(gains)
        self.touched.add(partition)

    def target(self, partition: int) -> None:
        self[partition].target()
        self.touched.add(partition)

    def targets_left(self, partition: int) -> int:
        """Target events until the partition's epoch ends."""
        a = self.adapters.get(partition)
        return self.config.epoch - (a.targets if a is not None else 0)

    def end_epoch(self, partition: int) -> None:
        self[partition].end_epoch(self.config)
        self.touched.add(partition)

    def publish(self) -> None:
        self.published = {p: (tuple(float(x) for x in a.weights), a.epochs) for p, a in sorted(self.adapters.items())}  # type: ignore[misc]

    def describe(self) -> str:
        """The published weights, one partition after another: ``0: text .41 co .50 pop .09 (12 epochs)``."""
        return ", ".join(f"{p}: text {w[0]:.2f} co {w[1]:.2f} pop {w[2]:.2f} ({n} epochs)" for p, (w, n) in self.published.items())

    def snapshot(self) -> dict[int, tuple[float, float, float]]:
        """The weights in use by partition (text, co-occurrence, popularity)."""
        return {p: tuple(float(x) for x in a.weights) for p, a in sorted(self.adapters.items())}  # type: ignore[misc]
