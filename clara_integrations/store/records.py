"""Plain records returned by the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Hit", "Node"]


@dataclass(frozen=True, slots=True)
class Node:
    """A stored node: its id, text and metadata (its memory is fetched separately)."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result. ``score`` is the exact cosine between query and memory."""

    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
