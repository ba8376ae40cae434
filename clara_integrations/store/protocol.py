"""`MemoryStoreProtocol`: what the pipeline and the framework adapters need of a store.

`clara_integrations.store.MemoryStore` (one machine) implements it, and so does
`clara_integrations.store.MilvusMemoryStore` (a Milvus collection). Only these members are used; persistence (`persist`, `load`) is a
backend's own business.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from .config import StoreConfig
    from .records import Hit, Node

__all__ = ["MemoryStoreProtocol"]


@runtime_checkable
class MemoryStoreProtocol(Protocol):
    """Nodes (id, text, metadata) with their memory ``(n_mem, H)``, searchable by cosine.

    Semantics are `MemoryStore`'s: ids are strings and never reused, `search` returns
    exact cosines best first with filters (``{"key": value}``, ``$in``...) applied before
    the top-k cut, reads return CPU tensors in the store's dtype, and a missing id raises
    `NodeNotFoundError`.

    Example:
        >>> from clara_integrations.store import MemoryStore
        >>> isinstance(MemoryStore(n_mem=2, hidden_size=4), MemoryStoreProtocol)
        True
    """

    @property
    def config(self) -> StoreConfig:
        """Shape (``n_mem``, ``hidden_size``, ``dim``), dtype and ``model_identity``."""

    @property
    def fingerprint(self) -> str:
        """Model identity + shape + dtype, named in mismatch errors."""

    def __len__(self) -> int:
        """Live nodes."""

    def __contains__(self, node_id: object) -> bool:
        """Whether `node_id` is a live node."""

    def check_model(self, model: Any) -> None:
        """Raise `StoreMismatchError` unless `model` wrote (or can write) this memory."""

    def search(
        self, query_vectors: torch.Tensor, k: int = 10, filters: Mapping[str, Any] | None = None
    ) -> list[list[Hit]]:
        """Top-`k` hits per query row ``(B, n_mem * H)``, best first."""

    def ids_where(self, filters: Mapping[str, Any] | None = None) -> list[str]:
        """Ids of every node matching `filters` (all without), sorted."""

    def get_memories(self, ids: Sequence[str]) -> torch.Tensor:
        """``(len(ids), n_mem, H)`` memories, in order."""

    def get_nodes(self, ids: Sequence[str]) -> list[Node]:
        """Id, text and metadata of `ids`, in order."""

    def get_nodes_with_memories(self, ids: Sequence[str]) -> tuple[list[Node], torch.Tensor]:
        """`get_nodes` and `get_memories` of `ids` read as one version of each node."""

    def add(
        self,
        memories: torch.Tensor,
        texts: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Add new nodes with their memories; returns their ids."""

    def add_documents(
        self,
        texts: Sequence[str],
        model: Any,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
        batch_size: int = 16,
        *,
        chunk_size: int = 1024,
        show_progress: bool = True,
    ) -> list[str]:
        """Compress `texts` with `model` and add them; returns their ids."""

    def update(
        self,
        ids: Sequence[str],
        memories: torch.Tensor | None = None,
        texts: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Replace memory, text and/or metadata of existing nodes."""

    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        """Delete nodes; returns how many."""
