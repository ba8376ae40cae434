"""Fixtures for the LlamaIndex adapters: the parity fixture's documents in a float32 store."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

# The fixture README: reference generations used greedy decoding and 8 new tokens.
REFERENCE_MAX_NEW_TOKENS = 8


@pytest.fixture(scope="session")
def reference(fixture_dir) -> dict:
    """reference_outputs.json: docs, questions and the reference's outputs."""
    return json.loads((fixture_dir / "reference_outputs.json").read_text())


def doc_id(i: int) -> str:
    return f"doc-{i}"


def documents(reference) -> list:
    """The fixture documents as LlamaIndex Documents (ids doc-<i>, metadata i and half).
    Metadata stays out of the embedded text so memory equals the reference's."""
    from llama_index.core import Document

    return [
        Document(
            id_=doc_id(i),
            text=t,
            metadata={"i": i, "half": "first" if i < 2 else "second"},
            excluded_embed_metadata_keys=["i", "half"],
        )
        for i, t in enumerate(reference["docs"])
    ]


@pytest.fixture(scope="session")
def store32(e2e_model, reference):
    """A float32 MemoryStore of the fixture's documents (ids doc-<i>, metadata {"i": i}).
    Read-only: tests that write build their own."""
    import torch

    from clara_integrations.store import MemoryStore

    store = MemoryStore.for_model(e2e_model, dtype=torch.float32)
    docs = reference["docs"]
    store.add_documents(
        docs,
        e2e_model,
        ids=[doc_id(i) for i in range(len(docs))],
        metadata=[
            {"i": i, "half": "first" if i < len(docs) // 2 else "second"} for i in range(len(docs))
        ],
        show_progress=False,
    )
    return store


@pytest.fixture(scope="session")
def doc_memory(store32, reference):
    """(N, n_mem, H) float32 memory of the fixture documents, in document order."""
    return store32.get_memories([doc_id(i) for i in range(len(reference["docs"]))])


class DecoderSpy:
    """Records the decoder's prefill length and every token id that gets embedded."""

    def __init__(self, model):
        self.prefill: list[int] = []
        self.embedded: list[list[int]] = []
        self.spliced: torch.Tensor | None = None
        self._handles = [
            model.decoder.register_forward_pre_hook(self._decoder, with_kwargs=True),
            model.decoder.get_input_embeddings().register_forward_hook(self._embed),
        ]

    def _decoder(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and not self.prefill:
            self.prefill.append(embeds.shape[1])
            self.spliced = embeds.detach().clone()

    def _embed(self, module, args, output):
        self.embedded.append(args[0].reshape(-1).tolist())

    def close(self):
        for h in self._handles:
            h.remove()
