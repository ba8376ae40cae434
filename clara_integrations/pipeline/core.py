"""`ClaraPipeline`: CLaRa retrieval, reranking, document memory and answering, framework-free.

Lock policy: none of our own. Every step that depends on which LoRA adapter is active
(query encoding, compression, generation) runs inside `AdapterSet.using`, which holds the
model's re-entrant adapter lock for the whole forward pass or decode; everything else
(store reads, `select`, splicing memory into the prompt embeddings) touches no adapter
state (the adapters are on linear layers, not on the embedding table). A second,
process-wide lock around whole calls, as the LlamaIndex adapter used to take, adds
nothing but a second lock order to reason about.
"""

from __future__ import annotations

import itertools
import logging
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..modeling import ClaraModel, MissingAdapterError
from ..modeling.adapters import QUERY_ADAPTER
from ..store.errors import NodeNotFoundError
from ..store.protocol import MemoryStoreProtocol
from .cache import CompressionCache
from .generation import Answer, AnswerStream, Generation
from .hybrid import StoreBM25, live_nodes, reciprocal_rank_fusion

logger = logging.getLogger(__name__)

__all__ = [
    "EMPTY_QUERY",
    "HYBRID_DEPTH",
    "ClaraPipeline",
    "Item",
    "check_question",
    "fuse_rankings",
    "search_store",
    "upsert_store",
]

#: Hybrid retrieval fuses each ranking's top ``HYBRID_DEPTH * k`` (at least): fusing only
#: the top k would drop every document that one ranker places just below the cut.
HYBRID_DEPTH = 4

# A search whose hits are deleted before their memories are read searches again, this
# many times, then raises: only a store deleting faster than it can be read gets there.
_SEARCH_RETRIES = 3

# One message for every adapter (the frameworks' tests and users grep for these words).
EMPTY_QUERY = (
    "empty query: the question is empty (the query is empty or whitespace only); "
    "pass a non-empty question"
)
NO_QUERY_REASONER = (
    f"retrieval needs the query reasoner ({QUERY_ADAPTER!r}), which this "
    "checkpoint lacks; load an end-to-end (stage 2/3) CLaRa checkpoint"
)


def check_question(question: Any) -> str:
    """`question` as a non-empty string.

    Raises:
        ValueError: None, empty or whitespace only (`EMPTY_QUERY`).
        TypeError: not a string.

    Example:
        >>> check_question("Who?")
        'Who?'
    """
    if question is None or (isinstance(question, str) and not question.strip()):
        raise ValueError(EMPTY_QUERY)
    if not isinstance(question, str):
        raise TypeError(f"query must be a string, got {type(question).__name__}")
    return question


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True, eq=False)
class Item:
    """A document moving through the pipeline.

    Attributes:
        id: its store id (None for a document that is not in a store).
        text: the text that is compressed when it has no memory.
        metadata: its metadata (as stored; never mutated).
        score: cosine to the question (None before retrieval or reranking); after hybrid
            retrieval, the reciprocal-rank fused score instead.
        memory: its ``(n_mem, H)`` memory, if known (stored or compressed).
        source: what the caller built it from (a framework node or document), carried
            through retrieval and reranking untouched so results map back to it.

    Example:
        >>> Item("doc-1", "Paris is in France.", {"source": "a"}).score is None
        True
    """

    id: str | None
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    score: float | None = None
    memory: torch.Tensor | None = None
    source: Any = None


def search_store(
    store: MemoryStoreProtocol,
    query_vector: torch.Tensor,
    k: int,
    filters: Mapping[str, Any] | None = None,
) -> list[Item]:
    """`store`'s top `k` for a query vector ``(1, n_mem * H)``, best first, each with its
    stored memory and exact cosine (no model needed: for stores queried by vector).

    Example:
        >>> from clara_integrations.store import MemoryStore
        >>> store = MemoryStore(n_mem=2, hidden_size=4)
        >>> ids = store.add(torch.eye(8)[:2].reshape(2, 2, 4), texts=["a", "b"])
        >>> [i.text for i in search_store(store, torch.eye(8)[1:2], k=1)]
        ['b']
    """
    k = _positive(k, "k")
    retries = _SEARCH_RETRIES
    while len(store):
        hits = store.search(query_vector, k=k, filters=filters)[0]
        if not hits:
            break
        try:  # text, metadata and memory of one version of each node, never mixed
            nodes, memories = store.get_nodes_with_memories([h.id for h in hits])
        except NodeNotFoundError:
            if not retries:
                raise
            retries -= 1  # a hit was deleted since the search: search again
            continue
        return [
            Item(h.id, n.text, n.metadata, h.score, m) for h, n, m in zip(hits, nodes, memories)
        ]
    return []


def fuse_rankings(
    store: MemoryStoreProtocol, dense: Sequence[Item], lexical_ids: Sequence[str], k: int
) -> list[Item]:
    """The top `k` of the reciprocal-rank fusion of a dense ranking (items from `store`,
    best first) and a lexical one (ids of `store`), each with its fused score and its
    stored memory (fetched for the lexical-only ones).

    Example:
        >>> from clara_integrations.store import MemoryStore
        >>> store = MemoryStore(n_mem=2, hidden_size=4)
        >>> ids = store.add(torch.eye(8)[:2].reshape(2, 2, 4), texts=["a", "b"], ids=["a", "b"])
        >>> dense = search_store(store, torch.eye(8)[:1], k=1)  # "a"
        >>> [(i.id, i.memory.shape) for i in fuse_rankings(store, dense, ["b"], k=2)]
        [('a', torch.Size([2, 4])), ('b', torch.Size([2, 4]))]
    """
    by_id = {i.id: i for i in dense}
    fused = reciprocal_rank_fusion([list(by_id), lexical_ids])
    # Lexical-only ids of the top k, read from the store; one deleted since the BM25 index
    # was built is left out and the next one of the fused ranking takes its place.
    top: list[tuple[str, float]] = []
    pending = iter(fused)
    while len(top) < k:
        chunk = list(itertools.islice(pending, k - len(top)))
        if not chunk:
            break
        missing = [node_id for node_id, _ in chunk if node_id not in by_id]
        for node, memory in live_nodes(store, missing, memories=True):
            by_id[node.id] = Item(node.id, node.text, node.metadata, None, memory)
        top += [(node_id, score) for node_id, score in chunk if node_id in by_id]
    return [replace(by_id[node_id], score=score) for node_id, score in top]


def _split(store: MemoryStoreProtocol, ids: Sequence[str]) -> tuple[list[int], list[int]]:
    """Positions of `ids` already in `store`, and of new ones."""
    present = [i in store for i in ids]
    return [j for j, p in enumerate(present) if p], [j for j, p in enumerate(present) if not p]


def upsert_store(
    store: MemoryStoreProtocol,
    ids: Sequence[str],
    memories: torch.Tensor,
    texts: Sequence[str],
    metadata: Sequence[Mapping[str, Any]],
) -> None:
    """Add nodes with their memories ``(N, n_mem, H)`` to `store`; ids already stored are
    replaced (no model needed).

    Example:
        >>> from clara_integrations.store import MemoryStore
        >>> store = MemoryStore(n_mem=2, hidden_size=4)
        >>> for text in ("old", "new"):
        ...     upsert_store(store, ["x"], torch.randn(1, 2, 4), [text], [{}])
        >>> len(store), store.get_nodes(["x"])[0].text
        (1, 'new')
    """
    old, new = _split(store, ids)
    if old:
        store.update(
            [ids[j] for j in old],
            memories[old],
            texts=[texts[j] for j in old],
            metadata=[metadata[j] for j in old],
        )
    if new:
        store.add(
            memories[new],
            texts=[texts[j] for j in new],
            metadata=[metadata[j] for j in new],
            ids=[ids[j] for j in new],
        )


class ClaraPipeline:
    """CLaRa's RAG steps over one model and (optionally) one store.

    Question -> query reasoner vector -> store search (optionally a larger candidate
    pool re-ranked by the reference's differentiable top-k) -> memories (stored, else
    compressed once and cached) -> the generator answers from the memories, whole or
    streamed. The LlamaIndex and LangChain adapters only translate their objects to and
    from these calls.

    Args:
        model: a `ClaraModel`.
        store: any `MemoryStoreProtocol` store (e.g. `MemoryStore`) written by `model`'s
            compressor; needed by `search` / `retrieve` and for stored memory by id.
        cache: the `CompressionCache` for texts without stored memory (default: a new
            one of `cache_size` entries).
        cache_size: entries of the default cache.

    Raises:
        TypeError: `model` is not a ClaraModel, or `store` lacks the protocol.
        StoreMismatchError: `store` holds another compressor's memory (or shape).

    Example:
        >>> from clara_integrations.store import MemoryStore
        >>> store = MemoryStore.for_model(model)
        >>> ids = store.add_documents(["Paris is in France.", "Rome is in Italy."], model,
        ...                           ids=["paris", "rome"], show_progress=False)
        >>> pipeline = ClaraPipeline(model, store)
        >>> items = pipeline.retrieve("Where is Paris?", k=2)
        >>> sorted(i.id for i in items)
        ['paris', 'rome']
        >>> answer = pipeline.answer("Where is Paris?", pipeline.memories(items), max_new_tokens=4)
        >>> answer.num_documents
        2
    """

    def __init__(
        self,
        model: ClaraModel,
        store: MemoryStoreProtocol | None = None,
        *,
        cache: CompressionCache | None = None,
        cache_size: int = 4096,
    ) -> None:
        if not isinstance(model, ClaraModel):
            raise TypeError(f"model must be a ClaraModel, got {type(model).__name__}")
        if store is not None:
            if not isinstance(store, MemoryStoreProtocol):
                raise TypeError(
                    "store must be a clara_integrations.store.MemoryStore (or implement "
                    f"MemoryStoreProtocol), got {type(store).__name__}"
                )
            store.check_model(model)  # StoreMismatchError names both fingerprints
        self.model = model
        self.store = store
        self.cache = cache if cache is not None else CompressionCache(max_items=cache_size)
        self._lexical: StoreBM25 | None = None  # built on the first hybrid retrieval
        self._warned_other_text = False

    def rebind(self, model: ClaraModel, store: MemoryStoreProtocol | None) -> ClaraPipeline:
        """This pipeline if it runs `model` over `store`, else a new one that does,
        sharing this one's cache (keyed by model identity, so always safe to share).

        Example:
            >>> p = ClaraPipeline(model)
            >>> p.rebind(model, None) is p, p.rebind(model, None).cache is p.cache
            (True, True)
        """
        if model is self.model and store is self.store:
            return self
        return ClaraPipeline(model, store, cache=self.cache)

    # ------------------------------------------------------------------ vectors
    def require_query_reasoner(self) -> None:
        """Raise `MissingAdapterError` (the one message) unless the model can encode
        queries. Retrievers and rerankers call it at construction; query encoding always.

        Example:
            >>> ClaraPipeline(model).require_query_reasoner()  # the e2e checkpoint has one
        """
        if QUERY_ADAPTER not in self.model.adapters:
            raise MissingAdapterError(NO_QUERY_REASONER)

    def encode_query(self, question: str) -> torch.Tensor:
        """The query reasoner's vector ``(1, n_mem * H)`` in the model's dtype.

        Example:
            >>> ClaraPipeline(model).encode_query("Who?").shape == (1, model.n_mem * model.hidden_size)
            True
        """
        question = check_question(question)
        self.require_query_reasoner()
        return self.model.encode_queries([question], show_progress=False)

    def compress(
        self, texts: Sequence[str], batch_size: int = 16, show_progress: bool | None = False
    ) -> torch.Tensor:
        """Memories ``(N, n_mem, H)`` of `texts`, compressed now (no cache: for indexing).

        Example:
            >>> ClaraPipeline(model).compress(["Paris is in France."]).shape[0]
            1
        """
        return self.model.compress_documents(
            list(texts), batch_size=batch_size, show_progress=show_progress
        )

    def embed_query(self, question: str) -> list[float]:
        """`encode_query` as ``n_mem * H`` Python floats (a framework embedding).

        Example:
            >>> len(ClaraPipeline(model).embed_query("Who?")) == model.n_mem * model.hidden_size
            True
        """
        return self.encode_query(question)[0].float().cpu().tolist()

    def embed_documents(
        self, texts: Sequence[str], batch_size: int = 16, show_progress: bool | None = False
    ) -> list[list[float]]:
        """Each text's memory flattened to ``n_mem * H`` floats (a framework embedding).

        Example:
            >>> len(ClaraPipeline(model).embed_documents(["a", "b"]))
            2
        """
        return self.compress(texts, batch_size, show_progress).flatten(1).float().cpu().tolist()

    # ------------------------------------------------------------------ retrieval
    def _need_store(self) -> MemoryStoreProtocol:
        if self.store is None:
            raise ValueError("this ClaraPipeline has no store; give ClaraPipeline(model, store)")
        return self.store

    def search(
        self, query_vector: torch.Tensor, k: int, filters: Mapping[str, Any] | None = None
    ) -> list[Item]:
        """`search_store` over this pipeline's store.

        Example:
            >>> from clara_integrations.store import MemoryStore
            >>> pipeline = ClaraPipeline(model, MemoryStore.for_model(model))
            >>> pipeline.search(pipeline.encode_query("Who?"), k=3)  # an empty store
            []
        """
        return search_store(self._need_store(), query_vector, k, filters)

    def retrieve(
        self,
        question: str,
        k: int,
        candidate_pool: int | None = None,
        filters: Mapping[str, Any] | None = None,
        *,
        hybrid: bool = False,
        query_vector: torch.Tensor | None = None,
    ) -> list[Item]:
        """The `k` documents for `question`, best first.

        `query_vector` (``n_mem * H`` values, e.g. a framework's precomputed query
        embedding) replaces the query reasoner's vector of `question`; BM25 (``hybrid``)
        still reads `question`.

        The store returns ``max(k, candidate_pool)`` candidates; when that is more than
        `k`, the reference's differentiable top-k selector (forward pass: exact top-k of
        its cosine scores) keeps `k` of them, as the reference `generate_from_questions`
        does over its candidates (use it with approximate indexes).

        With ``hybrid=True`` the query reasoner's ranking and BM25's over the store's texts
        (`StoreBM25`, same filters) are fused by reciprocal rank (`reciprocal_rank_fusion`,
        k = 60), each contributing its top ``max(candidate_pool, HYBRID_DEPTH * k)``; each
        result's ``score`` is then its fused score, and every result carries its stored
        memory, lexical-only hits included.

        Raises:
            ValueError: empty question, bad `k` / `candidate_pool` / filters, no store.
            MissingAdapterError: the model has no query reasoner.
            TypeError: ``hybrid=True`` on a store without a ``revision`` (see `StoreBM25`).

        Example:
            >>> from clara_integrations.store import MemoryStore
            >>> store = MemoryStore.for_model(model)
            >>> _ = store.add_documents(["a b c", "d e f", "g h i"], model, show_progress=False)
            >>> items = ClaraPipeline(model, store).retrieve("Which?", k=2, candidate_pool=3)
            >>> len(items), items[0].score >= items[1].score, items[0].memory.shape == (model.n_mem, model.hidden_size)
            (2, True, True)
        """
        self._need_store()
        k = _positive(k, "k")
        pool = max(k, 0 if candidate_pool is None else _positive(candidate_pool, "candidate_pool"))
        if hybrid:
            lexical = self.store_bm25()  # TypeError before any model work
            pool = max(pool, HYBRID_DEPTH * k)
        q = self.encode_query(question) if query_vector is None else self._query_row(query_vector)
        items = self.search(q, pool, filters)
        if hybrid:
            memories = torch.stack([i.memory for i in items]) if items else None
            dense = self._select(q, items, memories, len(items)) if items else []
            return fuse_rankings(self.store, dense, lexical.top(question, pool, filters), k)
        if len(items) <= k:
            return items
        return self._select(q, items, torch.stack([i.memory for i in items]), k)

    def _query_row(self, vector: torch.Tensor) -> torch.Tensor:
        """A given query vector as ``(1, n_mem * H)`` in the model's dtype and device."""
        width = self.model.n_mem * self.model.hidden_size
        if vector.numel() != width:
            raise ValueError(
                f"query vector has {vector.numel()} values; this model's query vectors have "
                f"n_mem * hidden_size = {width}"
            )
        return vector.reshape(1, width).to(self.model.device, self.model.dtype)

    def store_bm25(self) -> StoreBM25:
        """The BM25 index of this pipeline's store that hybrid retrieval uses, built once
        per store (it rebuilds itself after writes).

        Raises:
            ValueError: the pipeline has no store.
            TypeError: the store has no ``revision`` (see `StoreBM25`).
        """
        if self._lexical is None or self._lexical.store is not self.store:
            self._lexical = StoreBM25(self._need_store())
        return self._lexical

    def _select(
        self, q: torch.Tensor, items: Sequence[Item], memories: torch.Tensor, k: int
    ) -> list[Item]:
        """The top `k` of `items` by the reference selector; memories (N, n_mem, H)."""
        candidates = memories.to(self.model.device, self.model.dtype).unsqueeze(
            0
        )  # (1, N, n_mem, H)
        _, topk_idx, cosine = self.model.select(q, candidates, k)  # (1, k), (1, N)
        return [replace(items[i], score=float(cosine[0, i])) for i in topk_idx[0].tolist()]

    def rerank(self, question: str, items: Sequence[Item], top_n: int | None = None) -> list[Item]:
        """`items` (from any retriever) re-ranked by the query reasoner, best `top_n` first
        (None: all). Each returned item carries its cosine and its memory (stored,
        carried, or compressed now and cached), so answering does not compress again.

        Example:
            >>> pipeline = ClaraPipeline(model)
            >>> ranked = pipeline.rerank("Which?", [Item(None, "a b c"), Item(None, "d e f")], top_n=1)
            >>> len(ranked), ranked[0].memory is not None, pipeline.cache.compressed
            (1, True, 2)
        """
        question = check_question(question)
        items = list(items)
        if not items:
            return []
        q = self.encode_query(question)
        memories = self.memories(items)  # (N, n_mem, H)
        items = [replace(it, memory=m) for it, m in zip(items, memories)]
        k = len(items) if top_n is None else min(_positive(top_n, "top_n"), len(items))
        return self._select(q, items, memories, k)

    # ------------------------------------------------------------------ memory
    def _stored_memories(
        self, items: list[Item], rows: list[torch.Tensor | None]
    ) -> list[torch.Tensor | None]:
        """`rows` with the store's memory for each item that has none and a store id whose
        stored text is the item's text (or that has no text). An id whose text differs (an
        id from another source, text edited after retrieval) would answer from another
        document's memory: that item's own text is compressed instead, said once."""
        wanted = [it.id for it, row in zip(items, rows) if row is None and it.id is not None]
        known = [i for i in dict.fromkeys(wanted) if i in self.store]
        if not known:
            return rows
        nodes, memories = self.store.get_nodes_with_memories(known)
        stored = {n.id: (n.text, m) for n, m in zip(nodes, memories)}
        out, other_text = [], []
        for j, (it, row) in enumerate(zip(items, rows)):
            if row is None and it.id in stored:
                text, memory = stored[it.id]
                if isinstance(it.text, str) and it.text.strip() and it.text != text:
                    other_text.append(j)
                else:
                    row = memory
            out.append(row)
        if other_text and not self._warned_other_text:
            self._warned_other_text = True
            logger.warning(
                "%d of %d documents have the id of a stored node but other text (e.g. "
                "documents[%d], id %r): their own text is compressed instead of using that "
                "node's memory (shown once per pipeline)",
                len(other_text),
                len(items),
                other_text[0],
                items[other_text[0]].id,
            )
        return out

    def memories(self, items: Sequence[Item]) -> torch.Tensor:
        """``(k, n_mem, H)`` memories of `items`, in order, in the model's dtype and device:
        the item's own memory, else the store's for its id (if the item's text is the
        stored text, or empty), else its text compressed now (once: `cache`).

        Raises:
            ValueError: an item to compress has empty text.

        Example:
            >>> pipeline = ClaraPipeline(model)
            >>> pipeline.memories([Item(None, "Paris is in France.")] * 2).shape[0], pipeline.cache.compressed
            (2, 1)
        """
        items = list(items)
        rows: list[torch.Tensor | None] = [it.memory for it in items]
        if self.store is not None:
            rows = self._stored_memories(items, rows)
        todo = [j for j, row in enumerate(rows) if row is None]
        for j in todo:
            if not isinstance(items[j].text, str) or not items[j].text.strip():
                raise ValueError(
                    f"documents[{j}] has no stored memory and no text to compress "
                    "(empty page_content / node text)"
                )
        if todo:
            for j, row in zip(todo, self.cache.get(self.model, [items[j].text for j in todo])):
                rows[j] = row
        if not rows:
            return torch.empty(
                0,
                self.model.n_mem,
                self.model.hidden_size,
                device=self.model.device,
                dtype=self.model.dtype,
            )
        return torch.stack([r.to(self.model.device, self.model.dtype) for r in rows])

    def memory_batch(self, memory: torch.Tensor) -> torch.Tensor:
        """`memory` as ``(k, n_mem, H)`` (k >= 1) in the model's dtype and device; accepts
        ``(k, n_mem, H)``, flattened ``(k, n_mem * H)`` and one document ``(n_mem, H)``.

        Raises:
            ValueError: any other shape (the message gives the expected ones).

        Example:
            >>> memory = torch.zeros(2, model.n_mem * model.hidden_size)
            >>> ClaraPipeline(model).memory_batch(memory).shape == (2, model.n_mem, model.hidden_size)
            True
        """
        n_mem, hidden = self.model.n_mem, self.model.hidden_size
        if not isinstance(memory, torch.Tensor):
            raise TypeError(f"memory must be a tensor, got {type(memory).__name__}")
        mem = memory
        if mem.dim() == 2 and n_mem > 1 and tuple(mem.shape) == (n_mem, hidden):
            mem = mem.unsqueeze(0)  # one document
        if mem.dim() == 2 and mem.shape[1] == n_mem * hidden:
            mem = mem.reshape(-1, n_mem, hidden)
        if mem.dim() != 3 or tuple(mem.shape[1:]) != (n_mem, hidden) or mem.shape[0] == 0:
            raise ValueError(
                f"memory must be one ({n_mem}, {hidden}) block per document: the memory tensor "
                f"must be (k, {n_mem}, {hidden}) or (k, {n_mem * hidden}) with k >= 1, "
                f"got {tuple(memory.shape)}"
            )
        return mem.to(self.model.device, self.model.dtype)

    # ------------------------------------------------------------------ answering
    def prepare_answer(
        self,
        question: str,
        memories: torch.Tensor,
        *,
        stop: Sequence[str] = (),
        max_new_tokens: int = 128,
        **generate_kwargs: Any,
    ) -> Generation:
        """Validate and build the generator's inputs for `question` over `memories`
        (k documents, rank order) now; run or stream the returned `Generation` later.

        Example:
            >>> pipeline = ClaraPipeline(model)
            >>> gen = pipeline.prepare_answer("Who?", pipeline.compress(["a b c"]), max_new_tokens=2)
            >>> gen.num_documents, gen.memory_tokens == model.n_mem
            (1, True)
        """
        question = check_question(question)
        max_new = _positive(max_new_tokens, "max_new_tokens")
        mem = self.memory_batch(memories)
        model = self.model
        inputs = model.prepare_generation_inputs([question], mem)

        def run(**extra: Any) -> None:
            model.generate_from_embeddings(
                inputs["inputs_embeds"],
                inputs["attention_mask"],
                max_new_tokens=max_new,
                **generate_kwargs,
                **extra,
            )

        k = int(mem.shape[0])
        return Generation(
            model.tokenizer,
            run,
            stop=stop,
            max_new_tokens=max_new,
            prompt_tokens=int(inputs["attention_mask"].shape[1]),
            num_documents=k,
            memory_tokens=k * model.n_mem,
        )

    def answer(
        self,
        question: str,
        memories: torch.Tensor,
        *,
        stream: bool = False,
        stop: Sequence[str] = (),
        max_new_tokens: int = 128,
        **generate_kwargs: Any,
    ) -> Answer | AnswerStream:
        """The generator's answer to `question`, reading `memories` (k, n_mem, H) spliced
        into CLaRa's answer prompt (never the documents' text). Greedy unless
        `generate_kwargs` sample (see `sampling_kwargs`); `stop` strings end it early and
        are not returned. With `stream`, an `AnswerStream` of text deltas.

        Example:
            >>> pipeline = ClaraPipeline(model)
            >>> whole = pipeline.answer("Who?", pipeline.compress(["a b c"]), max_new_tokens=3)
            >>> streamed = pipeline.answer("Who?", pipeline.compress(["a b c"]), stream=True, max_new_tokens=3)
            >>> "".join(streamed) == whole.text
            True
        """
        gen = self.prepare_answer(
            question, memories, stop=stop, max_new_tokens=max_new_tokens, **generate_kwargs
        )
        return gen.stream() if stream else gen.run()

    def prepare_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        stop: Sequence[str] = (),
        max_new_tokens: int = 128,
        **generate_kwargs: Any,
    ) -> Generation:
        """Like `prepare_answer`, for the plain base chat model (chat template, no
        adapter, no memory) over ``{"role", "content"}`` messages.

        Raises:
            ValueError: no message has any text.

        Example:
            >>> gen = ClaraPipeline(model).prepare_chat([{"role": "user", "content": "Hi"}])
            >>> gen.prompt_tokens > 0, gen.num_documents
            (True, 0)
        """
        chat = [{"role": m["role"], "content": m["content"] or ""} for m in messages]
        if not any(m["content"].strip() for m in chat):
            raise ValueError("empty prompt: the messages are missing or hold no text")
        max_new = _positive(max_new_tokens, "max_new_tokens")
        model, tok = self.model, self.model.tokenizer
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        prompt_tokens = len(tok(text, add_special_tokens=False)["input_ids"])

        def run(**extra: Any) -> None:
            model.generate_from_messages(chat, max_new_tokens=max_new, **generate_kwargs, **extra)

        return Generation(tok, run, stop=stop, max_new_tokens=max_new, prompt_tokens=prompt_tokens)

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        stream: bool = False,
        stop: Sequence[str] = (),
        max_new_tokens: int = 128,
        **generate_kwargs: Any,
    ) -> Answer | AnswerStream:
        """The base chat model's reply to `messages` (see `prepare_chat`, `answer`).

        Example:
            >>> reply = ClaraPipeline(model).chat([{"role": "user", "content": "Hi"}], max_new_tokens=2)
            >>> len(reply.token_ids) <= 2
            True
        """
        gen = self.prepare_chat(
            messages, stop=stop, max_new_tokens=max_new_tokens, **generate_kwargs
        )
        return gen.stream() if stream else gen.run()

    # ------------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
        ids: Sequence[str],
        *,
        batch_size: int = 16,
        show_progress: bool = False,
    ) -> None:
        """Compress and store `texts` under `ids` (ids already stored are replaced).

        Example:
            >>> from clara_integrations.store import MemoryStore
            >>> pipeline = ClaraPipeline(model, MemoryStore.for_model(model))
            >>> for topic in ("cities", "capitals"):
            ...     pipeline.add_texts(["Paris is in France."], [{"topic": topic}], ["p"])
            >>> len(pipeline.store), pipeline.store.get_nodes(["p"])[0].metadata
            (1, {'topic': 'capitals'})
        """
        store = self._need_store()
        old, new = _split(store, ids)
        if new:  # the store compresses in chunks, with one progress bar
            store.add_documents(
                [texts[j] for j in new],
                self.model,
                metadata=[metadata[j] for j in new],
                ids=[ids[j] for j in new],
                batch_size=batch_size,
                show_progress=show_progress,
            )
        if old:
            memory = self.compress([texts[j] for j in old], batch_size, show_progress)
            store.update(
                [ids[j] for j in old],
                memory,
                texts=[texts[j] for j in old],
                metadata=[metadata[j] for j in old],
            )
