"""`clara_node_parser`: LlamaIndex chunks sized to what the compressor reads.

LlamaIndex's default `SentenceSplitter` makes 1,024-token chunks; a CLaRa compressor
reads `doc_max_length` tokens (256 for the shipped model) and cuts the rest, so most of
every default chunk would never reach its memory. This is LlamaIndex's own splitter,
counting tokens with the model's tokenizer. Set it as ``Settings.transformations =
[clara_node_parser(model)]`` or pass ``transformations=[...]``: ``Settings.node_parser``
is read only until LlamaIndex first builds its default transformations list.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.node_parser import SentenceSplitter

from ..modeling.assets import default_model

__all__ = ["clara_node_parser"]


def clara_node_parser(
    model: Any = None, chunk_overlap: int = 20, **kwargs: Any
) -> SentenceSplitter:
    """A `SentenceSplitter` whose chunks fit `model`'s compressor (default: the shipped
    model), counted in its tokens.

    Args:
        model: the `ClaraModel` that will compress the chunks.
        chunk_overlap: tokens shared by consecutive chunks.
        kwargs: other `SentenceSplitter` options (e.g. ``paragraph_separator``).

    Example:
        >>> from llama_index.core import Document, Settings
        >>> parser = clara_node_parser(model)
        >>> parser.chunk_size == model.config.doc_max_length
        True
        >>> nodes = parser.get_nodes_from_documents([Document(text="A sentence. " * 200)])
        >>> max(len(model.tokenizer.encode(n.text, add_special_tokens=False)) for n in nodes) <= parser.chunk_size
        True
        >>> Settings.transformations = [parser]  # every index built from documents uses it  # doctest: +SKIP
    """
    model = default_model() if model is None else model
    tokenizer = model.tokenizer

    def tokens(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    return SentenceSplitter(
        chunk_size=model.config.doc_max_length,
        chunk_overlap=chunk_overlap,
        tokenizer=tokens,
        **kwargs,
    )
