"""`clara_text_splitter`: LangChain chunks sized to what the compressor reads.

A CLaRa compressor reads `doc_max_length` tokens (256 for the shipped model) and cuts
the rest; this is LangChain's `RecursiveCharacterTextSplitter` counting the model's own
tokens, so that every chunk reaches its memory whole.
"""

from __future__ import annotations

from typing import Any

from ..errors import missing_extra
from ..modeling.assets import default_model

__all__ = ["clara_text_splitter"]


def clara_text_splitter(model: Any = None, chunk_overlap: int = 20, **kwargs: Any) -> Any:
    """A `RecursiveCharacterTextSplitter` whose chunks fit `model`'s compressor (default:
    the shipped model), counted in its tokens.

    Args:
        model: the `ClaraModel` that will compress the chunks.
        chunk_overlap: tokens shared by consecutive chunks.
        kwargs: other splitter options (e.g. ``separators``).

    Raises:
        MissingExtraError: ``langchain-text-splitters`` is not installed.

    Example:
        >>> from langchain_core.documents import Document
        >>> splitter = clara_text_splitter(model)
        >>> chunks = splitter.split_documents([Document(page_content="A sentence. " * 200)])
        >>> max(len(model.tokenizer.encode(c.page_content, add_special_tokens=False)) for c in chunks) <= model.config.doc_max_length
        True
    """
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter  # noqa: PLC0415
    except ImportError as exc:
        raise missing_extra(
            "clara_text_splitter", "langchain-text-splitters", extra="langchain"
        ) from exc
    model = default_model() if model is None else model
    tokenizer = model.tokenizer
    return RecursiveCharacterTextSplitter(
        chunk_size=model.config.doc_max_length,
        chunk_overlap=chunk_overlap,
        length_function=lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
        **kwargs,
    )
