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

import itertools
import math
import os
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import orjson
import torch

from recstream.encoders.profile import UserProfile
from recstream.scoring.popularity import DecayedPopularity
from recstream.scoring.topk import ItemMatrix, Recommendation, TopK

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
            raise BlendConfigError(f'{path}: not a blend weights file (expected "format": "{CONFIG_FORMAT}")')
        if doc.get("version") != CONFIG_VERSION:
            raise BlendConfigError(f"{path}: unknown blend weights version {doc.get('version')!r} (this code reads version {CONFIG_VERSION})")
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


def popularity_vector(popularity: DecayedPopularity, ids: Sequence[str | None], now_ms: int) -> np.ndarray:
    """``log1p`` of each item's decayed count at ``now_ms``, float32, in the order of ``ids``
    (``None`` and unknown items: 0)."""
    get = popularity.log2_scores().get
    log2 = np.fromiter((-math.inf if i is None else get(i, -math.inf) for i in ids), dtype=np.float64, count=len(ids))
    return decayed_log1p(log2, popularity.shift(now_ms))


def decayed_log1p(log2: np.ndarray, shift: float) -> np.ndarray:
    """``log1p(2 ** (log2 - shift))`` of each entry (a decayed count, :meth:`DecayedPopularity.score`,
    from its ``log2`` score, ``-inf``: none, and :meth:`DecayedPopularity.shift`), float32."""
    with np.errstate(over="ignore"):  # a count beyond float64: +inf, as the scalar score
        return np.log1p(np.exp2(log2 - shift)).astype(np.float32)


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
    n_cols = int(ordered.shape[1])
    pos = torch.arange(n_cols).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, pos, 0).cummax(dim=1).values
    last = torch.where(ends, pos, n_cols).flip(1).cummin(dim=1).values.flip(1)
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
        coef, shift = _zscore_coefficients(w, x.sum(dim=1, keepdim=True, dtype=torch.float64), (x * x).sum(dim=1, keepdim=True, dtype=torch.float64), n, peak)
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
    id_at = matrix._row_to_id.__getitem__  # rows come from the matrix: in range
    new = tuple.__new__  # Recommendation(*t) without the NamedTuple's Python-level __new__
    for vals, rs in zip(values.tolist(), rows.tolist()):
        ids = list(map(id_at, rs))
        if None in ids or -math.inf in vals:
            cut = next(j for j, (v, i) in enumerate(zip(vals, ids)) if v == -math.inf or i is None)
            ids, vals = ids[:cut], vals[:cut]
        out.append([new(Recommendation, t) for t in zip(ids, vals, itertools.repeat(None))])
    return out


# --------------------------------------------------------------------------- two stages

#: Candidates the two-stage ranker takes from the text profile and from popularity (each
#: besides the user's excluded items), besides every item with co-occurrence evidence.
TEXT_CANDIDATES: Final = 100
POPULAR_CANDIDATES: Final = 100
#: Candidates the two-stage ranker takes from the items most recently added to the catalog.
NEW_CANDIDATES: Final = 20
_LN2: Final = math.log(2.0)
#: The popularity sums of a snapshot are a Taylor expansion (third order) around a centre
#: time at most this far (in ``ln 2 * half-lives``) from the snapshot's time: a relative
#: error below 1e-9, far below the float32 rounding of the popularity values themselves.
_TAYLOR_RADIUS: Final = 0.01
#: Items a second round may add to a user's candidates before the user is ranked densely.
_WIDEN_MAX: Final = 2048
#: A log2 count standing for "no count" where -inf means "no row" (its popularity is 0).
_NO_COUNT: Final = -1e30
_NO_COUNT32: Final = np.float32(_NO_COUNT)


@dataclass(slots=True)
class CandidateStats:
    """What :func:`candidate_blend_topk` did: users ranked, their mean candidate count, and
    the users whose candidates could not prove their top-k (ranked densely instead)."""

    users: int = 0
    candidates: int = 0
    dense: int = 0
    #: users whose candidates were widened (a second round) to prove their top-k
    widened: int = 0


def _zscore_coefficients(
    w: float | torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
    n: torch.Tensor,
    peak: torch.Tensor | None = None,
    center: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w / std, w * mean / std)`` per user from float64 sums and sums of squares over
    ``n`` candidates; 0 for a signal that is constant over them (its deviation below
    ``_REL_EPS`` of its scale: the larger of ``|mean|`` and ``peak``, the largest magnitude,
    or without it the root mean square).  With ``center``, the sums are of the scores minus
    ``center`` (per user; summing deviations from about the mean keeps the precision of a
    float32 sum of squares)."""
    if center is None:
        mean = s1 / n
        mean_sq = s2 / n
        std = (mean_sq - mean * mean).clamp(min=0.0).sqrt()
        scale = torch.maximum(mean.abs(), mean_sq.sqrt() if peak is None else peak)
    else:
        dev = s1 / n
        var = (s2 / n - dev * dev).clamp(min=0.0)
        std = var.sqrt()
        mean = dev + center
        scale = torch.maximum(mean.abs(), (var + mean * mean).sqrt() if peak is None else peak)
    ok = std > _REL_EPS * scale
    coef = torch.where(ok, w / torch.where(ok, std, torch.ones_like(std)), torch.zeros_like(std))
    return coef, coef * mean


# ----------------------------------------------------------------- the popularity signal


def _softplus_moments(y: np.ndarray) -> np.ndarray:
    """``(8, len(y))`` float64: ``f, f', f'', f'''`` and ``g, g', g'', g'''`` at ``y`` for
    ``f = softplus`` and ``g = f ** 2`` (0 at ``-inf``)."""
    f = np.logaddexp(0.0, y)
    s = np.exp(y - f)  # the logistic function
    d2 = s * (1.0 - s)
    d3 = d2 * (1.0 - 2.0 * s)
    return np.stack([f, s, d2, d3, f * f, 2.0 * f * s, 2.0 * (s * s + f * d2), 2.0 * (3.0 * s * d2 + f * d3)])


def _last_changes(rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each changed row once, with its last value in ``(rows, values)`` (a journal, oldest first)."""
    r = rows[::-1]
    _, last = np.unique(r, return_index=True)
    return r[last].copy(), values[::-1][last].copy()


class _Cursor:
    """A :class:`PopularityStates` state moved through the journal: :attr:`values` (float32
    ``(rows,)``) is the state after :attr:`pos` changes."""

    __slots__ = ("states", "values", "pos")

    def __init__(self, states: PopularityStates) -> None:
        self.states = states
        self.values = states._base.copy()
        self.pos = 0

    def advance(self, pos: int) -> np.ndarray | None:
        """Move to the state after ``pos`` changes; the rows changed on the way (in journal
        order, maybe repeated), or ``None`` where it had to start over (``pos`` is behind)."""
        st = self.states
        start = self.pos
        if pos < start:
            self.values[:] = st._base
            start = 0
        rows = st.rows[start:pos]
        if len(rows) == 1:
            self.values[rows[0]] = st.values[start]
        elif len(rows):
            r, v = _last_changes(rows, st.values[start:pos])
            self.values[r] = v
        reset = pos < self.pos
        self.pos = pos
        return None if reset else rows


def _softplus_rows(x: torch.Tensor) -> torch.Tensor:
    """``softplus`` of each row of ``x`` (``(U, n)``) bit for bit as of that row alone.

    torch's vectorised CPU loops compute the last elements of a contiguous run (past a
    multiple of twice the vector width) with scalar code, whose ``exp`` and ``log1p`` round
    differently now and then: over a contiguous ``(U, n)`` tensor, the rows would be one run.
    A row stride of ``n + 1`` keeps each row a run of its own."""
    u, n = x.shape
    return torch.nn.functional.softplus(torch.empty((u, n + 1), dtype=x.dtype)[:, :n].copy_(x))


class PopularityStates:
    """The blend's popularity signal over a batch's snapshots, without a ``(B, rows)`` tensor.

    ``base`` (float32 ``(rows,)``) holds each matrix row's log2 decayed count at the batch's
    start, relative to a reference time (``-inf``: no count), and ``rows``/``values`` the
    batch's changes in order (row ``rows[e]`` took the log2 count ``values[e]``, same
    reference).  A snapshot sees the state after the first ``pos`` changes at its own time
    ``shift`` (half-lives after the reference), and the popularity of row ``r`` is
    ``log1p(2 ** (state[r] - shift))``, computed as the dense engine does:
    ``softplus((state[r] - shift) * ln 2)`` in float32 (see :meth:`view`).

    What the two-stage ranking needs costs about the candidates, not the catalog: the values
    at given rows (:meth:`state_at`, a lookup in the journal), the sums and sums of squares
    over every row (a Taylor expansion of the sums around a few centre times, each
    computed once over the catalog and corrected for the journal's changes), and each
    state's most popular rows (the base's, merged with the rows the journal changed: a
    count only grows within a batch).  Per-event snapshots see the states one change apart,
    in order: those are taken in one sweep through the journal (a :class:`_Cursor`), each
    costing about the rows it changed and the popular rows, not the catalog.
    """

    #: spacing of the sums' expansion centres, in half-lives (every time lies within the radius of one)
    step: Final = 2.0 * _TAYLOR_RADIUS / _LN2

    def __init__(self, base: torch.Tensor, rows: np.ndarray, values: np.ndarray, popular: int = POPULAR_CANDIDATES) -> None:
        self.base = base.to(torch.float32).contiguous()
        self._base = self.base.numpy()
        self.n_rows = int(self._base.shape[0])
        self.rows = np.asarray(rows, dtype=np.int64)
        self.values = np.asarray(values, dtype=np.float32)
        self.popular = min(int(popular), self.n_rows)
        j = len(self.rows)
        order = np.lexsort((np.arange(j), self.rows))  # by row, then by position in the journal
        self._s_rows = self.rows[order]
        self._s_vals = self.values[order]
        self._keys = self._s_rows * (j + 1) + order
        self._changed = np.zeros(self.n_rows, dtype=bool)
        self._changed[self.rows] = True
        first = np.ones(j, dtype=bool)
        first[1:] = self._s_rows[1:] != self._s_rows[:-1]
        prev = np.empty(j, dtype=np.float32)
        prev[order] = np.where(first, self._base[self._s_rows], np.roll(self._s_vals, 1))
        self._prev = prev
        self._grows = bool((self.values >= prev).all())
        self._base_top: torch.Tensor | None = None
        self._popular_at: dict[int, torch.Tensor] = {}
        self._moments: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._states: dict[int, torch.Tensor] = {}
        # popular_rows' sweep through the journal (its state), the base's top rows merged with
        # the rows changed so far (ascending), and which rows these are
        self._sweep = _Cursor(self)
        self._union: np.ndarray | None = None
        self._in_union = np.zeros(self.n_rows, dtype=bool)

    def state_at(self, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """float32 log2 counts at ``rows`` (``(B, C)``) of the states after ``pos`` (``(B,)``) changes."""
        if len(pos) > 1 and bool((pos[1:] >= pos[:-1]).all()):
            # ascending, as per-event snapshots are: one sweep through the journal, a gather
            # per snapshot (cheaper than looking each changed row up in the journal)
            out = np.empty(rows.shape, dtype=np.float32)
            sweep = _Cursor(self)
            for b, p in enumerate(pos.tolist()):
                sweep.advance(p)
                out[b] = sweep.values[rows[b]]
            return out
        out = self._base[rows]
        j = len(self.rows)
        if j:
            hit = self._changed[rows] & (pos[:, None] > 0)
            if hit.any():
                bi, ci = np.nonzero(hit)
                r = rows[bi, ci]
                idx = np.searchsorted(self._keys, r * (j + 1) + (pos[bi] - 1), side="right") - 1
                ok = (idx >= 0) & (self._s_rows[np.maximum(idx, 0)] == r)
                out[bi[ok], ci[ok]] = self._s_vals[idx[ok]]
        return out

    def state(self, pos: int) -> torch.Tensor:
        """The whole state after ``pos`` changes, float32 ``(rows,)`` (the last few are kept:
        do not modify)."""
        got = self._states.get(pos)
        if got is not None:
            return got
        s = self.base.clone() if pos > 0 else self.base
        if pos > 0:
            r, v = _last_changes(self.rows[:pos], self.values[:pos])
            s[torch.from_numpy(r)] = torch.from_numpy(v)
        if len(self._states) >= 4:
            self._states.pop(next(iter(self._states)))
        self._states[pos] = s
        return s

    def popular_rows(self, pos: int) -> torch.Tensor:
        """``(P,)`` rows such that every other row's count is at most each of theirs, in
        the state after ``pos`` changes (the most popular, in any order)."""
        got = self._popular_at.get(pos)
        if got is not None:
            return got
        if self._base_top is None:
            self._base_top = torch.topk(self.base, self.popular, sorted=False).indices
        if pos == 0 or not len(self.rows) or self.popular == 0:
            got = self._base_top
        elif self._grows:
            # an unchanged row outside the base's top P is below all of them, and theirs only
            # grew: the top P of the base's top merged with the changed rows (ascending), whose
            # counts a sweep through the journal holds (asked in ascending order, one change
            # apart, as per-event snapshots are, each costs about P, not the catalog)
            union = self._merged(pos)
            vals = self._sweep.values[union]
            top = np.argpartition(-vals, self.popular - 1)[: self.popular] if len(union) > self.popular else np.arange(len(union))
            got = torch.from_numpy(union[top])
        else:
            got = torch.topk(self.state(pos), self.popular, sorted=False).indices
        self._popular_at[pos] = got
        return got

    def _merged(self, pos: int) -> np.ndarray:
        """The rows of the base's top P and of the first ``pos`` changes, ascending, with the
        sweep moved to ``pos``."""
        changed = self._sweep.advance(pos)
        if changed is None or self._union is None:  # the sweep starts (over)
            self._union = np.unique(np.concatenate([cast(torch.Tensor, self._base_top).numpy(), self.rows[:pos]]))
            self._in_union[:] = False
            self._in_union[self._union] = True
        else:
            new = changed[~self._in_union[changed]]
            if len(new) == 1:  # one change at a time, as per-event snapshots see them
                at = int(np.searchsorted(self._union, new[0]))
                self._union = np.concatenate([self._union[:at], new, self._union[at:]])
            elif len(new):
                self._union = np.union1d(self._union, new)
            self._in_union[new] = True
        return self._union

    def group_max(self, positions: np.ndarray, groups: _Groups) -> np.ndarray:
        """``(len(positions), groups.count + 1)`` float32: for each of the ascending
        ``positions``, the largest log2 count of each group's rows outside :meth:`popular_rows`
        in the state after that many changes (``-inf``: none; a row without a count counts
        ``_NO_COUNT``, popularity 0, not "no row").

        One sweep through the journal: from one position to the next only the groups of the
        rows that changed, joined the popular rows or left them are taken again (the same
        maxima as from the whole state: a largest value is exact)."""
        out = np.empty((len(positions), groups.count + 1), dtype=np.float32)
        sweep = _Cursor(self)
        popular = np.zeros(self.n_rows, dtype=bool)  # the popular rows of the previous position
        prev = np.empty(0, dtype=np.int64)
        masked = gmax = np.empty(0, dtype=np.float32)  # the state clamped, the popular rows -inf
        for j, pos in enumerate(positions.tolist()):
            changed = sweep.advance(pos)
            top = self.popular_rows(pos).numpy()
            was = popular[top]
            if len(top) == len(prev) and was.all():  # the same popular rows
                moved = changed
            else:
                popular[top] = False
                left = prev[popular[prev]]  # popular no more
                popular[left] = False
                popular[top] = True
                moved = None if changed is None else np.concatenate([changed, top[~was], left])
            if moved is None or j == 0:  # the first position (or not ascending): every group
                masked = np.maximum(sweep.values, _NO_COUNT32)
                masked[top] = -np.inf
                gmax = groups.maxima_np(masked)
            elif len(moved):  # the groups of the rows that changed, joined the popular rows or left them
                masked[moved] = np.where(popular[moved], -np.inf, np.maximum(sweep.values[moved], _NO_COUNT32))
                groups.update_np(gmax, masked, moved)
            prev = top
            out[j] = gmax
        return out

    def moments(self, center: int) -> tuple[np.ndarray, np.ndarray]:
        """``(8,)`` sums over the base's rows of :func:`_softplus_moments` at ``(count -
        c) * ln 2`` (``c = center * step``), and ``(J + 1, 8)`` their changes after each
        prefix of the journal."""
        got = self._moments.get(center)
        if got is None:
            c = center * self.step
            counted = self._base[np.isfinite(self._base)]  # a row without a count adds 0
            base = _softplus_moments((counted.astype(np.float64) - c) * _LN2).sum(axis=1)
            delta = _softplus_moments((self.values.astype(np.float64) - c) * _LN2) - _softplus_moments((self._prev.astype(np.float64) - c) * _LN2)
            cum = np.zeros((len(self.rows) + 1, 8))
            np.cumsum(delta.T, axis=0, out=cum[1:])
            got = self._moments[center] = (base, cum)
        return got

    def view(self, pos: np.ndarray, shift: torch.Tensor) -> SnapshotPopularity:
        """The signal of ``B`` snapshots: each one's number of changes seen and time."""
        return SnapshotPopularity(self, np.asarray(pos, dtype=np.int64), shift.to(torch.float32))


class SnapshotPopularity:
    """:class:`PopularityStates` as seen by ``B`` snapshots (see :meth:`PopularityStates.view`)."""

    def __init__(self, states: PopularityStates, pos: np.ndarray, shift: torch.Tensor) -> None:
        self.states = states
        self.pos = pos
        self.shift = shift
        # every snapshot at the same point of the batch (per-user emission): one state, gathered from
        self._state = states.state(int(pos[0])) if len(pos) and int(pos.min()) == int(pos.max()) else None

    def __len__(self) -> int:
        return len(self.pos)

    def at(self, rows: torch.Tensor, who: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C)`` float32 popularity of each snapshot (or of the snapshots ``who``) at
        ``rows`` (``(B, C)`` or ``(len(who), C)``, valid rows)."""
        shift = self.shift if who is None else self.shift[who]
        if self._state is not None:
            st = self._state[rows]
        else:
            st = torch.from_numpy(self.states.state_at(rows.numpy(), self.pos if who is None else self.pos[who.numpy()]))
        return torch.nn.functional.softplus((st - shift.unsqueeze(1)) * _LN2)

    def sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1)`` float64 sums and sums of squares over every row."""
        st = self.states
        t = self.shift.double().numpy()
        centers = np.rint(t / st.step).astype(np.int64)
        out = np.zeros((len(t), 2))
        fact = np.array([1.0, 1.0, 2.0, 6.0])
        for c in np.unique(centers):
            base, cum = st.moments(int(c))
            who = np.nonzero(centers == c)[0]
            d = base[None, :] + cum[self.pos[who]]  # (u, 8)
            h = -(t[who] - c * st.step) * _LN2
            powers = h[:, None] ** np.arange(4)[None, :] / fact[None, :]  # (u, 4)
            out[who, 0] = (d[:, :4] * powers).sum(axis=1)
            out[who, 1] = (d[:, 4:] * powers).sum(axis=1)
        res = torch.from_numpy(out)
        return res[:, :1], res[:, 1:]

    def popular_rows(self) -> torch.Tensor:
        """``(B, P)`` rows: every row outside a snapshot's is at most as popular as each of them."""
        if not len(self.pos):
            return torch.zeros((0, self.states.popular), dtype=torch.long)
        by_pos = {int(p): self.states.popular_rows(int(p)) for p in np.unique(self.pos)}
        return torch.stack([by_pos[int(p)] for p in self.pos])

    def group_max(self, groups: _Groups) -> torch.Tensor:
        """``(B, groups.count + 1)`` float32: at least each snapshot's largest popularity in
        each group of rows, outside its :meth:`popular_rows` (``-inf``: none)."""
        # one vector per state, at the earliest time of its snapshots (where each count is
        # largest): at least every one of theirs
        positions, of = np.unique(self.pos, return_inverse=True)
        w = torch.from_numpy(self.states.group_max(positions, groups))
        of_t = torch.from_numpy(of.reshape(-1))
        earliest = torch.full((len(positions),), math.inf).scatter_reduce_(0, of_t, self.shift, "amin")
        out = _softplus_rows((w - earliest.unsqueeze(1)) * _LN2).masked_fill_(w == -math.inf, -math.inf)
        return out[of_t]

    def dense(self, who: torch.Tensor) -> torch.Tensor:
        """``(len(who), rows)`` float32: the popularity of those snapshots at every row."""
        if self._state is not None:
            return torch.nn.functional.softplus((self._state.unsqueeze(0) - self.shift[who].unsqueeze(1)) * _LN2)
        out = torch.empty((len(who), self.states.n_rows), dtype=torch.float32)
        for j, b in enumerate(who.tolist()):
            out[j] = torch.nn.functional.softplus((self.states.state(int(self.pos[b])) - self.shift[b]) * _LN2)
        return out


class _DensePopularity:
    """A ``(B, rows)`` popularity tensor and its popular rows, as :class:`SnapshotPopularity`."""

    def __init__(self, values: torch.Tensor, popular: torch.Tensor) -> None:
        self.values = values
        self.popular = popular.to(torch.long)

    def at(self, rows: torch.Tensor, who: torch.Tensor | None = None) -> torch.Tensor:
        return (self.values if who is None else self.values[who]).gather(1, rows)

    def sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.values
        return x.sum(dim=1, keepdim=True, dtype=torch.float64), (x * x).sum(dim=1, keepdim=True, dtype=torch.float64)

    def popular_rows(self) -> torch.Tensor:
        return self.popular

    def group_max(self, groups: _Groups) -> torch.Tensor:
        x = self.values.clone()
        if self.popular.shape[1]:
            x.scatter_(1, self.popular, -math.inf)
        return groups.maxima(x)

    def dense(self, who: torch.Tensor) -> torch.Tensor:
        return self.values[who]


# ----------------------------------------------------------------- candidates


class NewItems:
    """The items most recently added to an :class:`~scoring.topk.ItemMatrix`, for the
    two-stage ranker's "new items" candidates (an item with neither interactions nor a text
    profile close to the user's still gets a chance, e.g. under an approximate text index).

    The matrix is polled (:meth:`rows`, cheap while its ``generation`` is unchanged): a row
    past the last poll's ``rows_used``, or one that was free then and is live now, holds a new
    item.  The first poll takes the last ``limit`` live rows as the newest.
    """

    def __init__(self, limit: int = NEW_CANDIDATES) -> None:
        self.limit = int(limit)
        self._key: tuple[int, int] | None = None
        self._used = 0
        self._free: np.ndarray = np.empty(0, dtype=np.int64)
        self._recent: list[int] = []  # oldest first

    def rows(self, matrix: ItemMatrix) -> np.ndarray:
        """The rows of the newest live items, newest first (at most ``limit``)."""
        if self.limit <= 0:
            return np.empty(0, dtype=np.int64)
        key = (id(matrix), matrix.generation)
        if key != self._key:
            used = matrix.rows_used
            valid = matrix.valid.cpu().numpy()
            if self._key is None or self._key[0] != key[0] or used < self._used:
                self._recent = np.flatnonzero(valid)[-self.limit :].tolist()
            else:
                reused = self._free[self._free < used]
                reused = reused[valid[reused]]
                grown = np.flatnonzero(valid[self._used : used]) + self._used
                self._recent = (self._recent + reused.tolist() + grown.tolist())[-self.limit :]
            self._free = np.flatnonzero(~valid)
            self._used = used
            self._key = key
        live = [r for r in reversed(self._recent) if matrix.id_at(r) is not None]
        return np.asarray(live, dtype=np.int64)


def _group_size(n: int, k: int) -> int:
    """Rows per group of the text candidates' selection: a power of two up to 8, with at
    least ``4 k`` groups (a top-k costs about 10 ns per score it looks at, a max far less)."""
    return int(2 ** min(3, max(0, math.floor(math.log2(max(n / (4.0 * max(k, 1)), 1.0))))))


def _text_candidates(x: torch.Tensor, k: int, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, _Groups]:
    """Each user's text candidates among the finite scores of ``x`` (``(B, N)``; excluded and
    free rows hold ``-inf``): ``(rows, bound, groups)``, ``rows`` ``(B, W)`` padded with ``N``,
    ``bound`` ``(B,)`` at least the score of every finite row that is not among them, and the
    groups the rows were cut into with each one's largest score.

    The candidates contain the top ``k`` and the bound is at most the ``k``-th score: the rows
    are cut into ``G`` groups of ``g`` (group ``j``: rows ``j, j + G, j + 2G...``, so that their
    maxima are ``g - 1`` elementwise maxima of contiguous slices; the last ``N - G g`` rows
    are a group of their own, always taken), the ``k`` groups with the largest maxima are kept
    and, of their rows, those scoring at least the ``k``-th largest maximum (a few more than
    ``k``).  Two small top-k selections (of ``G`` maxima and ``k g`` scores) instead of one
    over every row.  ``skip`` (``(B,)`` bool): users given no candidates (their bound is
    their largest score)."""
    batch, n = int(x.shape[0]), int(x.shape[1])
    groups = _Groups(n, _group_size(n, k))
    g, count = groups.size, groups.count
    gmax = groups.text_max = groups.maxima(x)
    top = gmax.amax(dim=1)
    if k <= 0:
        return torch.full((batch, 0), n, dtype=torch.long), top, groups
    if count <= k:  # every row
        rows = torch.arange(n).expand(batch, n)
        take = torch.isfinite(x) & ~skip.unsqueeze(1)
        bound = torch.where(skip, top, torch.full_like(top, -math.inf))
        groups.every = True
    else:
        kth, gi = torch.topk(gmax[:, :count], k, dim=1, sorted=False)
        bound = kth.amin(dim=1)
        rows = (gi.unsqueeze(2) + torch.arange(g) * count).view(batch, -1)
        tail = n - count * g
        if tail:
            rows = torch.cat([rows, torch.arange(count * g, n).expand(batch, tail)], dim=1)
        vals = x.gather(1, rows)
        take = (vals >= bound.unsqueeze(1)) & (vals > -math.inf) & ~skip.unsqueeze(1)
        if tail:
            take[:, -tail:] = (vals[:, -tail:] > -math.inf) & ~skip.unsqueeze(1)
        bound = torch.where(skip, top, bound)
    width = int(take.sum(dim=1).max()) if batch else 0
    # the taken rows first (any order): a top-k of the mask
    _, at = torch.topk(take.to(torch.uint8), width, dim=1, sorted=False)
    out = torch.where(take.gather(1, at), rows.gather(1, at), n)
    return out, bound, groups


@dataclass(slots=True)
class _Groups:
    """The text candidates' groups of rows (see :func:`_text_candidates`): ``count`` groups
    of ``size`` rows (group ``j``: rows ``j + m * count``), then the remaining rows as one
    more group (column ``count`` of :meth:`maxima`, ``-inf`` when there are none)."""

    n: int
    size: int
    count: int = 0
    every: bool = False  # every row is a text candidate
    text_max: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.count = self.n // self.size

    def maxima(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, count + 1)``: each group's largest value of ``x`` (``(B, N)``)."""
        batch, end = int(x.shape[0]), self.count * self.size
        out = torch.full((batch, self.count + 1), -math.inf, dtype=x.dtype)
        if self.count:
            out[:, : self.count] = x[:, :end].view(batch, self.size, self.count).amax(dim=1)
        if end < self.n:
            out[:, self.count] = x[:, end:].amax(dim=1)
        return out

    def maxima_np(self, x: np.ndarray) -> np.ndarray:
        """:meth:`maxima` of one row, in numpy: ``(count + 1,)`` from ``x`` (``(N,)``)."""
        end = self.count * self.size
        out = np.full(self.count + 1, -np.inf, dtype=x.dtype)
        if self.count:
            out[: self.count] = x[:end].reshape(self.size, self.count).max(axis=0)
        if end < self.n:
            out[self.count] = x[end:].max()
        return out

    def update_np(self, maxima: np.ndarray, x: np.ndarray, rows: np.ndarray) -> None:
        """Take the groups' maxima of the ``rows`` (``(count + 1,)``, :meth:`maxima_np`) again from ``x``."""
        end, count = self.count * self.size, self.count
        if len(rows) <= 4:  # a few: a slice per group (group g's rows are g, g + count... below end)
            for r in rows.tolist():
                if r < end:
                    maxima[r % count] = x[r % count : end : count].max()
                else:
                    maxima[count] = x[end:].max()
            return
        inner = rows[rows < end]
        if len(inner):
            g = inner % count
            maxima[g] = x[:end].reshape(self.size, count)[:, g].max(axis=0)
        if len(inner) < len(rows):
            maxima[count] = x[end:].max()


def _flat_exclusions(matrix: ItemMatrix, exclude: Sequence[Collection[str]]) -> tuple[np.ndarray, np.ndarray]:
    """``(users, rows)`` int64 of every excluded live item, by user."""
    row_of = matrix._id_to_row.get  # ItemMatrix.row without the method call
    lists = [[r for r in map(row_of, excl) if r is not None] for excl in exclude]
    counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    rows = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(counts.sum()))
    return np.repeat(np.arange(len(lists), dtype=np.int64), counts), rows


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Is each of ``keys`` among the ascending ``sorted_keys``?"""
    if not len(sorted_keys):
        return np.zeros(keys.shape, dtype=bool)
    at = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    return sorted_keys[at] == keys


def _member_t(rows: torch.Tensor, sorted_rows: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` bool: is ``rows[b, c]`` among the ascending ``sorted_rows[b]``?"""
    if not sorted_rows.shape[1]:
        return torch.zeros(rows.shape, dtype=torch.bool)
    at = torch.searchsorted(sorted_rows, rows).clamp(max=sorted_rows.shape[1] - 1)
    return sorted_rows.gather(1, at) == rows


def _padded(users: np.ndarray, values: np.ndarray, batch: int, fill: float | int, dtype: torch.dtype) -> torch.Tensor:
    """``(batch, width)``: each user's ``values`` (grouped by ``users``, ascending) in order, padded with ``fill``."""
    counts = np.bincount(users, minlength=batch)
    width = max(int(counts.max()) if batch else 0, 1)
    out = torch.full((batch, width), fill, dtype=dtype)
    if len(users):
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        col = np.arange(len(users)) - starts[users]
        out[torch.from_numpy(users), torch.from_numpy(col)] = torch.from_numpy(values).to(dtype)
    return out


class _ExactText:
    """The text signal of a batch from every row's cosine (one matrix product into a reused
    buffer): exact sums, exact candidates and a bound on the others (:func:`_text_candidates`)."""

    approximate = False

    def __init__(self, matrix: ItemMatrix, q: torch.Tensor, ex_b: np.ndarray, ex_r: np.ndarray, valid: torch.Tensor, ws: BlendWorkspace) -> None:
        batch, n_rows = int(q.shape[0]), matrix.rows_used
        text = self.scores = ws.get("text", (batch, n_rows))
        with torch.inference_mode():
            data = matrix.data
            if data.dtype == torch.float32 and data.device.type == "cpu":
                torch.mm(q, data.T, out=text)
            else:
                text.copy_((q.to(device=data.device, dtype=data.dtype) @ data.T).float().cpu())
        # the sums over the live rows less the excluded rows', of the deviations from about the
        # mean (a float32 sum of squares keeps its precision); then the excluded and free rows -inf
        live = len(matrix)
        free = (~valid).nonzero().squeeze(1)  # their vectors are zeroed: they score 0
        t1 = text.sum(dim=1, keepdim=True)
        center = t1 / live
        dev = torch.sub(text, center, out=ws.get("scratch", (batch, n_rows)))
        if len(free):
            dev[:, free] = 0.0
        t2 = dev.square_().sum(dim=1, keepdim=True).double()
        t1 = t1.double() - center.double() * live
        if len(ex_r):
            ex_bt, ex_rt = torch.from_numpy(ex_b), torch.from_numpy(ex_r)
            e = text[ex_bt, ex_rt].double() - center.double()[ex_bt, 0]
            t1 = t1.index_add(0, ex_bt, -e.unsqueeze(1))
            t2 = t2.index_add(0, ex_bt, -(e * e).unsqueeze(1))
            text[ex_bt, ex_rt] = -math.inf
        if len(free):
            text[:, free] = -math.inf
        self.t1, self.t2, self.center = t1, t2, center.double()

    def direct(self, who: torch.Tensor) -> None:
        """Sum the rows left to ``who`` directly (users who excluded most of the catalog: the
        difference of the sums over the catalog and over the excluded rows loses precision)."""
        x = self.dense(who)
        x = torch.where(torch.isfinite(x), x, 0.0)
        self.t1[who] = x.sum(dim=1, keepdim=True, dtype=torch.float64)
        self.t2[who] = (x * x).sum(dim=1, keepdim=True, dtype=torch.float64)
        self.center[who] = 0.0

    def candidates(self, k: int, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, _Groups | None]:
        return _text_candidates(self.scores, k, skip)

    def at(self, rows: torch.Tensor, who: torch.Tensor | None = None) -> torch.Tensor:
        return (self.scores if who is None else self.scores[who]).gather(1, rows)

    def dense(self, who: torch.Tensor) -> torch.Tensor:
        """``(len(who), rows)``: those users' cosines, ``-inf`` at free and excluded rows."""
        return self.scores[who]


class _IndexText:
    """The text signal of a batch from an approximate index (:class:`scoring.ann.IVFItemMatrix`
    once its catalog is large): the candidates are the index's nearest items, their cosines
    are computed one by one, and the sums over the catalog come from the sum of the item
    vectors and of their outer products (``q . S`` and ``q G q``): no pass over the catalog.
    There is no bound on the items the index did not propose: the ranking is approximate, as
    the text ranking's is with the index."""

    approximate = True

    def __init__(self, matrix: ItemMatrix, q: torch.Tensor, ex_b: np.ndarray, ex_r: np.ndarray, valid: torch.Tensor, ex_keys: np.ndarray) -> None:
        self.matrix, self.q, self.valid = matrix, q, valid
        self.ex_b, self.ex_r, self.ex_keys = ex_b, ex_r, ex_keys
        s, g = matrix.text_moments()  # type: ignore[attr-defined]
        q64 = q.double()
        t1 = (q64 @ s).unsqueeze(1)
        t2 = ((q64 @ g) * q64).sum(dim=1, keepdim=True)
        if len(ex_r):
            ex_bt = torch.from_numpy(ex_b)
            e = (matrix.data[torch.from_numpy(ex_r)].float().cpu() * q[ex_bt]).sum(dim=1).double()
            t1 = t1.index_add(0, ex_bt, -e.unsqueeze(1))
            t2 = t2.index_add(0, ex_bt, -(e * e).unsqueeze(1))
        self.t1, self.t2, self.center = t1, t2, torch.zeros_like(t1)
        self._found: torch.Tensor | None = None  # the index's rows (sorted) and scores: candidates()
        self._found_vals: torch.Tensor | None = None
        self._shared: torch.Tensor | None = None  # rows and scores of share()
        self._shared_vals: torch.Tensor | None = None

    def direct(self, who: torch.Tensor) -> None:
        x = self.dense(who)
        x = torch.where(torch.isfinite(x), x, 0.0)
        self.t1[who] = x.sum(dim=1, keepdim=True, dtype=torch.float64)
        self.t2[who] = (x * x).sum(dim=1, keepdim=True, dtype=torch.float64)

    def candidates(self, k: int, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, _Groups | None]:
        batch, n_rows = int(self.q.shape[0]), self.matrix.rows_used
        if k <= 0:
            return torch.full((batch, 0), n_rows, dtype=torch.long), torch.full((batch,), math.inf), None
        head = int(np.bincount(self.ex_b, minlength=batch).max()) if len(self.ex_b) else 0
        vals, found = self.matrix.search(self.q, min(k + head, len(self.matrix)))  # type: ignore[attr-defined]
        rows = torch.tensor(found, dtype=torch.long).reshape(batch, -1)
        rows = torch.where(rows < 0, n_rows, rows)
        # the index's scores of its rows, kept (sorted by row) for at()
        self._found, order = rows.sort(dim=1)
        self._found_vals = torch.tensor(vals, dtype=torch.float32).reshape(batch, -1).gather(1, order)
        keys = (torch.arange(batch).unsqueeze(1) * n_rows + rows).numpy()
        rows = torch.where(torch.from_numpy(_member(keys, self.ex_keys)) | skip.unsqueeze(1), n_rows, rows)
        return rows, torch.full((batch,), math.inf), None

    def share(self, rows: torch.Tensor) -> None:
        """Rows that many users have among their candidates (the popular and new items): their
        cosines with every query in one matrix product, for :meth:`at`."""
        self._shared = torch.unique(rows[rows < self.matrix.rows_used])
        data = self.matrix.data
        self._shared_vals = (self.q.to(device=data.device, dtype=data.dtype) @ data[self._shared.to(data.device)].T).float().cpu()

    def at(self, rows: torch.Tensor, who: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C)`` cosines at ``rows``: the index's score of a row it proposed, the
        product of :meth:`share` for a shared row, else a product of the row's vector."""
        q = self.q if who is None else self.q[who]
        out = torch.full(rows.shape, math.nan, dtype=torch.float32)
        if self._found is not None and self._found_vals is not None:
            found = self._found if who is None else self._found[who]
            vals = self._found_vals if who is None else self._found_vals[who]
            at = torch.searchsorted(found, rows).clamp(max=found.shape[1] - 1)
            hit = found.gather(1, at) == rows
            out = torch.where(hit, vals.gather(1, at), out)
        if self._shared is not None and self._shared_vals is not None and len(self._shared):
            shared = self._shared
            at = torch.searchsorted(shared, rows).clamp(max=len(shared) - 1)
            hit = (shared[at] == rows) & torch.isnan(out)
            vals = self._shared_vals if who is None else self._shared_vals[who]
            out = torch.where(hit, vals.gather(1, at), out)
        rest = torch.isnan(out).nonzero()
        if len(rest):
            data = self.matrix.data
            b, c = rest[:, 0], rest[:, 1]
            vec = data[rows[b, c].to(data.device)].float().cpu()
            out[b, c] = (vec * q[b]).sum(dim=1)
        return out

    def dense(self, who: torch.Tensor) -> torch.Tensor:
        m = self.matrix
        x = (self.q[who].to(device=m.device, dtype=m.dtype) @ m.data.T).float().cpu()
        x.masked_fill_(~self.valid.unsqueeze(0), -math.inf)
        sel = np.isin(self.ex_b, who.numpy())
        if sel.any():
            x[torch.from_numpy(np.searchsorted(who.numpy(), self.ex_b[sel])), torch.from_numpy(self.ex_r[sel])] = -math.inf
        return x


class BlendWorkspace:
    """Score buffers reused across calls of :func:`candidate_blend_topk` (a ``(B, N)``
    allocation per call costs page faults of its own at large catalogs)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, int]) -> torch.Tensor:
        buf = self._buffers.get(name)
        size = shape[0] * shape[1]
        if buf is None or buf.numel() < size:
            buf = self._buffers[name] = torch.empty(size, dtype=torch.float32)
        return buf[:size].view(shape)


def candidate_blend_topk(
    matrix: ItemMatrix,
    queries: np.ndarray,
    k: int,
    exclude: Sequence[Collection[str]],
    weights: BlendWeights,
    cooccurrence: Sequence[tuple[np.ndarray, np.ndarray]],
    popularity: torch.Tensor | SnapshotPopularity,
    popular_rows: torch.Tensor | None = None,
    *,
    text_candidates: int = TEXT_CANDIDATES,
    stats: CandidateStats | None = None,
    row_weights: np.ndarray | None = None,
    grid: np.ndarray | None = None,
    alternatives: list[np.ndarray] | None = None,
    workspace: BlendWorkspace | None = None,
    new_rows: np.ndarray | None = None,
    raw: bool = False,
) -> list[TopK] | tuple[torch.Tensor, torch.Tensor]:
    """The z-score blend's top-``k`` in two stages: candidates first, then only they are ranked.

    Each user's candidates are every item with co-occurrence evidence (``cooccurrence``:
    the sparse ``(rows, scores)`` of each user), their ``text_candidates`` nearest items
    by text (so an item with text and no interactions yet can be found; a few more where
    that is free, see :func:`_text_candidates`), and the currently most popular items
    (``popular_rows``, ``(B, P)`` in any order, or the popularity's own), minus the excluded
    items.  The z-score of each signal is still taken over *all* the user's candidates of
    the dense ranking (every live item not excluded), from sums over the catalog and the
    excluded items, so a candidate's blended score is the dense one.  An item that is not a
    candidate has no co-occurrence, text at most the text candidates' bound and popularity at
    most the popular items', which bounds its blended score (per group of rows: see
    :func:`_text_candidates`).  A user whose k-th candidate scores below that bound (the
    sources miss an item that could rank) gets a second round: every item whose text could
    still lift it above the k-th is added (a pass over the user's cosines), or, where that is
    not possible (no text profile, fewer candidates than ``k``, too many items), the user is
    ranked densely; so the result is always the exact top-k of :func:`blend_score_topk` (up
    to float rounding of ties).  Where the matrix searches an approximate index
    (:class:`scoring.ann.IVFItemMatrix` once its catalog is large), the text candidates are
    the index's (no cosine of every row, no bound: the lists are approximate, as the text
    ranking's are with the index).

    ``popularity`` is ``(B, rows_used)`` (with ``popular_rows``), or a
    :class:`SnapshotPopularity` (the engine's: the values of the candidates and the sums over
    the catalog without a dense tensor).  Only the z-score normalisation has this form (a
    rank needs every item's score): call :func:`blend_score_topk` for ``"rank"``.

    ``row_weights`` (``(B, 3)``: text, co-occurrence, popularity) ranks each user with its
    own weights instead of ``weights``'.  With ``grid`` (``(B, G, 3)``: other weightings of
    each user, :mod:`scoring.adapt`), the top-``k`` of every one of them over the user's
    candidates is appended to ``alternatives``: one ``(G, k)`` int32 array of matrix rows per
    user (-1 past the user's candidates).  ``workspace`` keeps the score buffers between calls.
    ``new_rows`` (matrix rows, e.g. :meth:`NewItems.rows`) are candidates of every user too.
    ``raw``: return the ``(B, min(k, rows))`` float32 scores and matrix rows instead of the
    lists (best first; cut each user's at its first ``-inf`` score or free row, as the lists
    are).
    """
    if weights.normalization != "zscore":
        raise ValueError("the two-stage blend ranks the z-score normalisation only")
    batch = len(exclude)
    if len(cooccurrence) != batch or batch != len(queries):
        raise ValueError(f"{len(queries)} queries, {len(exclude)} exclusion sets and {len(cooccurrence)} co-occurrence vectors")
    if batch == 0 or k <= 0 or len(matrix) == 0:
        if raw:
            return torch.zeros((batch, 0), dtype=torch.float32), torch.zeros((batch, 0), dtype=torch.long)
        return [[] for _ in range(batch)]
    n_rows = matrix.rows_used
    if isinstance(popularity, SnapshotPopularity):
        if len(popularity) != batch or popularity.states.n_rows != n_rows:
            raise ValueError(f"popularity: {len(popularity)} snapshots over {popularity.states.n_rows} rows, expected {batch} over {n_rows}")
        pop: SnapshotPopularity | _DensePopularity = popularity
    else:
        if popular_rows is None:
            raise ValueError("popular_rows: needed with a popularity tensor")
        pop = _DensePopularity(_as_batch(popularity, (batch, n_rows), "popularity"), popular_rows)
    valid = matrix.valid.cpu()
    if row_weights is None:
        w_text, w_co, w_pop = weights.as_tuple()
    else:
        if row_weights.shape != (batch, 3):
            raise ValueError(f"row_weights: expected shape ({batch}, 3), got {row_weights.shape}")
        w = torch.from_numpy(np.asarray(row_weights, dtype=np.float64))
        w_text, w_co, w_pop = w[:, 0:1], w[:, 1:2], w[:, 2:3]  # type: ignore[assignment]

    # the excluded live rows of each user, as sorted keys user * n_rows + row
    ex_b, ex_r = _flat_exclusions(matrix, exclude)
    ex_keys = np.sort(ex_b * n_rows + ex_r)
    ex_n = np.bincount(ex_b, minlength=batch)
    n = (len(matrix) - torch.from_numpy(ex_n).double()).clamp(min=1).unsqueeze(1)

    # text: exact (every row's cosine) or from an approximate index where the matrix has one
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    if q.ndim != 2 or q.shape[1] != matrix.dim:
        raise ValueError(f"queries have shape {tuple(q.shape)}, expected (B, {matrix.dim})")
    txt: _ExactText | _IndexText
    if getattr(matrix, "approximate", False) and hasattr(matrix, "text_moments"):
        txt = _IndexText(matrix, q, ex_b, ex_r, valid, ex_keys)
    else:
        txt = _ExactText(matrix, q, ex_b, ex_r, valid, workspace or BlendWorkspace())
    live = len(matrix)
    direct = torch.from_numpy(2 * ex_n > live).nonzero().squeeze(1)
    if len(direct):
        txt.direct(direct)
    coef_t, off_t = _zscore_coefficients(w_text, txt.t1, txt.t2, n, center=txt.center)
    inv_t = _zscore_coefficients(1.0, txt.t1, txt.t2, n, center=txt.center)[0]

    # popularity: sums over the catalog less the excluded rows'
    p1, p2 = pop.sums()
    if len(ex_r):
        e = pop.at(_padded(ex_b, ex_r, batch, 0, torch.long))
        e = torch.where(torch.from_numpy(np.arange(e.shape[1])[None, :] < ex_n[:, None]), e, 0.0).double()
        p1 = p1 - e.sum(dim=1, keepdim=True)
        p2 = p2 - (e * e).sum(dim=1, keepdim=True)
    if len(direct):
        pd = torch.where(torch.isfinite(txt.dense(direct)), pop.dense(direct), 0.0)
        p1[direct] = pd.sum(dim=1, keepdim=True, dtype=torch.float64)
        p2[direct] = (pd * pd).sum(dim=1, keepdim=True, dtype=torch.float64)
    coef_p, off_p = _zscore_coefficients(w_pop, p1, p2, n)
    inv_p = _zscore_coefficients(1.0, p1, p2, n)[0]

    # co-occurrence: the evidence of the rows that are not excluded
    co_n = np.fromiter((len(r) for r, _ in cooccurrence), dtype=np.int64, count=batch)
    co_b = np.repeat(np.arange(batch, dtype=np.int64), co_n)
    co_r = np.concatenate([r for r, _ in cooccurrence]).astype(np.int64, copy=False) if co_n.sum() else np.empty(0, np.int64)
    co_v = np.concatenate([v for _, v in cooccurrence]).astype(np.float64, copy=False) if co_n.sum() else np.empty(0)
    keep = ~_member(co_b * n_rows + co_r, ex_keys)
    co_b, co_r, co_v = co_b[keep], co_r[keep], co_v[keep]
    c1 = torch.from_numpy(np.bincount(co_b, weights=co_v, minlength=batch)).unsqueeze(1)
    c2 = torch.from_numpy(np.bincount(co_b, weights=co_v * co_v, minlength=batch)).unsqueeze(1)
    coef_c, off_c = _zscore_coefficients(w_co, c1, c2, n)
    inv_c = _zscore_coefficients(1.0, c1, c2, n)[0]
    offset = off_t + off_c + off_p

    # stage 1: candidates (co-occurrence first, so that a row's first occurrence carries its evidence)
    ct = coef_t.squeeze(1).float()
    no_text = (ct == 0) | (text_candidates <= 0)
    t_rows, t_bound, groups = txt.candidates(text_candidates, ct == 0)
    popular = pop.popular_rows().to(torch.long)
    p_rows = popular
    if p_rows.shape[1] and len(ex_keys):
        pk = (torch.arange(batch).unsqueeze(1) * n_rows + p_rows).numpy()
        p_rows = torch.where(torch.from_numpy(_member(pk, ex_keys)), n_rows, p_rows)
    if new_rows is not None and len(new_rows):
        nr = np.asarray(new_rows, dtype=np.int64)
        nk = np.arange(batch, dtype=np.int64)[:, None] * n_rows + nr[None, :]
        n_rows_t = torch.from_numpy(np.where(_member(nk, ex_keys), n_rows, nr[None, :]))
        p_rows = torch.cat([p_rows, n_rows_t], dim=1)
    if txt.approximate:
        txt.share(p_rows)  # type: ignore[union-attr]
    co_rows = _padded(co_b, co_r, batch, n_rows, torch.long)
    co_vals = _padded(co_b, co_v, batch, 0.0, torch.float32)
    cand, order = torch.sort(torch.cat([co_rows, t_rows, p_rows], dim=1), dim=1, stable=True)
    co = torch.cat([co_vals, torch.zeros((batch, t_rows.shape[1] + p_rows.shape[1]))], dim=1).gather(1, order)
    pad = cand >= n_rows
    safe = torch.where(pad, 0, cand)
    dup = torch.zeros_like(pad)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    usable = ~pad & ~dup & torch.take(valid, safe)  # valid[safe], a few times faster
    # stage 2: the blend of the candidates, as the dense ranking computes it
    t_vals = torch.where(usable, txt.at(safe), 0.0)
    p_vals = pop.at(safe)
    total = t_vals * ct.unsqueeze(1)
    total.addcmul_(co, coef_c.float())
    total.addcmul_(p_vals, coef_p.float())
    total.masked_fill_(~usable, -math.inf)
    kk = min(k, n_rows)
    if total.shape[1] < kk:  # fewer candidates than k: pad (the dense ranking decides those users)
        total = torch.nn.functional.pad(total, (0, kk - total.shape[1]), value=-math.inf)
        usable = torch.nn.functional.pad(usable, (0, kk - usable.shape[1]), value=False)
        t_vals, co, p_vals = (torch.nn.functional.pad(v, (0, kk - v.shape[1])) for v in (t_vals, co, p_vals))
        safe = torch.nn.functional.pad(safe, (0, kk - safe.shape[1]), value=0)
    values, pos = torch.topk(total, kk, dim=1)
    rows = safe.gather(1, pos)
    # an item that is no candidate has no co-occurrence, text at most the text bound and its
    # group's largest (-inf: the group has no live item that is not excluded), popularity at
    # most the largest of its group outside the popular rows: its blended score is at most
    # the largest of these over the groups (-inf: every item is a candidate)
    cp = coef_p.squeeze(1).float()
    kth = values[:, -1]
    widened = torch.zeros(batch, dtype=torch.bool)
    if groups is None:
        # an approximate index proposed the text candidates: no bound on the others; a user
        # with fewer than k candidates while more items are left is ranked densely
        left = (live - torch.from_numpy(ex_n)) > usable.sum(dim=1)
        unsure = (kth == -math.inf) & left
    else:
        gx = groups.text_max
        assert gx is not None
        p_term = torch.where(cp.unsqueeze(1) > 0, pop.group_max(groups) * cp.unsqueeze(1), 0.0)
        term = torch.where(gx > -math.inf, torch.minimum(gx, t_bound.unsqueeze(1)) * ct.unsqueeze(1) + p_term, -math.inf)
        # the rows after the last full group (and every row, where all are) are text candidates
        term[:, groups.count].masked_fill_(~no_text, -math.inf)
        if groups.every:
            term.masked_fill_(~no_text.unsqueeze(1), -math.inf)
        bound = term.amax(dim=1)
        bound = bound + 1e-6 * bound.abs()  # float rounding: the terms are not summed as the scores are
        unsure = (kth < bound) | ((kth == -math.inf) & (bound > -math.inf))
    if groups is not None and bool(unsure.any()):
        # second round: an item that is no candidate scores at most ct * text + the largest
        # popularity term outside the popular rows, so every item with text above
        # (kth - that) / ct, taken too, proves the top-k (a pass over the user's scores)
        who = unsure.nonzero().squeeze(1)
        p_max = p_term[who].amax(dim=1)
        c_w, k_w = ct[who], kth[who]
        limit = (k_w - p_max) / torch.where(c_w > 0, c_w, 1.0)
        limit = limit - 1e-5 * (k_w.abs() + p_max.abs() + 1.0) / torch.where(c_w > 0, c_w, 1.0)  # float rounding
        x = txt.dense(who)
        above = x >= limit.unsqueeze(1)
        count = above.sum(dim=1)
        ok = (c_w > 0) & (k_w > -math.inf) & (p_max < math.inf) & (count <= _WIDEN_MAX)
        if bool(ok.any()):
            sel = ok.nonzero().squeeze(1)
            w2 = who[sel]
            width = max(int(count[sel].max()), 1)
            _, at = torch.topk(above[sel].to(torch.uint8), min(width, n_rows), dim=1, sorted=False)
            extra = at
            fresh = above[sel].gather(1, at) & ~_member_t(extra, cand[w2])
            # (no co-occurrence: a row with some is a candidate already)
            e_total = torch.where(fresh, x[sel].gather(1, extra), 0.0) * ct[w2].unsqueeze(1)
            e_total.addcmul_(pop.at(extra, w2), coef_p[w2].float())
            e_total.masked_fill_(~fresh, -math.inf)
            all_total = torch.cat([total[w2], e_total], dim=1)
            all_rows = torch.cat([safe[w2], extra], dim=1)
            v2, p2 = torch.topk(all_total, kk, dim=1)
            values[w2], rows[w2] = v2, all_rows.gather(1, p2)
            widened[w2] = True
    if len(who := (unsure & ~widened).nonzero().squeeze(1)):
        dense = txt.dense(who).mul_(ct[who].unsqueeze(1))
        co_full = torch.zeros((len(who), n_rows), dtype=torch.float32)
        hit = np.isin(co_b, who.numpy())
        if hit.any():
            j = np.searchsorted(who.numpy(), co_b[hit])
            co_full[torch.from_numpy(j), torch.from_numpy(co_r[hit])] = torch.from_numpy(co_v[hit].astype(np.float32))
        dense.addcmul_(co_full, coef_c[who].float())
        dense.addcmul_(pop.dense(who), coef_p[who].float())
        off = torch.zeros((len(who), n_rows), dtype=torch.bool)
        hit = np.isin(ex_b, who.numpy())
        if hit.any():
            off[torch.from_numpy(np.searchsorted(who.numpy(), ex_b[hit])), torch.from_numpy(ex_r[hit])] = True
        dense.masked_fill_(~valid | off, -math.inf)
        values[who], rows[who] = torch.topk(dense, kk, dim=1)
    if grid is not None and alternatives is not None:
        alternatives.extend(_grid_lists(grid, k, usable, safe, [(t_vals, inv_t), (co, inv_c), (p_vals, inv_p)]))
    if stats is not None:
        stats.users += batch
        stats.candidates += int(usable.sum())
        stats.dense += int((unsure & ~widened).sum())
        stats.widened += int(widened.sum())

    if raw:
        return (values.double() - offset).float(), rows
    return _lists(matrix, (values.double() - offset).float(), rows)


def _grid_lists(grid: np.ndarray, k: int, usable: torch.Tensor, rows: torch.Tensor, signals: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[np.ndarray]:
    """Each user's top-``k`` candidate rows under each of its ``grid`` weightings
    (``(B, G, 3)``), from the candidates' ``(values, 1 / std)`` of every signal."""
    batch = int(rows.shape[0])
    g = torch.from_numpy(np.asarray(grid, dtype=np.float32))
    if tuple(g.shape[::2]) != (batch, 3):
        raise ValueError(f"grid: expected shape ({batch}, G, 3), got {tuple(g.shape)}")
    z = torch.empty((*rows.shape, len(signals)), dtype=torch.float32)  # (B, C, 3)
    for s, (values, inv_std) in enumerate(signals):
        torch.mul(values, inv_std.float(), out=z[:, :, s])
    scores = torch.einsum("bcs,bgs->bgc", z, g).masked_fill_(~usable.unsqueeze(1), -math.inf)
    kk = min(k, int(scores.shape[2]))
    values, pos = torch.topk(scores, kk, dim=2)
    top = rows.unsqueeze(1).expand(-1, g.shape[1], -1).gather(2, pos)
    top = torch.where(values == -math.inf, -1, top).to(torch.int32)
    if kk < k:
        top = torch.nn.functional.pad(top, (0, k - kk), value=-1)
    return list(top.numpy())
