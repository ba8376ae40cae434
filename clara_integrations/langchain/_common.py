"""LangChain `Document` <-> pipeline `Item`, and the pipeline the pydantic adapters run.

Thread safety: LangChain runs `batch` and `ainvoke` in thread pools; the pipeline needs
no lock of ours (see `clara_integrations.pipeline.core`), and `MemoryStore` is safe for
concurrent readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document
from pydantic import BaseModel, PrivateAttr

from ..pipeline import ClaraPipeline, Item
from ..pipeline.context import REGISTRY

__all__ = ["PipelineOwner", "register_documents", "to_document", "to_items"]


class PipelineOwner(BaseModel):
    """Base of the pydantic adapters (they declare the `model` and `store` fields): the
    pipeline those two fields make, kept with its cache while they stay the same, and
    rebuilt when one is reassigned (pydantic copies share private state, so a
    `model_copy(update={"store": ...})` must not keep the old store's pipeline)."""

    _pipe: ClaraPipeline | None = PrivateAttr(default=None)

    def __repr_args__(self) -> Any:
        # The model's field would print its whole module tree (~9,000 characters).
        for name, value in super().__repr_args__():
            yield name, (_ShortRepr(value) if name == "model" else value)

    @property
    def pipeline(self) -> ClaraPipeline:
        """The framework-free pipeline this adapter translates (`TypeError` /
        `StoreMismatchError` when `model` and `store` do not fit)."""
        model, store = self.model, self.store  # type: ignore[attr-defined]
        self._pipe = (
            ClaraPipeline(model, store) if self._pipe is None else self._pipe.rebind(model, store)
        )
        return self._pipe


class _ShortRepr:
    def __init__(self, model: Any) -> None:
        self.text = (
            f"ClaraModel({getattr(model, 'model_identity', '?')}, "
            f"base={getattr(getattr(model, 'config', None), 'decoder_model_name', '?')!r})"
        )

    def __repr__(self) -> str:
        return self.text


def to_items(documents: Sequence[Document]) -> list[Item]:
    """One item per document: its id (a store id with the stored text gets the stored
    memory), text, metadata.

    Raises:
        TypeError: an entry is not a `Document`.
    """
    items = []
    for i, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise TypeError(
                f"documents[{i}] is {type(doc).__name__}, expected a langchain Document"
            )
        items.append(Item(doc.id, doc.page_content, doc.metadata))
    return items


def register_documents(
    identity: str | None, documents: Sequence[Document], items: Sequence[Item]
) -> None:
    """Let `ChatClara` find these documents' memory in a prompt filled with their text
    (`clara_integrations.pipeline.context`)."""
    REGISTRY.register(identity, [d.page_content for d in documents], [i.memory for i in items])


def to_document(item: Item, **metadata: Any) -> Document:
    """A new `Document` for `item`, with `metadata` (e.g. its score) added to its own."""
    return Document(page_content=item.text, metadata={**item.metadata, **metadata}, id=item.id)
