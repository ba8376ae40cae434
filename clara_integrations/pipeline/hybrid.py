"""Hybrid retrieval: CLaRa's ranking fused with BM25's over the same store.

Measured on the held-out QA sets (`python -m benchmarks.retrieval_quality`, rows
`<label>+bm25`), reciprocal-rank fusion of a CLaRa checkpoint with BM25 ranks better than
either alone where the small model is weakest (multi-hop questions whose second passage
shares words with the question). LlamaIndex's `QueryFusionRetriever` and LangChain's
`EnsembleRetriever` fuse rankings too, but a BM25 retriever beside them returns documents
without memory, which `ClaraLLM` / `ChatClara` would have to compress again; fusing here,
over the store's own nodes, keeps every result's stored memory.

Example:
    >>> reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60)[0]
    ('a', 0.03252247488101534)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ..store.errors import NodeNotFoundError
from ..store.protocol import MemoryStoreProtocol
from .bm25 import BM25

__all__ = ["RRF_K", "StoreBM25", "live_nodes", "reciprocal_rank_fusion"]

#: The constant of Cormack et al. (2009), used as is (not tuned on our sets).
RRF_K = 60


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], k: int = RRF_K
) -> list[tuple[str, float]]:
    """Fuse rankings (ids, best first) by reciprocal rank: score(d) = sum over rankings
    of ``1 / (k + rank of d)``, ranks from 1; a ranking that lacks d adds nothing.

    Returns (id, score) best first; ties keep the order of first appearance (the first
    ranking's order, then the next one's).

    Example:
        >>> [i for i, _ in reciprocal_rank_fusion([["x", "y"], ["y", "z"]])]
        ['y', 'x', 'z']
    """
    if k < 0:
        raise ValueError(f"the fusion constant k must be >= 0, got {k}")
    scores: dict[str, float] = {}
    for ranking in rankings:
        for position, item in enumerate(ranking):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + position + 1)
    # `scores` is in order of first appearance and `sorted` is stable: that is the tie order.
    return sorted(scores.items(), key=lambda pair: -pair[1])


def live_nodes(
    store: MemoryStoreProtocol, ids: Sequence[str], *, memories: bool = False
) -> list[Any]:
    """The nodes of `ids` still in `store`, in order (with ``memories=True``: pairs of node
    and memory ``(n_mem, H)``). Ids listed before a concurrent delete are left out, not
    raised: the caller read them from an index that the delete has made stale (and that
    the delete's new ``revision`` rebuilds on the next query).

    Example:
        >>> import torch
        >>> from clara_integrations.store import MemoryStore
        >>> store = MemoryStore(n_mem=2, hidden_size=4)
        >>> _ = store.add(torch.randn(2, 2, 4), texts=["a", "b"], ids=["a", "b"])
        >>> [node.text for node in live_nodes(store, ["b", "gone", "a"])]
        ['b', 'a']
    """
    ids = list(ids)
    while True:
        try:
            if memories:  # one version of each node: text and memory never mixed
                nodes, rows = store.get_nodes_with_memories(ids)
                return list(zip(nodes, rows))
            return store.get_nodes(ids)
        except NodeNotFoundError:
            ids = [i for i in ids if i in store]  # deleted meanwhile: drop, read again


class StoreBM25:
    """BM25 over the texts of a store's live nodes, rebuilt when the store changes.

    The index is built on first use and again after any write (keyed on the store's
    ``revision``): reads between writes cost one BM25 scoring pass, a write followed by a
    query costs a rebuild (bm25s indexes roughly 10^4 short documents per second on one
    core). Filters are applied before the top-n cut, as in the store's own search.

    Raises:
        TypeError: the store has no ``revision`` (e.g. a Milvus collection, which other
            writers change behind this process; use Milvus's own full-text search there).

    Example:
        >>> import torch
        >>> from clara_integrations.store import MemoryStore
        >>> store = MemoryStore(n_mem=2, hidden_size=4)
        >>> _ = store.add(torch.randn(3, 2, 4), texts=["red apples", "green pears", "red cars"],
        ...               ids=["a", "p", "c"], metadata=[{"t": "fruit"}, {"t": "fruit"}, {}])
        >>> lexical = StoreBM25(store)
        >>> lexical.top("red", 5), lexical.top("red", 5, filters={"t": "fruit"})
        (['a', 'c'], ['a'])
    """

    def __init__(self, store: MemoryStoreProtocol) -> None:
        if not isinstance(getattr(store, "revision", None), int):
            raise TypeError(
                f"hybrid retrieval needs a store with a `revision` (a MemoryStore); "
                f"{type(store).__name__} has none, so its BM25 index could not be kept "
                "current. Search it without hybrid=True (for Milvus, fuse with its own "
                "full-text search)"
            )
        self.store = store
        self._lock = threading.Lock()
        self._revision: int | None = None
        self._ids: list[str] = []
        self._index = BM25([])

    def __getstate__(self) -> dict[str, Any]:
        # The store travels (by reference, as stores do); the lock cannot and the index
        # need not: it is rebuilt on first use.
        return {"store": self.store}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"])

    def _current(self) -> tuple[list[str], BM25]:
        with self._lock:
            revision = self.store.revision  # before the contents: a later write rebuilds
            if revision != self._revision:
                nodes = live_nodes(self.store, self.store.ids_where())
                self._ids = [node.id for node in nodes]
                self._index = BM25([node.text for node in nodes])
                self._revision = revision
            return self._ids, self._index

    def top(self, query: str, n: int, filters: Mapping[str, Any] | None = None) -> list[str]:
        """Ids of the `n` best nodes sharing a term with `query`, best first (ties: by id)."""
        ids, index = self._current()
        allowed = None if filters is None else set(self.store.ids_where(filters))
        keep = None if allowed is None else (lambda i: ids[i] in allowed)
        return [ids[i] for i in index.top(query, n, keep=keep)]
