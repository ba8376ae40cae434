"""How CLaRa memory rides on LlamaIndex nodes, plus the shared model lock and checks.

The one mechanism: a node's ``embedding`` holds its document memory ``[n_mem, H]``
flattened to ``n_mem * H`` Python floats. That is lossless for float32/float16/bfloat16
memory, survives every LlamaIndex container (NodeWithScore, Response.source_nodes,
vector-store query results) and needs no private side channel, so memory stored in
*any* vector store that returns embeddings with its query results reaches the generator.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from ..modeling import MissingAdapterError
from ..modeling.adapters import QUERY_ADAPTER

logger = logging.getLogger(__name__)

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The lock every adapter holds while it runs `model`.

    ClaraModel switches its active LoRA adapter in place, so a query encoding in one
    thread (async retrieval runs in worker threads) must not interleave with a generation
    in another.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def require_query_reasoner(model: Any, who: str) -> None:
    """Raise MissingAdapterError unless `model` can encode queries."""
    if QUERY_ADAPTER not in model.adapters:
        raise MissingAdapterError(
            f"{who} needs the query reasoner ({QUERY_ADAPTER!r}), which this checkpoint lacks; "
            "load an end-to-end (stage 2/3) CLaRa checkpoint"
        )


def query_text(query: QueryBundle | str | None, who: str) -> str:
    """The query string of `query`; ValueError if it is missing or blank."""
    text = query.query_str if isinstance(query, QueryBundle) else query
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{who} got an empty query; pass a non-empty question")
    return text


def memory_width(model: Any) -> int:
    """Length of a flattened memory: n_mem * H."""
    return model.n_mem * model.hidden_size


def vector_to_memory(vector: Sequence[float] | torch.Tensor | None, model: Any) -> torch.Tensor | None:
    """A flattened memory (n_mem * H floats) as (n_mem, H) float32, or None if it is
    absent or has another width (e.g. an ordinary text embedding)."""
    if vector is None or len(vector) != memory_width(model):
        return None
    return torch.as_tensor(vector, dtype=torch.float32).reshape(model.n_mem, model.hidden_size)


def node_memory(node: BaseNode | NodeWithScore, model: Any) -> torch.Tensor | None:
    """The memory a node carries in ``embedding`` (n_mem, H), or None."""
    node = node.node if isinstance(node, NodeWithScore) else node
    return vector_to_memory(node.embedding, model)


def with_memory(node: BaseNode, memory: torch.Tensor | None) -> BaseNode:
    """A copy of `node` whose ``embedding`` is `memory` (n_mem, H) flattened (the caller's
    node, e.g. one held by a docstore, is left untouched)."""
    out = node.model_copy()
    if memory is not None:
        out.embedding = memory.detach().to("cpu", torch.float32).flatten().tolist()
    return out


def hit_to_node(node_id: str, text: str, metadata: dict[str, Any],
                memory: torch.Tensor | None) -> BaseNode:
    """A LlamaIndex node from a store record; nodes written by `ClaraVectorStore` are
    restored whole (id, relationships, metadata settings) from their serialised form."""
    if "_node_content" in metadata:
        node = metadata_dict_to_node(metadata, text=text)
    else:
        node = TextNode(id_=node_id, text=text, metadata=dict(metadata))
    if memory is not None:
        node.embedding = memory.detach().to("cpu", torch.float32).flatten().tolist()
    return node


def node_text(node: BaseNode) -> str:
    """What CLaRa compresses for a node: the same text LlamaIndex embeds (EMBED mode),
    so on-the-fly memory equals what `ClaraEmbedding` would have stored."""
    return node.get_content(metadata_mode=MetadataMode.EMBED)


class MemoryCache:
    """Memory of texts compressed on the fly, keyed by content hash; least recently used
    entries are evicted beyond `max_items`. Entries live on the CPU.

    Example:
        >>> cache = MemoryCache(model, max_items=1024)  # doctest: +SKIP
        >>> cache.get(["Paris is in France."]).shape      # doctest: +SKIP
        torch.Size([1, n_mem, H])
    """

    def __init__(self, model: Any, max_items: int = 4096, batch_size: int = 16) -> None:
        if max_items < 0:
            raise ValueError(f"cache size must be >= 0, got {max_items}")
        self._model = model
        self._max = max_items
        self._batch_size = batch_size
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._guard = threading.Lock()
        self.compressed = 0  # texts compressed so far (misses), for diagnostics

    def __len__(self) -> int:
        return len(self._items)

    def _key(self, text: str) -> str:
        # The identity changes when weights change (training), invalidating old entries.
        return hashlib.sha256(f"{self._model.model_identity}\0{text}".encode()).hexdigest()

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, n_mem, H) memory of `texts` in the model's dtype, on the CPU."""
        keys = [self._key(t) for t in texts]
        found: dict[str, torch.Tensor] = {}
        with self._guard:
            for key in keys:
                if key in self._items:
                    self._items.move_to_end(key)
                    found[key] = self._items[key]
        todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in found))
        if todo:
            with model_lock(self._model):
                fresh = self._model.compress_documents(todo, batch_size=self._batch_size).cpu()
            self.compressed += len(todo)
            for text, memory in zip(todo, fresh):
                found[self._key(text)] = memory
            with self._guard:
                for text, memory in zip(todo, fresh):
                    self._items[self._key(text)] = memory
                while len(self._items) > self._max:
                    self._items.popitem(last=False)
        if not keys:
            return torch.empty(0, self._model.n_mem, self._model.hidden_size)
        return torch.stack([found[k] for k in keys])
