"""Item embedding matrix on the device and batched exact top-k scoring.

:class:`ItemMatrix` keeps every catalog item's embedding as a row of one dense
``(capacity, dim)`` tensor, with an ``id -> row`` dict, a ``row -> id`` list, a
validity mask and a free-list of removed rows.  Capacity grows geometrically, so
upserts are amortized O(1) per row.

:func:`score_topk` scores a batch of user queries against all live rows with one
matmul, sets each query's excluded items to -inf in that score matrix, takes one
``torch.topk`` of ``k``, and explains each recommendation with the most similar item
of the user's history (one padded ``bmm`` for the batch).
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Iterator, Sequence
from functools import partial
from itertools import chain
from typing import TypeAlias, cast

import numpy as np
import torch

from recstream.scoring.records import RecItem

__all__ = ["ItemMatrix", "Recommendation", "TopK", "default_dtype", "score_topk"]

#: Rows normalized and written at a time by :meth:`ItemMatrix.upsert`.
UPSERT_SLICE = 8192


#: One scored item, a named tuple ``(item_id, score, because)``: the record contract's
#: :class:`~scoring.records.RecItem` itself (one type, also under this name).
Recommendation: TypeAlias = RecItem


#: The result for one query: best first.
TopK: TypeAlias = list[Recommendation]


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


class ItemMatrix:
    """Dense item embeddings on a device, addressable by item id.

    Args:
        dim: embedding dimension.
        device: torch device (name or object) the matrix lives on.
        dtype: storage dtype; default fp16 on CUDA, fp32 otherwise.
        capacity: initial number of rows allocated.
        normalize: L2-normalize vectors on upsert (so dot products are cosines);
            all-zero vectors stay zero.
    """

    def __init__(
        self,
        dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        *,
        capacity: int = 1024,
        normalize: bool = True,
    ) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self._dim = dim
        self._device = torch.device(device)
        self._dtype = dtype if dtype is not None else default_dtype(self._device)
        self._initial_capacity = max(1, int(capacity))
        self._normalize = normalize
        self._alloc(self._initial_capacity)

    def _alloc(self, capacity: int) -> None:
        self._data = torch.zeros((capacity, self._dim), dtype=self._dtype, device=self._device)
        self._valid = torch.zeros(capacity, dtype=torch.bool, device=self._device)
        self._id_to_row: dict[str, int] = {}
        self._row_to_id: list[str | None] = []  # length == high-water mark of used rows
        self._free: list[int] = []
        # bumped whenever an id gets or loses a row (a cache keyed by row, such as the
        # co-occurrence scorer's, is stale once it moves)
        self.generation = getattr(self, "generation", 0) + 1

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def capacity(self) -> int:
        """Rows allocated."""
        return int(self._data.shape[0])

    @property
    def rows_used(self) -> int:
        """High-water mark: rows ``[0, rows_used)`` have ever held an item."""
        return len(self._row_to_id)

    @property
    def data(self) -> torch.Tensor:
        """The used part of the storage, ``(rows_used, dim)`` (includes freed rows)."""
        return self._data[: self.rows_used]

    @property
    def valid(self) -> torch.Tensor:
        """Bool mask over :attr:`data` rows that hold a live item."""
        return self._valid[: self.rows_used]

    def __len__(self) -> int:
        return len(self._id_to_row)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._id_to_row

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def __repr__(self) -> str:
        return f"ItemMatrix(len={len(self)}, dim={self._dim}, device={str(self._device)!r}, dtype={self._dtype}, capacity={self.capacity})"

    def ids(self) -> list[str]:
        """Live item ids, in row order."""
        return [i for i in self._row_to_id if i is not None]

    def row(self, item_id: str) -> int | None:
        """Row index of ``item_id``, or ``None``."""
        return self._id_to_row.get(item_id)

    def id_at(self, row: int) -> str | None:
        """Item id stored in ``row`` (``None`` for a free row)."""
        return self._row_to_id[row] if 0 <= row < len(self._row_to_id) else None

    # ------------------------------------------------------------------ mutation
    def upsert(self, ids: Sequence[str], vecs: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> None:
        """Insert new items and overwrite existing ones.

        ``vecs`` is ``(len(ids), dim)`` (a single ``(dim,)`` vector is accepted for
        one id), or a sequence of ``len(ids)`` vectors of shape ``(dim,)``, which are
        stacked here a slice at a time.  When an id repeats within one call, its last
        vector wins.  Rows are normalized and written :data:`UPSERT_SLICE` at a time, so
        a large upsert (a catalog rebuilt after a restart) makes no full-size copies.
        """
        if isinstance(ids, str):
            ids = [ids]
        t: torch.Tensor | None = None
        seq: Sequence[np.ndarray] | None = None
        if isinstance(vecs, (list, tuple)) and vecs and np.ndim(vecs[0]) == 1:  # a sequence of vectors
            seq = vecs
            for i, v in enumerate(seq):
                if np.shape(v) != (self._dim,):
                    raise ValueError(f"vector {i} has shape {np.shape(v)}, expected ({self._dim},)")
            n = len(seq)
        else:
            t = self._as_tensor(vecs)
            if t.ndim == 1:
                t = t.unsqueeze(0)
            if t.ndim != 2 or t.shape[1] != self._dim:
                raise ValueError(f"vectors have shape {tuple(t.shape)}, expected (n, {self._dim})")
            n = int(t.shape[0])
        if n != len(ids):
            raise ValueError(f"{len(ids)} ids but {n} vectors")
        if not ids:
            return
        # Last occurrence of each id wins.
        last: dict[str, int] = {}
        for i, item_id in enumerate(ids):
            if not isinstance(item_id, str):
                raise TypeError(f"item ids must be str, got {type(item_id).__name__}")
            last[item_id] = i
        src = list(last.values())
        new = [item_id for item_id in last if item_id not in self._id_to_row]
        fresh = max(0, len(new) - len(self._free))
        self._reserve(len(self._row_to_id) + fresh)

        rows: list[int] = []
        for item_id in last:
            row = self._id_to_row.get(item_id)
            if row is None:
                if self._free:
                    row = self._free.pop()
                    self._row_to_id[row] = item_id
                else:
                    row = len(self._row_to_id)
                    self._row_to_id.append(item_id)
                self._id_to_row[item_id] = row
                self.generation += 1
            rows.append(row)

        row_idx = torch.tensor(rows, dtype=torch.long, device=self._device)
        dense = len(src) == n  # no repeated id: source positions are 0..n-1
        for start in range(0, len(src), UPSERT_SLICE):
            stop = min(start + UPSERT_SLICE, len(src))
            if seq is not None:
                part = _to_tensor(np.stack([np.asarray(seq[i], dtype=np.float32) for i in src[start:stop]]))
            elif dense:
                part = cast(torch.Tensor, t)[start:stop]  # t is set when seq is None
            else:
                full = cast(torch.Tensor, t)
                part = full[torch.tensor(src[start:stop], device=full.device)]
            part = part.to(device=self._device, dtype=torch.float32)
            if self._normalize:
                part = torch.nn.functional.normalize(part, p=2, dim=1)
            self._data[row_idx[start:stop]] = part.to(self._dtype)
        self._valid[row_idx] = True

    def remove(self, ids: Sequence[str] | str) -> int:
        """Remove items (unknown ids are ignored); returns how many were removed.

        Their rows go to a free-list that later upserts reuse.
        """
        if isinstance(ids, str):
            ids = [ids]
        rows: list[int] = []
        for item_id in dict.fromkeys(ids):
            row = self._id_to_row.pop(item_id, None)
            if row is None:
                continue
            self._row_to_id[row] = None
            self._free.append(row)
            self.generation += 1
            rows.append(row)
        if rows:
            row_idx = torch.tensor(rows, dtype=torch.long, device=self._device)
            self._valid[row_idx] = False
            self._data[row_idx] = 0
        return len(rows)

    def clear(self) -> None:
        """Remove every item and shrink back to the initial capacity."""
        self._alloc(self._initial_capacity)

    def reserve(self, rows: int) -> None:
        """Allocate room for ``rows`` items in all, exactly (e.g. before loading a catalog of
        known size), so that upserts up to that size do not reallocate and copy the storage."""
        if rows < 0:
            raise ValueError(f"rows must be non-negative, got {rows}")
        if rows > self.capacity:
            self._grow(rows)

    def _reserve(self, rows: int) -> None:
        cap = self.capacity
        if rows <= cap:
            return
        self._grow(max(rows, cap * 2))

    def _grow(self, new_cap: int) -> None:
        used = len(self._row_to_id)
        data = torch.zeros((new_cap, self._dim), dtype=self._dtype, device=self._device)
        valid = torch.zeros(new_cap, dtype=torch.bool, device=self._device)
        data[:used] = self._data[:used]
        valid[:used] = self._valid[:used]
        self._data, self._valid = data, valid

    def _as_tensor(self, vecs: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        return _to_tensor(vecs)

    # ------------------------------------------------------------------ access
    def rows_of(self, ids: Sequence[str]) -> list[int]:
        """Rows of ``ids``; raises ``KeyError`` for an unknown id."""
        try:
            return [self._id_to_row[i] for i in ids]
        except KeyError as exc:
            raise KeyError(f"item {exc.args[0]!r} is not in the matrix") from None

    def get(self, ids: Sequence[str]) -> torch.Tensor:
        """Stored vectors of ``ids`` as float32 ``(len(ids), dim)`` on :attr:`device`.

        Raises ``KeyError`` for an unknown id.
        """
        if isinstance(ids, str):
            ids = [ids]
        rows = torch.tensor(self.rows_of(ids), dtype=torch.long, device=self._device)
        return self._data[rows].float()

    def vector(self, item_id: str) -> np.ndarray | None:
        """Stored vector of one item as float32 numpy on the CPU, or ``None``."""
        row = self._id_to_row.get(item_id)
        if row is None:
            return None
        return self._data[row].to(device="cpu", dtype=torch.float32, copy=True).numpy()


def _to_tensor(x: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    arr = np.asarray(x, dtype=np.float32)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def score_topk(
    matrix: ItemMatrix,
    queries: torch.Tensor | np.ndarray,
    k: int,
    exclude: Sequence[Collection[str]],
    history: Sequence[Sequence[str]] | None = None,
) -> list[TopK]:
    """Exact top-``k`` items per query by dot product (cosine for unit vectors).

    Args:
        matrix: the catalog.
        queries: ``(B, dim)`` query vectors (used as given; pass unit vectors).
        k: results wanted per query.
        exclude: per query, ids never to return (e.g. already purchased).
        history: per query, the user's history item ids; each recommendation's
            ``because`` is the history item (present in the matrix, other than the
            recommended item itself) with the highest cosine to it, or ``None``.

    Returns:
        Per query, up to ``k`` :class:`Recommendation` best first.  Fewer when the
        catalog minus exclusions is smaller than ``k``.  ``[]`` for an empty batch.
    """
    q = _to_tensor(queries)
    if q.ndim == 1 and q.shape[0] == matrix.dim:
        q = q.unsqueeze(0)
    if q.ndim != 2 or (q.shape[0] > 0 and q.shape[1] != matrix.dim):
        raise ValueError(f"queries have shape {tuple(q.shape)}, expected (B, {matrix.dim})")
    batch = int(q.shape[0])
    if len(exclude) != batch:
        raise ValueError(f"exclude has {len(exclude)} entries for {batch} queries")
    if history is not None and len(history) != batch:
        raise ValueError(f"history has {len(history)} entries for {batch} queries")
    if batch == 0:
        return []
    live = len(matrix)
    if k <= 0 or live == 0:
        return [[] for _ in range(batch)]

    q = q.detach().to(device=matrix.device, dtype=matrix.dtype)
    # An approximate index (scoring.ann.IVFItemMatrix, once its catalog is large) proposes the
    # candidates; a query it leaves short of k admissible items is answered exactly below.
    if getattr(matrix, "approximate", False):
        picked_rows, picked = _approximate_topk(matrix, q, k, exclude, live)
    else:
        picked_rows, picked = _exact_topk(matrix, q, k, exclude)
    whys = _because(matrix, picked_rows, history) if history is not None else None
    new = tuple.__new__  # Recommendation(*t) without the NamedTuple's Python-level __new__
    results: list[TopK] = []
    for b, (ids, scores) in enumerate(picked):
        if whys is None:
            results.append([new(Recommendation, (i, s, None)) for i, s in zip(ids, scores)])
        else:
            results.append([new(Recommendation, t) for t in zip(ids, scores, whys[b])])
    return results


def _exclusion_rows(matrix: ItemMatrix, exclude: Sequence[Collection[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(query, row) of every excluded item that is in the matrix, as two int64 arrays."""
    get = matrix._id_to_row.get
    found = [list(filter(_not_none, map(get, excl))) for excl in exclude]
    counts = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
    rows = np.fromiter(chain.from_iterable(found), dtype=np.int64, count=int(counts.sum()))
    return np.repeat(np.arange(len(found), dtype=np.int64), counts), rows


_not_none = partial(operator.is_not, None)  # filter(_not_none, xs): the xs that are not None (row 0 included)


def _exact_topk(matrix: ItemMatrix, q: torch.Tensor, k: int, exclude: Sequence[Collection[str]]) -> tuple[list[list[int]], list[tuple[list[str], list[float]]]]:
    """Per query, the rows and (ids, scores) of its ``k`` best admissible items, best first.

    One matmul for the batch; free rows and each query's excluded items are set to -inf in
    the score matrix itself, so one ``torch.topk`` of ``k`` needs no head-room and no
    filtering in Python (only the -inf tail of a query with fewer than ``k`` admissible items
    is cut).
    """
    ex_q, ex_rows = _exclusion_rows(matrix, exclude)
    row_to_id = matrix._row_to_id
    with torch.inference_mode():
        scores = q @ matrix.data.T  # (B, rows_used)
        scores.masked_fill_(~matrix.valid, float("-inf"))
        if len(ex_rows):
            dev = scores.device
            scores[torch.from_numpy(ex_q).to(dev), torch.from_numpy(ex_rows).to(dev)] = float("-inf")
        top_vals, top_rows = torch.topk(scores, min(k, int(scores.shape[1])), dim=1, largest=True, sorted=True)
        n_ok = (top_vals != float("-inf")).sum(dim=1).cpu().tolist()
        vals_l = top_vals.float().cpu().tolist()
        rows_l = top_rows.cpu().tolist()
    picked_rows: list[list[int]] = []
    picked: list[tuple[list[str], list[float]]] = []
    for rows, vals, n in zip(rows_l, vals_l, n_ok):
        if n < len(rows):  # sorted: the -inf (free or excluded) rows are the tail
            rows, vals = rows[:n], vals[:n]
        picked_rows.append(rows)
        picked.append(([row_to_id[r] for r in rows], vals))
    return picked_rows, picked


def _approximate_topk(
    matrix: ItemMatrix, q: torch.Tensor, k: int, exclude: Sequence[Collection[str]], live: int
) -> tuple[list[list[int]], list[tuple[list[str], list[float]]]]:
    """:func:`_exact_topk` from an approximate index's candidates, with head-room for the
    exclusions; a query left short of ``k`` admissible items is answered exactly."""
    n_excl = [sum(1 for i in excl if i in matrix) for excl in exclude]
    kk = min(k + max(n_excl), live)
    vals, rows = matrix.search(q, kk)  # type: ignore[attr-defined]  # an ANN matrix (scoring/ann.py)
    picked_rows: list[list[int]] = []
    picked: list[tuple[list[str], list[float]]] = []
    short: list[int] = []
    for b in range(len(exclude)):
        out_rows, out = _admissible(matrix, vals[b], rows[b], exclude[b], k)
        if len(out) < min(k, live - n_excl[b]):
            short.append(b)
        picked_rows.append(out_rows)
        picked.append(([i for i, _ in out], [s for _, s in out]))
    if short:
        exact_rows, exact = _exact_topk(matrix, q[short], k, [exclude[b] for b in short])
        for j, b in enumerate(short):
            picked_rows[b], picked[b] = exact_rows[j], exact[j]
    return picked_rows, picked


def _admissible(matrix: ItemMatrix, vals: Sequence[float], rows: Sequence[int], excl: Collection[str], k: int) -> tuple[list[int], list[tuple[str, float]]]:
    """The first ``k`` candidates that are live, scored and not excluded: (rows, (id, score))."""
    out_rows: list[int] = []
    out: list[tuple[str, float]] = []
    for v, r in zip(vals, rows):
        item_id = matrix.id_at(r)
        if item_id is None or v == float("-inf") or item_id in excl:
            continue
        out_rows.append(r)
        out.append((item_id, v))
        if len(out) == k:
            break
    return out_rows, out


def _because(matrix: ItemMatrix, picked_rows: list[list[int]], history: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """For every picked row, the most similar history row of the same query.

    All queries are done in one padded ``bmm``: ``(B, R, d) @ (B, d, H) -> (B, R, H)``,
    with padding and "history item == recommended item" pairs masked out.  The padded index
    arrays are built with numpy from the flattened rows (no per-query tensor operations),
    and the best history row of each pick is gathered on the device.
    """
    get = matrix._id_to_row.get
    row_to_id = matrix._row_to_id
    # each query's history rows in first-seen order, items not in the matrix dropped
    hist_rows: list[list[int]] = []
    for h in history:
        rows = dict.fromkeys(map(get, h))
        rows.pop(None, None)
        hist_rows.append(list(rows))  # type: ignore[arg-type]
    out: list[list[str | None]] = [[None] * len(p) for p in picked_rows]
    active = [b for b in range(len(picked_rows)) if picked_rows[b] and hist_rows[b]]
    if not active:
        return out
    rec_idx, rec_ok = _padded([picked_rows[b] for b in active])
    hist_idx, hist_ok = _padded([hist_rows[b] for b in active])
    dev = matrix.device
    data = matrix.data
    with torch.inference_mode():
        rec_t = torch.from_numpy(rec_idx).to(dev)
        hist_t = torch.from_numpy(hist_idx).to(dev)
        # index_select of the flattened indices: a few times faster than data[idx] on the CPU
        rec = data.index_select(0, rec_t.view(-1)).view(*rec_t.shape, -1).float()  # (A, R, d)
        hist = data.index_select(0, hist_t.view(-1)).view(*hist_t.shape, -1).float()  # (A, H, d)
        sims = torch.bmm(rec, hist.transpose(1, 2))  # (A, R, H)
        mask = torch.from_numpy(hist_ok).to(dev).unsqueeze(1) & (rec_t.unsqueeze(2) != hist_t.unsqueeze(1))
        sims.masked_fill_(~mask, float("-inf"))
        best_val, best = sims.max(dim=2)
        best_rows = hist_t.gather(1, best)  # (A, R): the history row of each pick's best
        best_rows.masked_fill_(~torch.isfinite(best_val), -1)
        best_l = best_rows.cpu().tolist()
    for a, b in enumerate(active):
        n = len(picked_rows[b])
        out[b] = [row_to_id[r] if r >= 0 else None for r in best_l[a][:n]]
    return out


def explain(matrix: ItemMatrix, picked: Sequence[Sequence[str]], history: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """``because`` for lists ranked elsewhere (the blend): for each item of ``picked[b]``,
    the item of ``history[b]`` most similar to it (``None`` when there is none)."""
    rows = [[r for r in (matrix.row(i) for i in items) if r is not None] for items in picked]
    whys = _because(matrix, rows, history)
    out: list[list[str | None]] = []
    for items, why in zip(picked, whys):
        it = iter(why)
        out.append([next(it) if item in matrix else None for item in items])
    return out


def _padded(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Non-empty int lists as one zero-padded ``(len(lists), longest)`` int64 array and the
    mask of its real entries."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    ok = np.arange(int(lengths.max())) < lengths[:, None]
    idx = np.zeros(ok.shape, dtype=np.int64)
    idx[ok] = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum()))
    return idx, ok
