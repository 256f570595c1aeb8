"""Scoring: item matrix + batched top-k (:mod:`scoring.topk`) and decayed popularity
(:mod:`scoring.popularity`).

:mod:`scoring.popularity` is pure Python and imported eagerly; :mod:`scoring.topk`
(torch) is imported on first use of its names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recstream.scoring.popularity import DecayedPopularity, PopularityFormatError

if TYPE_CHECKING:
    from recstream.scoring.topk import ItemMatrix, Recommendation, TopK, default_dtype, score_topk

_TOPK_NAMES = frozenset({"ItemMatrix", "Recommendation", "TopK", "default_dtype", "score_topk"})

__all__ = ["DecayedPopularity", "PopularityFormatError", *sorted(_TOPK_NAMES)]


def __getattr__(name: str) -> Any:
    if name in _TOPK_NAMES:
        from recstream.scoring import topk

        return getattr(topk, name)
    raise AttributeError(f"module 'scoring' has no attribute {name!r}")
