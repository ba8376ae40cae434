"""Helpers shared by the LangChain adapters: store checks, queries, document memory.

Thread safety: LangChain runs `batch` and `ainvoke` in thread pools. The model serialises
its own adapter switches (`AdapterSet.using` holds a lock), so the adapters here need no
lock of their own; `MemoryStore` is safe for concurrent readers.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from langchain_core.documents import Document

from ..modeling import ClaraModel
from ..store import MemoryStore

__all__ = ["check_store", "document_memories", "query_text"]

def check_store(model: ClaraModel, store: MemoryStore) -> None:
    """Raise a clear error when `store` holds memory `model` cannot read or search.

    Raises:
        TypeError: `model` is not a ClaraModel or `store` not a MemoryStore.
        clara_integrations.store.StoreMismatchError: another compressor, `n_mem` or hidden
            size (a `ValueError`).
    """
    if not isinstance(model, ClaraModel):
        raise TypeError(f"model must be a ClaraModel, got {type(model).__name__}")
    if not isinstance(store, MemoryStore):
        raise TypeError(f"store must be a clara_integrations.store.MemoryStore, got {type(store).__name__}")
    store.check_model(model)


def query_text(query: Any, what: str = "query") -> str:
    """The query as a non-empty string, or a ValueError / TypeError naming the problem."""
    if not isinstance(query, str):
        raise TypeError(f"{what} must be a string, got {type(query).__name__}")
    if not query.strip():
        raise ValueError(f"{what} is empty")
    return query


def document_memories(model: ClaraModel, store: MemoryStore | None,
                      documents: Sequence[Document] | torch.Tensor) -> torch.Tensor:
    """Memory tokens of `documents`, (k, n_mem, H) in the model's dtype and device.

    A tensor is taken as given (checked). A `Document` whose `id` is in `store` gets its
    stored memory; any other document is compressed from its `page_content` now.

    Raises:
        ValueError: wrong tensor shape, or a document to compress has empty text.
        TypeError: an entry is not a `Document`.
    """
    want = (model.n_mem, model.hidden_size)
    if isinstance(documents, torch.Tensor):
        if documents.dim() != 3 or tuple(documents.shape[1:]) != want:
            raise ValueError(
                f"memory tensor must be (k, {want[0]}, {want[1]}), got {tuple(documents.shape)}"
            )
        return documents.to(model.device, model.dtype)
    docs = list(documents)
    for i, doc in enumerate(docs):
        if not isinstance(doc, Document):
            raise TypeError(f"documents[{i}] is {type(doc).__name__}, expected a langchain Document")
    rows: list[torch.Tensor | None] = [None] * len(docs)
    if store is not None:
        ids = list(dict.fromkeys(d.id for d in docs if d.id))
        known = [i for i in ids if i in store]
        if known:
            stored = dict(zip(known, store.get_memories(known)))
            for j, doc in enumerate(docs):
                if doc.id in stored:
                    rows[j] = stored[doc.id]
    todo = [j for j, row in enumerate(rows) if row is None]
    if todo:
        texts = []
        for j in todo:
            text = docs[j].page_content
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"documents[{j}] has no stored memory and empty page_content")
            texts.append(text)
        fresh = model.compress_documents(texts, show_progress=False)
        for j, row in zip(todo, fresh):
            rows[j] = row
    if not rows:
        return torch.empty(0, *want, device=model.device, dtype=model.dtype)
    return torch.stack([r.to(model.device, model.dtype) for r in rows])
