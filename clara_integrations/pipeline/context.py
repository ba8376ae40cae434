"""Recognising retrieved CLaRa documents inside the text a framework hands to an LLM.

Why this exists: the most common RAG patterns render retrieved documents as prompt
*text* before the LLM sees them. LlamaIndex's default text synthesizer (CompactAndRefine,
built by ``index.as_query_engine(llm=ClaraLLM(...))``; no hook swaps in
`ClaraSynthesizer`) calls ``llm.predict(template, context_str=...)``; LangChain's LCEL
pattern ``{"context": retriever | format_docs, "question": RunnablePassthrough()} |
prompt | ChatClara()`` hands the chat model one filled-in prompt. The documents
themselves never reach the LLM, so without this CLaRa would read their text, not their
memory, and say nothing about it.

So the CLaRa components that return documents with memory (both frameworks' retrievers
and vector stores, the LlamaIndex reranker) record them here: the document's content as
the framework renders it for an LLM -> its memory. The LLM then finds those contents in
its prompt: `match` when the whole context must be exactly registered contents
separated by whitespace (LlamaIndex's ``context_str``; the synthesizers join chunks with
blank lines, and any other text there means the text path is used), `find` for
contents anywhere in a prompt (LangChain's filled-in templates).

Two nodes whose contents render the same but whose memories differ make that content
ambiguous: it matches nothing (the text path, with its warning) rather than one of them.

The registry is process-wide, keyed by the compressor's identity (a store knows it
without a model), least recently used first out, bounded in entries and in bytes: it only
has to bridge the moment between retrieval and generation.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch

_TOKEN = re.compile(r"\S+")
_SPACE = re.compile(r"\s*")

MAX_ITEMS = 10_000
MAX_BYTES = 256 * 2**20

#: The memory of a content registered with two different memories (two nodes whose text
#: renders the same but whose memories differ, e.g. through metadata the embedding reads
#: and the LLM does not): no lookup can tell which is meant, so none answers for it.
AMBIGUOUS = torch.empty(0)
#: Memories of one content that differ by at most this share of their largest value are
#: the same (a stored float16 copy and a fresh float32 one of one text).
SAME_MEMORY_RTOL = 1e-2


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is AMBIGUOUS or a.shape != b.shape:
        return False
    a, b = a.float(), b.float()
    return bool((a - b).abs().max() <= SAME_MEMORY_RTOL * a.abs().max())


class ContextRegistry:
    """``(identity, content) -> memory`` for recently returned nodes, LRU-bounded.

    Example:
        >>> registry = ContextRegistry(max_items=100)                        # doctest: +SKIP
        >>> registry.register("clara-x", [node], [memory])                    # doctest: +SKIP
        >>> registry.match("clara-x", "\\n\\n".join([c1, c2]))                  # doctest: +SKIP
        [(c1, memory1), (c2, memory2)]
    """

    def __init__(self, max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        # identity -> first whitespace-delimited token -> contents starting with it
        self._heads: dict[str, dict[str, dict[str, None]]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes held by the registered memories."""
        return self._bytes

    @staticmethod
    def _size(content: str, memory: torch.Tensor) -> int:
        return memory.numel() * memory.element_size() + len(content)

    def register(
        self,
        identity: str | None,
        contents: Sequence[str],
        memories: Sequence[torch.Tensor | None],
    ) -> None:
        """Record each document's content as rendered for an LLM (stripped) with its
        ``(n_mem, H)`` memory (entries without memory or content, and an unknown identity,
        are skipped)."""
        if not identity:
            return
        fresh = [
            (c.strip(), m.detach().to("cpu", copy=True))
            for c, m in zip(contents, memories)
            if m is not None
        ]
        with self._lock:
            for content, memory in fresh:
                if not content:
                    continue
                key = (identity, content)
                old = self._items.pop(key, None)
                if old is not None:
                    self._bytes -= self._size(content, old)
                    if not _same_memory(old, memory):
                        memory = AMBIGUOUS
                self._items[key] = memory
                self._bytes += self._size(content, memory)
                head = _TOKEN.match(content).group()
                self._heads.setdefault(identity, {}).setdefault(head, {})[content] = None
            while self._items and (
                len(self._items) > self.max_items or self._bytes > self.max_bytes
            ):
                self._evict()

    def _evict(self) -> None:
        (identity, content), memory = self._items.popitem(last=False)
        self._bytes -= self._size(content, memory)
        heads = self._heads[identity]
        head = _TOKEN.match(content).group()
        heads[head].pop(content, None)
        if not heads[head]:
            del heads[head]
            if not heads:
                del self._heads[identity]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._heads.clear()
            self._bytes = 0

    def get(self, identity: str, contents: Sequence[str]) -> list[torch.Tensor] | None:
        """Memories of `contents`, or None if any is no longer registered."""
        with self._lock:
            out = []
            for content in contents:
                memory = self._items.get((identity, content))
                if memory is None or memory is AMBIGUOUS:
                    return None
                self._items.move_to_end((identity, content))
                out.append(memory)
            return out

    def match(self, identity: str, context: str) -> list[tuple[str, torch.Tensor]] | None:
        """Split `context` into registered contents separated only by whitespace, in
        order of appearance; None unless every non-space character is accounted for."""
        if not isinstance(context, str):
            return None
        n = len(context)
        start = _SPACE.match(context).end()
        if start == n:
            return None
        with self._lock:
            heads = self._heads.get(identity)
            if not heads:
                return None
            # Depth-first search over the positions where a registered content can start;
            # back[j] = (i, content) means content spans context[i:...] and the next one
            # (after whitespace) starts at j. Longest candidates are tried first.
            back: dict[int, tuple[int, str] | None] = {start: None}
            todo = [start]
            while todo and n not in back:
                i = todo.pop()
                token = _TOKEN.match(context, i).group()
                candidates = sorted(heads.get(token, ()), key=len)
                for content in candidates:  # pushed shortest first, so popped longest first
                    if not context.startswith(content, i):
                        continue
                    end = i + len(content)
                    if end < n and not context[end].isspace():
                        continue  # the content stops mid-word: not a node boundary
                    nxt = _SPACE.match(context, end).end()
                    if nxt not in back:
                        back[nxt] = (i, content)
                        todo.append(nxt)
            if n not in back:
                return None
            found: list[str] = []
            pos = n
            while (step := back[pos]) is not None:
                pos, content = step
                found.append(content)
            found.reverse()
            out = []
            for content in found:
                self._items.move_to_end((identity, content))
                out.append((content, self._items[(identity, content)]))
            if any(memory is AMBIGUOUS for _, memory in out):
                return None
            return out

    def find(self, identity: str, text: str) -> list[tuple[int, int, torch.Tensor]]:
        """Registered contents occurring in `text` as blocks of a filled-in template,
        left to right, the longest where several start at one place: ``(start, end,
        memory)`` each. A block ends on a word boundary and stands apart on at least one
        side (`_stands_apart`): a retrieved document's text inside a sentence ("Is Python
        faster than Rust", with a document "Python" retrieved earlier) is not one."""
        if not isinstance(text, str):
            return []
        found = []
        with self._lock:
            heads = self._heads.get(identity)
            if not heads:
                return []
            done = 0
            for token in _TOKEN.finditer(text):
                start = token.start()
                if start < done:
                    continue  # inside a content already found
                for content in sorted(heads.get(token.group(), ()), key=len, reverse=True):
                    end = start + len(content)
                    if self._items[(identity, content)] is AMBIGUOUS:
                        continue  # left as text: no single memory is its
                    if (
                        text.startswith(content, start)
                        and (end == len(text) or not text[end].isalnum())
                        and _stands_apart(text, start, end)
                    ):
                        self._items.move_to_end((identity, content))
                        found.append((start, end, self._items[(identity, content)]))
                        done = end
                        break
        return found


def _stands_apart(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is set apart as templates set documents apart: only
    spaces or tabs between it and a line break or the text's edge on one side, or a
    colon before it ("Context: ...")."""
    before = text[:start].rstrip(" \t")
    after = text[end:].lstrip(" \t")
    return not before or before[-1] in "\n:" or not after or after[0] == "\n"


REGISTRY = ContextRegistry()
