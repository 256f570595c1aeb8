"""What the scoring engine holds about one user in memory, and how to drop it.

Pure code, no Kafka.  Per-user state of :class:`scoring.engine.Engine` outside the profile
(which lives in the worker's ``profiles`` table) is the live-quality test's held list
(:class:`scoring.prequential.Prequential`: the list the user was last sent, with the
other weightings' lists, and the last event tested).  Everything else the engine keeps is
an aggregate over users: popularity counts, item-to-item co-occurrence rows, the
adaptive blend's weights per input partition and the live-quality totals.
"""

from __future__ import annotations

from typing import Any


def forget_user(engine: Any, user_id: str) -> bool:
    """Drop ``user_id``'s per-user state from ``engine`` (call on the compute thread);
    True when there was any.  The user's next event then counts as a cold start in the
    live-quality figures, as a new user's does."""
    prequential = engine.prequential
    held = prequential._held.pop(user_id, None)
    last = prequential._last.pop(user_id, None)
    return held is not None or last is not None
