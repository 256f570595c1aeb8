"""Approximate top-k for large catalogs: an IVF index kept beside the exact item matrix.

The scoring benchmark (``docs/benchmarks.md``, Scoring) measured exact scoring on a 2-core CPU at
about 3·10⁷ item-scores/s: one user costs ~50 ms at 100k items and ~0.3 s at 1M, while a faiss
IVF-flat index with nprobe 16 answers 12-54x faster at recall@10 0.96. On a GPU the exact fp16
matmul stays ahead of a CPU index at every size measured (1M items: 1,273 vs 505 users/s one at a
time). Hence the worker's ``--index`` option:

* ``exact``: :class:`scoring.topk.ItemMatrix` only;
* ``ivf``: :class:`IVFItemMatrix` (needs ``faiss-cpu``, the ``ann`` extra), searching the IVF
  index once the catalog holds at least ``min_items`` live items, exactly below that;
* ``auto`` (default): ``ivf`` with ``min_items`` = :data:`DEFAULT_MIN_ITEMS` (100k) on the CPU
  when faiss is installed, ``exact`` on CUDA or without faiss.

:class:`IVFItemMatrix` *is* an :class:`ItemMatrix` (the exact rows stay the source of truth: they
serve the ``because`` explanations and rebuild the index), and mirrors every ``upsert`` and
``remove`` into a faiss ``IndexIVFFlat`` (inner product, ids = matrix rows). The index is built
when the catalog first reaches ``min_items`` (``nlist`` = round(√N) lists, k-means on
``train_per_list`` points per list) and rebuilt when the catalog has grown by ``retrain_growth``
times since (the centroids then describe a different catalog). :func:`scoring.topk.score_topk`
asks it for the candidate rows and falls back to the exact path for any query that the index
leaves short of ``k`` admissible items, so exclusions never shorten a list.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import torch

from recstream.scoring.topk import ItemMatrix

__all__ = [
    "DEFAULT_MIN_ITEMS",
    "DEFAULT_NPROBE",
    "INDEX_KINDS",
    "AnnUnavailableError",
    "IVFItemMatrix",
    "make_item_matrix",
    "resolve_index",
]

log = logging.getLogger("recstream.ann")

INDEX_KINDS: Final = ("auto", "exact", "ivf")
#: Live items from which ``auto``/``ivf`` search the IVF index (below: exact).
DEFAULT_MIN_ITEMS: Final = 100_000
#: Lists probed per query: recall@10 0.96 at 1M items with nlist 1,000 (docs/benchmarks.md).
DEFAULT_NPROBE: Final = 16


class AnnUnavailableError(RuntimeError):
    """``--index ivf`` was asked for but faiss is not installed."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise AnnUnavailableError("--index ivf needs faiss: pip install 'recstream[ann]' (faiss-cpu), or use --index exact") from exc
    return faiss


def faiss_available() -> bool:
    try:
        _faiss()
    except AnnUnavailableError:
        return False
    return True


def resolve_index(kind: str, device: torch.device | str) -> str:
    """``exact`` or ``ivf`` for an ``--index`` value on a device (see the module docstring)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index: must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    if kind == "auto":
        return "ivf" if torch.device(device).type == "cpu" and faiss_available() else "exact"
    if kind == "ivf":
        _faiss()  # a clear error now rather than at the 100,000th item
    return kind


def make_item_matrix(
    dim: int,
    device: torch.device | str,
    index: str = "auto",
    *,
    min_items: int = DEFAULT_MIN_ITEMS,
    nprobe: int = DEFAULT_NPROBE,
) -> ItemMatrix:
    """The worker's item matrix for ``--index`` (``auto``, ``exact`` or ``ivf``)."""
    if resolve_index(index, device) == "exact":
        log.info("scoring index: exact (--index %s on %s)", index, device)
        return ItemMatrix(dim, device)
    log.info("scoring index: IVF from %d items, nprobe %d, exact below (--index %s)", min_items, nprobe, index)
    return IVFItemMatrix(dim, device, min_items=min_items, nprobe=nprobe)


class IVFItemMatrix(ItemMatrix):
    """An :class:`ItemMatrix` with a faiss IVF-flat index over its live rows.

    Args:
        dim, device, dtype, capacity, normalize: as :class:`ItemMatrix`.
        min_items: live items from which the index is built and searched.
        nprobe: inverted lists visited per query.
        nlist: inverted lists; default round(√N) at build time.
        train_per_list: k-means training points per list (at most N).
        retrain_growth: rebuild when the live catalog exceeds this many times its size at the
            last build.
        seed: k-means and training-sample seed (deterministic builds).
    """

    def __init__(
        self,
        dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        *,
        capacity: int = 1024,
        normalize: bool = True,
        min_items: int = DEFAULT_MIN_ITEMS,
        nprobe: int = DEFAULT_NPROBE,
        nlist: int | None = None,
        train_per_list: int = 40,
        retrain_growth: float = 2.0,
        seed: int = 1234,
    ) -> None:
        self._faiss = _faiss()
        if min_items < 1:
            raise ValueError(f"min_items must be at least 1, got {min_items}")
        if nprobe < 1:
            raise ValueError(f"nprobe must be at least 1, got {nprobe}")
        if nlist is not None and nlist < 1:
            raise ValueError(f"nlist must be at least 1, got {nlist}")
        if train_per_list < 1:
            raise ValueError(f"train_per_list must be at least 1, got {train_per_list}")
        if not retrain_growth > 1.0:
            raise ValueError(f"retrain_growth must be above 1, got {retrain_growth}")
        self.min_items = min_items
        self.nprobe = nprobe
        self.nlist = nlist
        self.train_per_list = train_per_list
        self.retrain_growth = retrain_growth
        self.seed = seed
        self._index: Any = None
        self._built_size = 0
        self.builds = 0
        self._moments: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(dim, device, dtype, capacity=capacity, normalize=normalize)

    # ------------------------------------------------------------------ state
    @property
    def approximate(self) -> bool:
        """Whether :meth:`search` is in use (the catalog reached ``min_items``)."""
        return self._index is not None

    @property
    def index_lists(self) -> int:
        return int(self._index.nlist) if self._index is not None else 0

    def _alloc(self, capacity: int) -> None:
        super()._alloc(capacity)
        self._index = None
        self._built_size = 0
        self._moments = None

    def text_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S, G)``, float64 on the CPU: the sum of the live rows' vectors ``(dim,)`` and of
        their outer products ``(dim, dim)``, so that a query's cosines with every item sum to
        ``q . S`` and their squares to ``q G q`` without scoring the catalog (the two-stage
        blend's z-scores, :func:`scoring.blend.candidate_blend_topk`).  Computed on first use
        (and again after each index build), then kept up to date by :meth:`upsert` and
        :meth:`remove`; do not modify."""
        if self._moments is None:
            s = torch.zeros(self.dim, dtype=torch.float64)
            g = torch.zeros((self.dim, self.dim), dtype=torch.float64)
            live = np.flatnonzero(self.valid.cpu().numpy())
            for start in range(0, len(live), 8192):
                v = self._data[torch.as_tensor(live[start : start + 8192], device=self.device)].to(device="cpu", dtype=torch.float32)
                s += v.sum(dim=0, dtype=torch.float64)
                g += (v.T @ v).double()  # float32 products of 8,192 rows, summed in float64
            self._moments = (s, g)
        return self._moments

    def _move_moments(self, rows: Sequence[int], sign: float) -> None:
        """Add (``sign`` 1) or take out (-1) the rows' vectors from :meth:`text_moments`."""
        if self._moments is None or not len(rows):
            return
        v = self._data[torch.as_tensor(list(rows), dtype=torch.long, device=self.device)].to(device="cpu", dtype=torch.float64)
        s, g = self._moments
        s += sign * v.sum(dim=0)
        g += sign * (v.T @ v)

    def _rows_f32(self, rows: np.ndarray) -> np.ndarray:
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        return np.ascontiguousarray(self._data[idx].to(device="cpu", dtype=torch.float32).numpy())

    def _build(self) -> None:
        faiss = self._faiss
        live = np.flatnonzero(self.valid.cpu().numpy()).astype(np.int64)
        n = len(live)
        nlist = self.nlist or max(1, round(math.sqrt(n)))
        nlist = min(nlist, n)
        rng = np.random.default_rng(self.seed)
        sample = live if n <= nlist * self.train_per_list else rng.choice(live, nlist * self.train_per_list, replace=False)
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = self.seed
        index.train(self._rows_f32(np.sort(sample)))
        for start in range(0, n, 65_536):
            chunk = live[start : start + 65_536]
            index.add_with_ids(self._rows_f32(chunk), chunk)
        index.nprobe = min(self.nprobe, nlist)
        self._index = index
        self._built_size = n
        self._moments = None  # recomputed when next asked for (no drift from the updates)
        self.builds += 1
        log.info("IVF index built over %d items: %d lists, nprobe %d", n, nlist, index.nprobe)

    def _maybe_build(self) -> None:
        n = len(self)
        if n < self.min_items:
            if self._index is not None:  # shrank below the threshold: exact again
                self._index = None
                self._built_size = 0
            return
        if self._index is None or n > self.retrain_growth * self._built_size:
            self._build()

    # ------------------------------------------------------------------ mutation
    def upsert(self, ids: Sequence[str], vecs: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> None:
        if isinstance(ids, str):
            ids = [ids]
        if self._moments is not None:  # an update takes the old vector out
            self._move_moments([r for r in (self.row(i) for i in dict.fromkeys(ids)) if r is not None], -1.0)
        super().upsert(ids, vecs)
        if self._moments is not None and ids:
            self._move_moments(self.rows_of(list(dict.fromkeys(ids))), 1.0)
        if self._index is not None and ids:
            rows = np.asarray(self.rows_of(list(dict.fromkeys(ids))), dtype=np.int64)
            self._index.remove_ids(rows)  # an update replaces the old vector
            self._index.add_with_ids(self._rows_f32(rows), rows)
        self._maybe_build()

    def remove(self, ids: Sequence[str] | str) -> int:
        if isinstance(ids, str):
            ids = [ids]
        rows = np.asarray([r for r in (self.row(i) for i in dict.fromkeys(ids)) if r is not None], dtype=np.int64)
        self._move_moments(rows.tolist(), -1.0)
        removed = super().remove(ids)
        if self._index is not None and len(rows):
            self._index.remove_ids(rows)
        self._maybe_build()
        return removed

    # ------------------------------------------------------------------ search
    def search(self, queries: torch.Tensor, kk: int) -> tuple[list[list[float]], list[list[int]]]:
        """The ``kk`` best (score, row) per query from the index; missing slots have row -1."""
        if self._index is None:
            raise RuntimeError("the IVF index is not built (fewer than min_items items); use the exact path")
        q = np.ascontiguousarray(queries.detach().to(device="cpu", dtype=torch.float32).numpy())
        vals, rows = self._index.search(q, kk)
        return vals.tolist(), rows.tolist()
