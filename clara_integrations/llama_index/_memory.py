"""How CLaRa memory rides on LlamaIndex nodes, and nodes <-> pipeline items.

The one mechanism: a node's ``embedding`` holds its document memory ``[n_mem, H]``
flattened to ``n_mem * H`` Python floats. That is lossless for float32/float16/bfloat16
memory, survives every LlamaIndex container (NodeWithScore, Response.source_nodes,
vector-store query results) and needs no private side channel, so memory stored in
*any* vector store that returns embeddings with its query results reaches the generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from ..pipeline import Item, check_question


def query_text(query: QueryBundle | str | None) -> str:
    """The query string of `query` (the pipeline's one check: ValueError if missing or blank)."""
    return check_question(query.query_str if isinstance(query, QueryBundle) else query)


def vector_to_memory(
    vector: Sequence[float] | torch.Tensor | None, model: Any
) -> torch.Tensor | None:
    """A flattened memory (n_mem * H floats) as (n_mem, H) float32, or None if it is
    absent or has another width (e.g. an ordinary text embedding)."""
    if vector is None or len(vector) != model.n_mem * model.hidden_size:
        return None
    return torch.as_tensor(vector, dtype=torch.float32).reshape(model.n_mem, model.hidden_size)


def node_memory(node: BaseNode | NodeWithScore, model: Any) -> torch.Tensor | None:
    """The memory a node carries in ``embedding`` (n_mem, H), or None."""
    node = node.node if isinstance(node, NodeWithScore) else node
    return vector_to_memory(node.embedding, model)


def _flat(memory: torch.Tensor) -> list[float]:
    return memory.detach().to("cpu", torch.float32).flatten().tolist()


def with_memory(node: BaseNode, memory: torch.Tensor | None) -> BaseNode:
    """A copy of `node` whose ``embedding`` is `memory` (n_mem, H) flattened (the caller's
    node, e.g. one held by a docstore, is left untouched)."""
    out = node.model_copy()
    if memory is not None:
        out.embedding = _flat(memory)
    return out


def item_to_node(item: Item, attach_memory: bool = True) -> BaseNode:
    """A LlamaIndex node from a stored item; nodes written by `ClaraVectorStore` are
    restored whole (id, relationships, metadata settings) from their serialised form."""
    if "_node_content" in item.metadata:
        node = metadata_dict_to_node(dict(item.metadata), text=item.text)
    else:
        node = TextNode(id_=item.id, text=item.text, metadata=dict(item.metadata))
    if attach_memory and item.memory is not None:
        node.embedding = _flat(item.memory)
    return node


def node_item(node: BaseNode | NodeWithScore, model: Any) -> Item:
    """A pipeline item for `node`: its id, the text CLaRa compresses (the text LlamaIndex
    embeds, EMBED mode, so on-the-fly memory equals what `ClaraEmbedding` would have
    stored), and the memory it carries (None if it carries none)."""
    base = node.node if isinstance(node, NodeWithScore) else node
    return Item(
        base.node_id,
        base.get_content(metadata_mode=MetadataMode.EMBED),
        base.metadata,
        memory=vector_to_memory(base.embedding, model),
        source=base,
    )
