"""Encoders: text embeddings (:mod:`encoders.text`) and user profiles (:mod:`encoders.profile`).

:mod:`encoders.profile` needs only numpy/orjson and is imported eagerly; the text
encoder (torch + transformers) is imported on first use of its names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recstream.encoders.profile import (
    EVENT_KINDS,
    DecayedProfileModel,
    HistoryEntry,
    ProfileConfig,
    ProfileFormatError,
    ProfileModel,
    UserProfile,
    new_profile,
    review_polarity,
)

if TYPE_CHECKING:
    from recstream.encoders.text import (
        ITEM_TEXT_FIELDS,
        DeviceUnavailableError,
        ModelNotFoundError,
        TextEncoder,
        default_model_path,
        item_text,
        resolve_device,
    )

_TEXT_NAMES = frozenset(
    {
        "ITEM_TEXT_FIELDS",
        "DeviceUnavailableError",
        "ModelNotFoundError",
        "TextEncoder",
        "default_model_path",
        "item_text",
        "resolve_device",
    }
)

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
    *sorted(_TEXT_NAMES),
]


def __getattr__(name: str) -> Any:
    if name in _TEXT_NAMES:
        from recstream.encoders import text

        return getattr(text, name)
    raise AttributeError(f"module 'encoders' has no attribute {name!r}")
