"""LlamaIndex components that pickle with the model and store they were built with.

LlamaIndex's `BaseComponent` pickles by dropping every attribute that does not pickle
(with a log line) and unpickles by calling ``__init__`` with the public fields only: a
component built with ``model=my_model`` came back holding the *shipped default* model.
Our components keep pydantic's own state handling instead; their model and store pickle
by reference (clara_integrations/_sharing.py) or refuse with `NotPicklableError`.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import BaseModel

__all__ = ["PicklesWhole"]


class PicklesWhole:
    """Mixin placed before the LlamaIndex base class."""

    def __getstate__(self) -> dict[str, Any]:
        return BaseModel.__getstate__(self)  # type: ignore[arg-type]

    def __setstate__(self, state: dict[str, Any]) -> None:
        BaseModel.__setstate__(self, state)  # type: ignore[arg-type]
