"""User profiles: a time-decayed, weighted sum of interaction embeddings.

A profile is the vector ``sum_i w_i * e_i * 0.5 ** ((T - t_i) / H)`` over a user's
events ``i`` (embedding ``e_i``, weight ``w_i``, event time ``t_i`` in ms), taken
at the reference time ``T`` = the latest event time seen, with half-life ``H``.
It is maintained incrementally and the result does not depend on the order in
which events arrive (late events are decayed to ``T`` before being added).

The scoring side only needs :class:`ProfileModel` (``apply`` + ``query``), so a
learned model can replace :class:`DecayedProfileModel` later.

Profiles serialize to a compact versioned binary (orjson metadata + raw
little-endian float32 vector); pickle is never used.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np
import orjson

from recstream.scoring.binary import HEADER, pack_header, unpack_header
from recstream.scoring.records import DAY_MS

__all__ = [
    "EVENT_KINDS",
    "DecayedProfileModel",
    "HistoryEntry",
    "ProfileConfig",
    "ProfileFormatError",
    "ProfileModel",
    "UserProfile",
    "new_profile",
    "review_polarity",
]

EventKind = Literal["click", "purchase", "review"]
#: Event kinds understood by :meth:`DecayedProfileModel.apply`.
EVENT_KINDS: Final[frozenset[str]] = frozenset({"click", "purchase", "review"})

# Binary layout: MAGIC (2 bytes) | version (1 byte) | metadata length (uint32 LE)
#                | orjson metadata | vector as float32 LE (dim * 4 bytes).
_MAGIC: Final = b"RP"
_VERSION: Final = 1
_F32_LE: Final = np.dtype("<f4")


class ProfileFormatError(ValueError):
    """Serialized profile bytes are malformed or of an unknown format version."""


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """Parameters of :class:`DecayedProfileModel`.

    Attributes:
        half_life_ms: an event's weight halves every ``half_life_ms`` (default 30 days).
        click_weight: weight of a click on the item embedding.
        purchase_weight: weight of a purchase on the item embedding.
        review_item_weight: weight of a review's polarity on the item embedding.
        review_text_weight: weight of a review's polarity on the review-text embedding.
        history_len: number of history entries kept (most recent by event time).
        min_norm: profiles whose vector norm is below this give no query.
    """

    half_life_ms: int = 30 * DAY_MS
    click_weight: float = 1.0
    purchase_weight: float = 2.0
    review_item_weight: float = 1.5
    review_text_weight: float = 1.0
    history_len: int = 50
    min_norm: float = 1e-6

    def __post_init__(self) -> None:
        if not (self.half_life_ms > 0 and math.isfinite(self.half_life_ms)):
            raise ValueError(f"half_life_ms must be positive, got {self.half_life_ms}")
        if self.history_len < 0:
            raise ValueError(f"history_len must be >= 0, got {self.history_len}")
        if not self.min_norm >= 0:
            raise ValueError(f"min_norm must be >= 0, got {self.min_norm}")
        for name in ("click_weight", "purchase_weight", "review_item_weight", "review_text_weight"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")


class HistoryEntry(NamedTuple):
    """One applied event, as kept in :attr:`UserProfile.history`.

    An immutable named tuple ``(item_id, ts, kind, rating)``: a profile read from the table
    builds up to ``history_len`` of them per event of the worker, and a tuple is built
    several times faster than a frozen dataclass.
    """

    item_id: str
    ts: int
    kind: str
    rating: float | None = None


@dataclass(slots=True, eq=False)
class UserProfile:
    """State of one user's profile.

    Attributes:
        user_id: the user.
        vector: float32 ``(dim,)`` un-normalized decayed sum, decayed to ``ref_ts``.
        ref_ts: the time (ms) ``vector`` is decayed to: the latest event time seen.
        history: the last ``history_len`` events by event time, most recent last.
        purchased: every item the user bought.
        applied: number of events applied.
        offsets: last applied offset per input ``"topic:partition"``.
        updated_ts: event time (ms) of the most recently *applied* event (arrival
            order; differs from ``ref_ts`` when events arrive late).
    """

    user_id: str
    vector: np.ndarray
    ref_ts: int = 0
    history: list[HistoryEntry] = field(default_factory=list)
    purchased: set[str] = field(default_factory=set)
    applied: int = 0
    offsets: dict[str, int] = field(default_factory=dict)
    updated_ts: int = 0

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])

    def is_duplicate(self, source: str, offset: int) -> bool:
        """True when ``offset`` of ``source`` is at or before the last one applied."""
        last = self.offsets.get(source)
        return last is not None and offset <= last

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserProfile):
            return NotImplemented
        return (
            self.user_id == other.user_id
            and self.vector.dtype == other.vector.dtype
            and np.array_equal(self.vector, other.vector)
            and self.ref_ts == other.ref_ts
            and self.history == other.history
            and self.purchased == other.purchased
            and self.applied == other.applied
            and self.offsets == other.offsets
            and self.updated_ts == other.updated_ts
        )

    # -------------------------------------------------------------- serialization
    def to_bytes(self) -> bytes:
        """Versioned binary form (orjson metadata + little-endian float32 vector)."""
        meta = orjson.dumps(
            {
                "user_id": self.user_id,
                "dim": self.dim,
                "ref_ts": self.ref_ts,
                "applied": self.applied,
                "updated_ts": self.updated_ts,
                "offsets": self.offsets,
                "purchased": sorted(self.purchased),
                "history": [list(h) for h in self.history],  # [item_id, ts, kind, rating]
            }
        )
        vec = np.ascontiguousarray(self.vector, dtype=_F32_LE).tobytes()
        return pack_header(_MAGIC, _VERSION, len(meta)) + meta + vec

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> UserProfile:
        """Inverse of :meth:`to_bytes`; raises :class:`ProfileFormatError` on bad input."""
        buf, meta_len = unpack_header(data, _MAGIC, _VERSION, ProfileFormatError, short="profile", name="UserProfile")
        start = HEADER.size
        try:
            meta: dict[str, Any] = orjson.loads(buf[start : start + meta_len])
            dim = int(meta["dim"])
            raw = buf[start + meta_len :]
            if len(raw) != dim * 4:
                raise ProfileFormatError(f"vector has {len(raw)} bytes, expected {dim * 4} for dim {dim}")
            vector = np.frombuffer(raw, dtype=_F32_LE).astype(np.float32)
            return cls(
                user_id=meta["user_id"],
                vector=vector,
                ref_ts=int(meta["ref_ts"]),
                history=_history(meta["history"]),
                purchased=set(meta["purchased"]),
                applied=int(meta["applied"]),
                offsets={str(k): int(v) for k, v in meta["offsets"].items()},
                updated_ts=int(meta["updated_ts"]),
            )
        except ProfileFormatError:
            raise
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise ProfileFormatError(f"malformed UserProfile bytes: {exc}") from exc


def _history(entries: list[Any]) -> list[HistoryEntry]:
    """History entries from their serialized ``[item_id, ts, kind, rating]`` lists."""
    history = list(map(_make_entry, entries))  # TypeError for a list of the wrong length
    if not all(type(h[1]) is int for h in history):  # only what an older writer may have left
        history = [HistoryEntry(h[0], int(h[1]), h[2], h[3]) for h in history]
    return history


_make_entry = HistoryEntry._make


def new_profile(user_id: str, dim: int) -> UserProfile:
    """An empty profile (zero vector of ``dim`` float32)."""
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    return UserProfile(user_id=user_id, vector=np.zeros(dim, dtype=np.float32))


def review_polarity(rating: float | None) -> float:
    """Map a 1..5 star rating to ``(r - 3) / 2`` in [-1, 1] (clipped); ``None`` -> 0."""
    if rating is None:
        return 0.0
    r = float(rating)
    if not math.isfinite(r):
        raise ValueError(f"rating must be finite, got {rating!r}")
    return min(1.0, max(-1.0, (r - 3.0) / 2.0))


@runtime_checkable
class ProfileModel(Protocol):
    """What the pipeline needs from a user profile model."""

    @property
    def name(self) -> str:
        """The model's name (a class attribute of the implementations)."""
        ...

    def new_profile(self, user_id: str) -> UserProfile:
        """A fresh profile for ``user_id``."""
        ...

    def apply(
        self,
        profile: UserProfile,
        *,
        kind: str,
        item_id: str,
        ts: int,
        item_vec: np.ndarray | None,
        text_vec: np.ndarray | None,
        rating: float | None,
        source: str | None = None,
        offset: int | None = None,
    ) -> None:
        """Apply one event to ``profile`` in place (records ``source``/``offset``)."""
        ...

    def query(self, profile: UserProfile) -> np.ndarray | None:
        """Unit-norm float32 query vector, or ``None`` when the profile is unusable."""
        ...


class DecayedProfileModel:
    """Exponentially time-decayed weighted sum of item/review-text embeddings.

    Contributions (``e`` = item embedding, ``x`` = review-text embedding):

    * click: ``click_weight * e``
    * purchase: ``purchase_weight * e`` (and the item joins ``purchased``)
    * review with rating ``r``: ``s * review_item_weight * e + s * review_text_weight * x``
      with polarity ``s = (r - 3) / 2`` (1 star pulls away, 3 is neutral, 5 pulls toward;
      a review without rating is neutral).

    A missing ``item_vec`` (item not in the catalog) or ``text_vec`` drops only that
    term; the event is still recorded (history, purchased, applied, offsets).
    ``text_vec`` is ignored for clicks and purchases.
    """

    name: ClassVar[str] = "decayed-sum"

    def __init__(self, config: ProfileConfig | None = None, dim: int = 384) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.config = config if config is not None else ProfileConfig()
        self.dim = dim

    def __repr__(self) -> str:
        return f"DecayedProfileModel(config={self.config!r}, dim={self.dim})"

    def new_profile(self, user_id: str) -> UserProfile:
        return new_profile(user_id, self.dim)

    def decay(self, dt_ms: float) -> float:
        """Decay factor ``0.5 ** (dt_ms / half_life_ms)`` for a time span ``dt_ms >= 0``."""
        return 0.5 ** (dt_ms / self.config.half_life_ms)

    def apply(
        self,
        profile: UserProfile,
        *,
        kind: str,
        item_id: str,
        ts: int,
        item_vec: np.ndarray | None,
        text_vec: np.ndarray | None,
        rating: float | None,
        source: str | None = None,
        offset: int | None = None,
    ) -> None:
        """Apply one event to ``profile`` in place.  See the class docstring."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {sorted(EVENT_KINDS)}")
        if profile.vector.shape != (self.dim,):
            raise ValueError(f"profile of user {profile.user_id!r} has dim {profile.vector.shape}, model has {self.dim}")
        ts = int(ts)
        cfg = self.config

        # Terms contributed by this event: (weight, embedding).
        terms: list[tuple[float, np.ndarray]] = []
        if kind == "click":
            if item_vec is not None:
                terms.append((cfg.click_weight, self._check(item_vec, "item_vec")))
        elif kind == "purchase":
            if item_vec is not None:
                terms.append((cfg.purchase_weight, self._check(item_vec, "item_vec")))
        else:
            s = review_polarity(rating)
            if s != 0.0:
                if item_vec is not None:
                    terms.append((s * cfg.review_item_weight, self._check(item_vec, "item_vec")))
                if text_vec is not None:
                    terms.append((s * cfg.review_text_weight, self._check(text_vec, "text_vec")))

        # Move the reference time forward to the newest event (decaying the sum), or
        # decay a late event back to the reference time.
        if profile.applied == 0 or ts >= profile.ref_ts:
            if profile.applied > 0 and ts > profile.ref_ts:
                profile.vector *= np.float32(self.decay(ts - profile.ref_ts))
            profile.ref_ts = ts
            factor = 1.0
        else:
            factor = self.decay(profile.ref_ts - ts)
        if terms and factor > 0.0:
            if len(terms) == 1:  # a click or purchase: the same sum without the zeros to add to
                acc = terms[0][0] * terms[0][1]
            else:
                acc = np.zeros(self.dim, dtype=np.float64)
                for w, vec in terms:
                    acc += w * vec
            profile.vector += (acc * factor).astype(np.float32)

        entry = HistoryEntry(item_id=item_id, ts=ts, kind=kind, rating=None if rating is None else float(rating))
        history = profile.history
        # Keep history sorted by event time (ties: arrival order), newest last.
        if not history or ts >= history[-1].ts:
            history.append(entry)
        else:
            history.insert(bisect.bisect_right(history, ts, key=lambda h: h.ts), entry)
        if len(history) > cfg.history_len:
            del history[: len(history) - cfg.history_len]

        if kind == "purchase":
            profile.purchased.add(item_id)
        profile.applied += 1
        profile.updated_ts = ts
        if source is not None and offset is not None:
            profile.offsets[source] = int(offset)

    def query(self, profile: UserProfile) -> np.ndarray | None:
        """``vector / ||vector||`` as float32, or ``None`` if the norm is below ``min_norm``."""
        vec = profile.vector.astype(np.float64)
        norm = math.sqrt(float(vec.dot(vec)))  # what np.linalg.norm computes for a vector, without its checks
        if not math.isfinite(norm) or norm < self.config.min_norm or norm == 0.0:
            return None
        return (vec / norm).astype(np.float32)

    def _check(self, vec: np.ndarray, what: str) -> np.ndarray:
        arr = np.asarray(vec, dtype=np.float64).reshape(-1)
        if arr.shape != (self.dim,):
            raise ValueError(f"{what} has shape {np.shape(vec)}, expected ({self.dim},)")
        return arr
