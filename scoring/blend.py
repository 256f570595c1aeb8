"""Hybrid scoring: text similarity, item co-occurrence and decayed popularity, blended.

Pure code, no Kafka.  For a batch of ``B`` users and the ``N`` rows of the item matrix, the
three signals are ``(B, N)`` score matrices (popularity may be one ``(N,)`` vector shared
by every user):

* **text**: the cosine of the user's profile query with each item
  (``queries @ matrix.data.T``, :func:`text_scores`); a user without a usable profile
  gets zeros;
* **co-occurrence**: :class:`scoring.cooccurrence.CooccurrenceScorer`'s item-kNN scores
  of the user's recent positive history;
* **popularity**: ``log1p`` of the item's decayed event count at the scoring time
  (:func:`popularity_vector`), the same for every user.

Each signal is normalised *per user over that user's candidates* (every live item that is
not excluded), then the blend is ``w_text * text' + w_co * co' + w_pop * pop'``, and
:func:`blend_topk` takes the exact top-k (``torch.topk``) of the candidates.  Normalising
makes the weights scale-free: the three signals live on unrelated scales (cosines around
0.3-0.8, sums of similarities from 0 to several, log counts from 0 to ~8), and a
normalisation per user keeps one user's sharply peaked co-occurrence from being drowned by
another's.  Two normalisations (:data:`NORMALIZATIONS`):

* ``"zscore"``: ``(s - mean) / std`` over the candidates (0 for a signal that is constant
  over them, e.g. a user with no co-occurrence at all): a sparse signal such as
  co-occurrence gets large values on its few non-zero items, so it dominates the ranking
  where it has evidence and falls back to the others where it has none;
* ``"rank"``: the candidate's mid-rank among the candidates, scaled to ``[0, 1]``: robust
  to outliers, but it spreads the ties of a sparse signal evenly and keeps nothing of its
  strength.

Which is better is an empirical question; ``scoring.protocol``'s tuning measures both on a
validation window (``bench/reference_protocol.py`` reports the figures).

:class:`BlendWeights` holds the weights and the normalisation, validated, and is saved to /
loaded from a small versioned JSON file (:meth:`BlendWeights.save`,
:meth:`BlendWeights.load`) that ``recstream tune`` writes and the worker reads.
Exclusions are as in :class:`scoring.engine.Engine`: the items a user purchased always,
the items of their recent history by default (:func:`exclusion_set`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
import torch

from encoders.profile import UserProfile
from scoring.popularity import DecayedPopularity
from scoring.topk import ItemMatrix, Recommendation, TopK

__all__ = [
    "CONFIG_FORMAT",
    "CONFIG_VERSION",
    "DEFAULT_WEIGHTS",
    "EQUAL_WEIGHTS",
    "NORMALIZATIONS",
    "SIGNALS",
    "BlendConfigError",
    "BlendWeights",
    "blend_score_topk",
    "candidate_blend_topk",
    "blend_scores",
    "blend_topk",
    "candidate_mask",
    "exclusion_set",
    "normalize_scores",
    "popularity_vector",
    "text_scores",
]

SIGNALS: Final = ("text", "cooccurrence", "popularity")
NORMALIZATIONS: Final = ("zscore", "rank")
#: The ``"format"`` field of a weights file, and the version this code reads and writes.
CONFIG_FORMAT: Final = "recstream-blend-weights"
CONFIG_VERSION: Final = 1
# A signal whose spread over the candidates is below this fraction of its magnitude is
# constant up to float32 rounding: it is given no influence.
_REL_EPS: Final = 1e-5


class BlendConfigError(ValueError):
    """A blend weights file is unreadable, malformed or of an unknown version."""


@dataclass(frozen=True, slots=True)
class BlendWeights:
    """Weights of the three signals and the per-user normalisation.

    Weights are finite and ``>= 0``, not all zero; a ranking only depends on their ratios
    (see :meth:`normalized`).  A zero weight drops the signal.
    """

    text: float = 1.0
    cooccurrence: float = 1.0
    popularity: float = 1.0
    normalization: str = "zscore"

    def __post_init__(self) -> None:
        for name in SIGNALS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"weight {name} must be a number, got {v!r}")
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"weight {name} must be finite and >= 0, got {v!r}")
        if all(getattr(self, name) == 0 for name in SIGNALS):
            raise ValueError("at least one weight must be positive")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")

    def as_tuple(self) -> tuple[float, float, float]:
        """``(text, cooccurrence, popularity)``."""
        return (float(self.text), float(self.cooccurrence), float(self.popularity))

    def normalized(self) -> BlendWeights:
        """The same blend with weights summing to 1."""
        total = sum(self.as_tuple())
        if abs(total - 1.0) < 1e-9:
            return self
        t, c, p = (w / total for w in self.as_tuple())
        return BlendWeights(t, c, p, self.normalization)

    def label(self) -> str:
        t, c, p = self.normalized().as_tuple()
        return f"{self.normalization}(text={t:.3g}, co={c:.3g}, pop={p:.3g})"

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": {name: float(getattr(self, name)) for name in SIGNALS},
            "normalization": self.normalization,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> BlendWeights:
        """From :meth:`to_dict`'s form (missing weights are 0)."""
        weights = doc.get("weights")
        if not isinstance(weights, Mapping):
            raise BlendConfigError("blend weights: 'weights' must be an object with text, cooccurrence, popularity")
        unknown = sorted(set(weights) - set(SIGNALS))
        if unknown:
            raise BlendConfigError(f"blend weights: unknown signal(s) {unknown}; expected {list(SIGNALS)}")
        try:
            return cls(
                **{name: weights.get(name, 0.0) for name in SIGNALS},
                normalization=doc.get("normalization", "zscore"),
            )
        except ValueError as exc:
            raise BlendConfigError(f"blend weights: {exc}") from exc

    def save(self, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
        """Write ``{"format", "version", "weights", "normalization", "meta"}`` as JSON
        (atomically: a temporary file renamed over ``path``).  ``meta`` records where the
        weights come from (the tuning window, its metric...)."""
        path = Path(path)
        doc = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, **self.to_dict(), "meta": dict(meta or {})}
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> BlendWeights:
        """Read a file written by :meth:`save`; :class:`BlendConfigError` when it is not one."""
        path = Path(path)
        try:
            doc = orjson.loads(path.read_bytes())
        except OSError as exc:
            raise BlendConfigError(f"{path}: cannot read blend weights: {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise BlendConfigError(f"{path}: not JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != CONFIG_FORMAT:
            raise BlendConfigError(f"{path}: not a blend weights file (expected \"format\": \"{CONFIG_FORMAT}\")")
        if doc.get("version") != CONFIG_VERSION:
            raise BlendConfigError(
                f"{path}: unknown blend weights version {doc.get('version')!r} (this code reads version {CONFIG_VERSION})"
            )
        try:
            return cls.from_dict(doc)
        except BlendConfigError as exc:
            raise BlendConfigError(f"{path}: {exc}") from exc


#: The issue's "z-score blend of the three": equal weights after z-scoring.
EQUAL_WEIGHTS: Final = BlendWeights(1.0, 1.0, 1.0, "zscore")
#: The weights the worker ranks with when it is given none (``--ranker blend`` without
#: ``--blend FILE``).  Chosen on the validation windows of both datasets of the project's
#: measurements (ml-latest-small before 2016-03-22, Amazon 2018 Gift Cards before
#: 2017-10-29; never their test windows) as the point of ``recstream tune``'s z-score grid
#: with the best worst case: 0.956 of MovieLens' own best NDCG@10 and 0.965 of Gift Cards'
#: (each dataset's own best reaches only 0.885 and 0.941 on the other); docs/quality.md.
DEFAULT_WEIGHTS: Final = BlendWeights(0.4, 0.5, 0.1, "zscore")


# --------------------------------------------------------------------------- signals


def text_scores(matrix: ItemMatrix, queries: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(B, rows_used)`` float32 cosines of unit ``queries`` with the matrix rows (a zero
    query, for a user without a usable profile, gives zeros)."""
    q = torch.from_numpy(np.array(queries, dtype=np.float32)) if isinstance(queries, np.ndarray) else queries.detach()
    if q.ndim == 1:
        q = q.unsqueeze(0)
    if q.ndim != 2 or q.shape[1] != matrix.dim:
        raise ValueError(f"queries have shape {tuple(q.shape)}, expected (B, {matrix.dim})")
    with torch.inference_mode():
        return (q.to(device=matrix.device, dtype=matrix.dtype) @ matrix.data.T).float()


def popularity_vector(
    popularity: DecayedPopularity, ids: Sequence[str | None], now_ms: int
) -> np.ndarray:
    """``log1p`` of each item's decayed count at ``now_ms``, float32, in the order of ``ids``
    (``None`` and unknown items: 0)."""
    out = np.zeros(len(ids), dtype=np.float32)
    for r, item_id in enumerate(ids):
        if item_id is not None:
            c = popularity.score(item_id, now_ms)
            if c > 0.0:
                out[r] = math.log1p(c)
    return out


def exclusion_set(profile: UserProfile, exclude_seen: bool = True) -> frozenset[str]:
    """What a user's list must not contain, as in :class:`scoring.engine.Engine`: the items
    they purchased, plus (``exclude_seen``) the items of their recent history."""
    if exclude_seen:
        return frozenset(profile.purchased).union(h.item_id for h in profile.history)
    return frozenset(profile.purchased)


def candidate_mask(valid: torch.Tensor, exclude_rows: Sequence[Collection[int]]) -> torch.Tensor:
    """``(B, N)`` bool: the valid rows minus each user's excluded rows."""
    n = int(valid.shape[0])
    mask = valid.to(torch.bool).unsqueeze(0).repeat(len(exclude_rows), 1)
    for b, rows in enumerate(exclude_rows):
        if rows:
            idx = torch.as_tensor(list(rows), dtype=torch.long, device=mask.device)
            if int(idx.min()) < 0 or int(idx.max()) >= n:
                raise ValueError(f"excluded row out of range 0..{n - 1}")
            mask[b, idx] = False
    return mask


# --------------------------------------------------------------------------- normalisation


def _as_batch(scores: torch.Tensor | np.ndarray, shape: tuple[int, int], what: str) -> torch.Tensor:
    t = torch.as_tensor(scores)
    if t.ndim == 1:
        t = t.unsqueeze(0).expand(shape[0], -1)
    if tuple(t.shape) != shape:
        raise ValueError(f"{what} scores have shape {tuple(t.shape)}, expected {shape} or ({shape[1]},)")
    return t.float()


def normalize_scores(scores: torch.Tensor, candidates: torch.Tensor, method: str = "zscore") -> torch.Tensor:
    """Per row, ``scores`` normalised over the row's candidates (see the module doc);
    float32, 0 outside the candidates and for a signal that is constant over them.
    Candidate scores must be finite."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {method!r}")
    s = _as_batch(scores, tuple(candidates.shape), "the")  # type: ignore[arg-type]
    cand = candidates.to(torch.bool)
    s = torch.where(cand, s, torch.zeros((), dtype=s.dtype))
    if not bool(torch.isfinite(s).all()):
        raise ValueError("candidate scores must be finite")
    cnt = cand.sum(dim=1, keepdim=True)
    if method == "zscore":
        m = cand.float()
        n = cnt.clamp(min=1).float()
        mean = s.sum(dim=1, keepdim=True) / n
        dev = (s - mean) * m
        std = torch.sqrt((dev * dev).sum(dim=1, keepdim=True) / n)
        scale = torch.maximum(mean.abs(), s.abs().amax(dim=1, keepdim=True))
        ok = std > _REL_EPS * scale
        return torch.where(ok, dev / torch.where(ok, std, torch.ones_like(std)), torch.zeros_like(dev))
    # mid-rank among the candidates, scaled to [0, 1]: one sort, then each run of equal
    # values gets the mean of its first and last position (a batched searchsorted of
    # every value cost several times the sort)
    x = torch.where(cand, s, torch.full((), math.inf))
    ordered, order = x.sort(dim=1)
    n = int(ordered.shape[1])
    pos = torch.arange(n).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, pos, 0).cummax(dim=1).values
    last = torch.where(ends, pos, n).flip(1).cummin(dim=1).values.flip(1)
    denom = (cnt - 1).clamp(min=1).float()
    r = torch.empty_like(ordered).scatter_(1, order, (first + last).float() * 0.5) / denom
    ok = cand & (cnt > 1)
    # a signal constant over the candidates gets 0.5 everywhere: equal for all, no influence
    return torch.where(ok, r, torch.zeros_like(r))


def blend_scores(
    candidates: torch.Tensor,
    weights: BlendWeights,
    text: torch.Tensor | np.ndarray | None = None,
    cooccurrence: torch.Tensor | np.ndarray | None = None,
    popularity: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """``(B, N)`` blended scores, ``-inf`` outside the candidates.  A signal that is
    ``None`` or has a zero weight is left out."""
    cand = candidates.to(torch.bool)
    out = torch.zeros(cand.shape, dtype=torch.float32)
    for w, sig in zip(weights.as_tuple(), (text, cooccurrence, popularity)):
        if sig is None or w == 0:
            continue
        out += w * normalize_scores(_as_batch(sig, tuple(cand.shape), "signal"), cand, weights.normalization)  # type: ignore[arg-type]
    return out.masked_fill_(~cand, -math.inf)


def _zscore_blend_topk(
    cand: torch.Tensor, weights: BlendWeights, k: int, signals: Sequence[torch.Tensor | np.ndarray | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`blend_topk` for the z-score normalisation in a few passes over the scores.

    ``sum_s w_s (x_s - mean_s) / std_s`` is ``sum_s (w_s / std_s) x_s`` minus a constant
    per user, which does not change the user's ranking: the top-k is taken on the former
    and the constant (``sum_s w_s mean_s / std_s``) subtracted from the k values only.
    The per-user mean and deviation come from float64 sums and sums of squares over the
    candidates, and a signal whose deviation is below ``_REL_EPS`` of its scale gets no
    weight, as :func:`normalize_scores` decides."""
    shape = tuple(cand.shape)
    n = cand.sum(dim=1, keepdim=True).clamp(min=1).double()
    total = torch.zeros(shape, dtype=torch.float32)
    offset = torch.zeros((shape[0], 1), dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float32)
    for w, sig in zip(weights.as_tuple(), signals):
        if sig is None or w == 0:
            continue
        x = torch.where(cand, _as_batch(sig, shape, "signal"), zero)  # type: ignore[arg-type]
        peak = x.abs().amax(dim=1, keepdim=True).double()  # NaN or inf when a candidate's is
        if not bool(torch.isfinite(peak).all()):
            raise ValueError("candidate scores must be finite")
        coef, shift = _zscore_coefficients(w, x.sum(dim=1, keepdim=True, dtype=torch.float64),
                                           (x * x).sum(dim=1, keepdim=True, dtype=torch.float64), n, peak)
        total.addcmul_(x, coef.float())
        offset += shift
    total.masked_fill_(~cand, -math.inf)
    values, rows = torch.topk(total, min(k, shape[1]), dim=1, largest=True, sorted=True)
    return (values.double() - offset).float(), rows


def blend_topk(
    candidates: torch.Tensor,
    weights: BlendWeights,
    k: int,
    text: torch.Tensor | np.ndarray | None = None,
    cooccurrence: torch.Tensor | np.ndarray | None = None,
    popularity: torch.Tensor | np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` of :func:`blend_scores`: ``(values, rows)``, each ``(B, min(k, N))``,
    best first.  Where a user has fewer than ``k`` candidates the tail has value ``-inf``
    (drop those entries)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if weights.normalization == "zscore":
        return _zscore_blend_topk(candidates.to(torch.bool), weights, k, (text, cooccurrence, popularity))
    scores = blend_scores(candidates, weights, text, cooccurrence, popularity)
    kk = min(k, int(scores.shape[1]))
    return torch.topk(scores, kk, dim=1, largest=True, sorted=True)


def blend_score_topk(
    matrix: ItemMatrix,
    queries: torch.Tensor | np.ndarray,
    k: int,
    exclude: Sequence[Collection[str]],
    weights: BlendWeights,
    cooccurrence: torch.Tensor | np.ndarray | None = None,
    popularity: torch.Tensor | np.ndarray | None = None,
) -> list[TopK]:
    """:func:`scoring.topk.score_topk`'s counterpart for the blend: per query, up to ``k``
    :class:`~scoring.topk.Recommendation` (``because`` is ``None``) over the matrix's live
    rows minus ``exclude``.  ``cooccurrence`` is ``(B, rows_used)``, ``popularity``
    ``(rows_used,)`` or ``(B, rows_used)``, both in the matrix's row order; pass a zero
    query for a user without a usable profile."""
    text = text_scores(matrix, queries)
    batch = int(text.shape[0])
    if len(exclude) != batch:
        raise ValueError(f"exclude has {len(exclude)} entries for {batch} queries")
    if batch == 0 or k <= 0 or len(matrix) == 0:
        return [[] for _ in range(batch)]
    rows = [[r for r in (matrix.row(i) for i in excl) if r is not None] for excl in exclude]
    cand = candidate_mask(matrix.valid.cpu(), rows)
    values, top = blend_topk(cand, weights, k, text.cpu(), cooccurrence, popularity)
    return _lists(matrix, values, top)


def _lists(matrix: ItemMatrix, values: torch.Tensor, rows: torch.Tensor) -> list[TopK]:
    """Each user's :class:`~scoring.topk.Recommendation` list from ``(B, k)`` values and
    matrix rows, best first, cut at the first ``-inf`` (fewer candidates than k) or free row."""
    out: list[TopK] = []
    for vals, rs in zip(values.tolist(), rows.tolist()):
        recs: TopK = []
        for v, r in zip(vals, rs):
            item_id = matrix.id_at(r)
            if v == -math.inf or item_id is None:
                break
            recs.append(Recommendation(item_id, float(v), None))
        out.append(recs)
    return out


# --------------------------------------------------------------------------- two stages

#: Candidates the two-stage ranker takes from the text profile and from popularity (each
#: on top of the user's excluded items), besides every item with co-occurrence evidence.
TEXT_CANDIDATES: Final = 100
POPULAR_CANDIDATES: Final = 100


@dataclass(slots=True)
class CandidateStats:
    """What :func:`candidate_blend_topk` did: users ranked, their mean candidate count, and
    the users whose candidates could not prove their top-k (ranked densely instead)."""

    users: int = 0
    candidates: int = 0
    dense: int = 0


def _padded_rows(rows: Sequence[np.ndarray], fill: int) -> torch.Tensor:
    """``(B, width)`` long: each user's ascending rows, padded with ``fill`` (> every row)."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), fill, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.from_numpy(np.asarray(r, dtype=np.int64))
    return out


def _member(rows: torch.Tensor, sorted_rows: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` bool: is ``rows[b, c]`` among the ascending ``sorted_rows[b]``?"""
    at = torch.searchsorted(sorted_rows, rows).clamp(max=sorted_rows.shape[1] - 1)
    return sorted_rows.gather(1, at) == rows


def _lookup(rows: torch.Tensor, sorted_rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``(B, C)``: ``values[b]`` at ``rows[b, c]`` of the ascending ``sorted_rows[b]``, 0 where absent."""
    at = torch.searchsorted(sorted_rows, rows).clamp(max=sorted_rows.shape[1] - 1)
    return torch.where(sorted_rows.gather(1, at) == rows, values.gather(1, at), torch.zeros((), dtype=values.dtype))


def _zscore_coefficients(
    w: float, s1: torch.Tensor, s2: torch.Tensor, n: torch.Tensor, peak: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w / std, w * mean / std)`` per user from float64 sums and sums of squares over
    ``n`` candidates; 0 for a signal that is constant over them (its deviation below
    ``_REL_EPS`` of its scale: the larger of ``|mean|`` and ``peak``, the largest magnitude,
    or without it the root mean square)."""
    mean = s1 / n
    mean_sq = s2 / n
    std = (mean_sq - mean * mean).clamp(min=0.0).sqrt()
    ok = std > _REL_EPS * torch.maximum(mean.abs(), mean_sq.sqrt() if peak is None else peak)
    coef = torch.where(ok, w / torch.where(ok, std, torch.ones_like(std)), torch.zeros_like(std))
    return coef, coef * mean


def candidate_blend_topk(
    matrix: ItemMatrix,
    queries: np.ndarray,
    k: int,
    exclude: Sequence[Collection[str]],
    weights: BlendWeights,
    cooccurrence: Sequence[tuple[np.ndarray, np.ndarray]],
    popularity: torch.Tensor,
    popular_rows: torch.Tensor,
    *,
    text_candidates: int = TEXT_CANDIDATES,
    stats: CandidateStats | None = None,
    row_weights: np.ndarray | None = None,
    grid: np.ndarray | None = None,
    alternatives: list[np.ndarray] | None = None,
) -> list[TopK]:
    """The z-score blend's top-``k`` in two stages: candidates first, then only they are ranked.

    Each user's candidates are every item with co-occurrence evidence (``cooccurrence``:
    the sparse ``(rows, scores)`` of each user), their ``text_candidates`` nearest items
    by text (so an item with text and no interactions yet can be found), and the rows of
    ``popular_rows`` (``(B, P)``: the currently most popular items; any order), minus the
    excluded items.  The z-score of each signal is still taken over *all* the user's
    candidates of the dense ranking (every live item not excluded), from sums over the
    catalog and the excluded items, so a candidate's blended score is the dense one.  An
    item that is not a candidate has no co-occurrence and at most the smallest text and
    popularity score of those taken, which bounds its blended score: a user whose k-th
    candidate scores below that bound (rare: the sources miss an item that could rank)
    is ranked densely, so the result is always the exact top-k of :func:`blend_score_topk`
    (up to float rounding of ties).  ``popularity`` is ``(B, rows_used)``.

    Only the z-score normalisation has this form (a rank needs every item's score): call
    :func:`blend_score_topk` for ``"rank"``.

    ``row_weights`` (``(B, 3)``: text, co-occurrence, popularity) ranks each user with its
    own weights instead of ``weights``'.  With ``grid`` (``(B, G, 3)``: other weightings of
    each user, :mod:`scoring.adapt`), the top-``k`` of every one of them over the user's
    candidates is appended to ``alternatives``: one ``(G, k)`` int32 array of matrix rows per
    user (-1 past the user's candidates).
    """
    if weights.normalization != "zscore":
        raise ValueError("the two-stage blend ranks the z-score normalisation only")
    batch = len(exclude)
    if len(cooccurrence) != batch or batch != len(queries):
        raise ValueError(f"{len(queries)} queries, {len(exclude)} exclusion sets and {len(cooccurrence)} co-occurrence vectors")
    if batch == 0 or k <= 0 or len(matrix) == 0:
        return [[] for _ in range(batch)]
    n_rows = matrix.rows_used
    text = text_scores(matrix, queries).cpu()  # (B, n); 0 on free rows (their vectors are zeroed)
    pop = _as_batch(popularity, (batch, n_rows), "popularity")
    valid = matrix.valid.cpu()
    if row_weights is None:
        w_text, w_co, w_pop = weights.as_tuple()
    else:
        if row_weights.shape != (batch, 3):
            raise ValueError(f"row_weights: expected shape ({batch}, 3), got {row_weights.shape}")
        w = torch.from_numpy(np.asarray(row_weights, dtype=np.float64))
        w_text, w_co, w_pop = w[:, 0:1], w[:, 1:2], w[:, 2:3]  # type: ignore[assignment]

    # the excluded rows of each user (live items only), flat and as padded sorted rows
    ex_rows = [sorted({r for r in (matrix.row(i) for i in excl) if r is not None}) for excl in exclude]
    ex_b = torch.tensor([b for b, rows in enumerate(ex_rows) for _ in rows], dtype=torch.long)
    ex_r = torch.tensor([r for rows in ex_rows for r in rows], dtype=torch.long)
    ex_pad = _padded_rows([np.asarray(rows, dtype=np.int64) for rows in ex_rows], n_rows)
    n = (len(matrix) - torch.tensor([len(rows) for rows in ex_rows], dtype=torch.float64)).clamp(min=1).unsqueeze(1)

    def sums(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 sums and sums of squares of the rows of dense ``x`` over each user's
        candidates (free rows score 0: the catalog's sums minus the excluded rows')."""
        s1 = x.sum(dim=1, keepdim=True, dtype=torch.float64)
        s2 = (x * x).sum(dim=1, keepdim=True, dtype=torch.float64)
        if len(ex_r):
            e = x[ex_b, ex_r].double()
            s1 = s1.index_add(0, ex_b, -e.unsqueeze(1))
            s2 = s2.index_add(0, ex_b, -(e * e).unsqueeze(1))
        return s1, s2

    coef_t, off_t = _zscore_coefficients(w_text, *sums(text), n)
    coef_p, off_p = _zscore_coefficients(w_pop, *sums(pop), n)
    co1 = torch.zeros((batch, 1), dtype=torch.float64)
    co2 = torch.zeros((batch, 1), dtype=torch.float64)
    for b, (rows, vals) in enumerate(cooccurrence):
        if len(rows):
            v = vals[~np.isin(rows, ex_rows[b])] if ex_rows[b] else vals
            co1[b, 0], co2[b, 0] = float(v.sum()), float((v * v).sum())
    coef_c, off_c = _zscore_coefficients(w_co, co1, co2, n)
    offset = off_t + off_c + off_p
    co_rows = _padded_rows([rows for rows, _ in cooccurrence], n_rows)  # ascending, padded with n_rows
    co_vals = torch.zeros(co_rows.shape, dtype=torch.float32)
    for b, (_, vals) in enumerate(cooccurrence):
        co_vals[b, : len(vals)] = torch.from_numpy(vals.astype(np.float32))

    # stage 1: candidates (text head-room for the user's excluded items)
    t_take = min(n_rows, text_candidates + max(len(rows) for rows in ex_rows))
    text_top, text_rows = torch.topk(text, t_take, dim=1)
    cand = torch.cat([text_rows, popular_rows.to(torch.long), co_rows], dim=1)
    cand, _ = cand.sort(dim=1)
    pad = cand >= n_rows
    safe = torch.where(pad, 0, cand)
    dup = torch.zeros_like(pad)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    usable = ~pad & ~dup & valid[safe] & ~_member(safe, ex_pad)

    # stage 2: the blend of the candidates, as the dense ranking computes it
    def blended(rows: torch.Tensor, co: torch.Tensor, b: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        total = text[b].gather(1, rows) * coef_t[b].float()
        total.addcmul_(co, coef_c[b].float())
        total.addcmul_(pop[b].gather(1, rows), coef_p[b].float())
        return total

    total = blended(safe, _lookup(safe, co_rows, co_vals)).masked_fill_(~usable, -math.inf)
    kk = min(k, n_rows)
    if total.shape[1] < kk:  # fewer candidates than k: pad (the dense ranking decides those users)
        total = torch.nn.functional.pad(total, (0, kk - total.shape[1]), value=-math.inf)
        usable = torch.cat([usable, torch.zeros((batch, kk - safe.shape[1]), dtype=torch.bool)], dim=1)
        safe = torch.nn.functional.pad(safe, (0, kk - safe.shape[1]), value=0)
    values, pos = torch.topk(total, kk, dim=1)
    rows = safe.gather(1, pos)
    # an item that is no candidate has no co-occurrence, and text and popularity at most
    # the smallest of those taken: its blended score is at most this
    p_most = pop.gather(1, popular_rows.to(torch.long)).amin(dim=1) if popular_rows.shape[1] else pop.amax(dim=1)
    bound = text_top[:, -1] * coef_t.squeeze(1).float() + p_most * coef_p.squeeze(1).float()
    kth = values[:, -1]
    unsure = ((kth < bound) | (kth == -math.inf)) if t_take < n_rows else torch.zeros(batch, dtype=torch.bool)
    if bool(unsure.any()):
        who = unsure.nonzero().squeeze(1)
        everything = torch.arange(n_rows).expand(len(who), -1)
        co = torch.zeros((len(who), n_rows), dtype=torch.float32)
        off = torch.zeros((len(who), n_rows), dtype=torch.bool)
        for j, b in enumerate(who.tolist()):
            co[j, torch.from_numpy(cooccurrence[b][0])] = co_vals[b, : len(cooccurrence[b][0])]
            off[j, ex_rows[b]] = True
        dense_total = blended(everything, co, who).masked_fill_(~valid | off, -math.inf)
        values[who], rows[who] = torch.topk(dense_total, kk, dim=1)
    if grid is not None and alternatives is not None:
        alternatives.extend(_grid_lists(grid, k, usable, safe, [
            (text.gather(1, safe), _zscore_coefficients(1.0, *sums(text), n)[0]),
            (_lookup(safe, co_rows, co_vals), _zscore_coefficients(1.0, co1, co2, n)[0]),
            (pop.gather(1, safe), _zscore_coefficients(1.0, *sums(pop), n)[0]),
        ]))  # fmt: skip
    if stats is not None:
        stats.users += batch
        stats.candidates += int(usable.sum())
        stats.dense += int(unsure.sum())

    return _lists(matrix, (values.double() - offset).float(), rows)


def _grid_lists(
    grid: np.ndarray, k: int, usable: torch.Tensor, rows: torch.Tensor, signals: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[np.ndarray]:
    """Each user's top-``k`` candidate rows under each of its ``grid`` weightings
    (``(B, G, 3)``), from the candidates' ``(values, 1 / std)`` of every signal."""
    batch = int(rows.shape[0])
    g = torch.from_numpy(np.asarray(grid, dtype=np.float32))
    if tuple(g.shape[::2]) != (batch, 3):
        raise ValueError(f"grid: expected shape ({batch}, G, 3), got {tuple(g.shape)}")
    z = torch.stack([values * inv_std.float() for values, inv_std in signals], dim=2)  # (B, C, 3)
    scores = torch.einsum("bcs,bgs->bgc", z, g).masked_fill_(~usable.unsqueeze(1), -math.inf)
    kk = min(k, int(scores.shape[2]))
    values, pos = torch.topk(scores, kk, dim=2)
    top = rows.unsqueeze(1).expand(-1, g.shape[1], -1).gather(2, pos)
    top = torch.where(values == -math.inf, -1, top).to(torch.int32)
    if kk < k:
        top = torch.nn.functional.pad(top, (0, k - kk), value=-1)
    return list(top.numpy())
