"""LlamaIndex nodes in the pipeline's context registry (`clara_integrations.pipeline.context`
says why it exists): their content as LlamaIndex's text synthesizers render it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore

from ..pipeline.context import REGISTRY

__all__ = ["REGISTRY", "llm_content", "register_nodes"]


def llm_content(node: BaseNode | NodeWithScore) -> str:
    """A node's text exactly as LlamaIndex's text synthesizers put it in a prompt
    (stripped, as their repacking strips it)."""
    node = node.node if isinstance(node, NodeWithScore) else node
    return node.get_content(metadata_mode=MetadataMode.LLM).strip()


def register_nodes(
    identity: str | None,
    nodes: Sequence[BaseNode | NodeWithScore],
    memories: Sequence[torch.Tensor | None],
) -> None:
    """Let `ClaraLLM` recognise these nodes in a text synthesizer's context."""
    REGISTRY.register(identity, [llm_content(n) for n in nodes], memories)
