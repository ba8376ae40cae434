"""LangChain's own standard suites (package `langchain-tests`) against our classes.

Flags switched off, through the suites' own properties, because CLaRa lacks the feature:
* ChatClara `has_tool_calling` / `has_tool_choice` / `has_structured_output`: no
  `bind_tools` or `with_structured_output`; CLaRa's generator is trained to answer
  questions from memory tokens, not to emit tool calls or JSON schemas.
* ChatClara `supports_model_override`: a ChatClara runs the one ClaraModel it was built
  with (weights in memory); a per-call `model="name"` cannot switch it.
All image / audio / video / PDF / JSON-mode flags keep their default (off): the model
reads text only. Nothing else is switched off or skipped.

Fixture hooks (documented by the suites): the retriever and chat-model suites take
their constructor parameters from properties, filled here with the session's tiny
fixture models; the vector-store suite takes its store from the `vectorstore` fixture,
a ClaraVectorStore over a CLaRa model whose query reasoner is the stage-2 initialisation
(a copy of the compressor), so the suite's exact-match ranking holds for real CLaRa
vectors instead of the suite's fake embeddings.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests

from clara_integrations.langchain import ChatClara, ClaraRetriever, ClaraVectorStore


class TestClaraRetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _models(self, e2e_model, doc_store):
        self._params = {"model": e2e_model, "store": doc_store}

    @property
    def retriever_constructor(self) -> type[ClaraRetriever]:
        return ClaraRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return self._params

    @property
    def retriever_query_example(self) -> str:
        return "Who is the Eiffel Tower named after?"


class _ChatClaraParams:
    @pytest.fixture(autouse=True)
    def _models(self, e2e_model):
        # Few new tokens keep the suites fast on CPU; the standard params may override.
        self._params = {"model": e2e_model, "max_new_tokens": 16}

    @property
    def chat_model_class(self) -> type[ChatClara]:
        return ChatClara

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return self._params

    @property
    def supports_model_override(self) -> bool:
        return False


class TestChatClaraUnit(_ChatClaraParams, ChatModelUnitTests):
    pass


class TestChatClaraIntegration(_ChatClaraParams, ChatModelIntegrationTests):
    pass


class TestClaraVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, stage2_model):
        store = ClaraVectorStore(model=stage2_model, dtype=torch.float32)
        try:
            yield store
        finally:
            store.store.close()


class TestClaraVectorStoreMilvusStandard(VectorStoreIntegrationTests):
    """The same suite with the memories in Milvus (Milvus Lite, a real Milvus engine)."""

    @pytest.fixture
    def vectorstore(self, stage2_model, tmp_path):
        pytest.importorskip("milvus_lite")
        from clara_integrations.store import MilvusMemoryStore

        store = MilvusMemoryStore.for_model(
            stage2_model, str(tmp_path / "clara.db"), dtype=torch.float32
        )
        with ClaraVectorStore(model=stage2_model, store=store) as vector_store:
            yield vector_store
