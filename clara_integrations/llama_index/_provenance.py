"""Which CLaRa model made a vector: `ClaraEmbedding` notes each query and document
vector it returns, `ClaraVectorStore` checks them against its store.

LlamaIndex hands a vector store bare float lists (``VectorStoreQuery.query_embedding``,
``node.embedding``): nothing says which model made them. A store loaded without
``model=`` would then rank one model's queries against another's memories (or mix two
compressors' memories in one index) with no error, only worse results, since every
CLaRa model of one base has the same width. Vectors are recognised by their exact values
(a digest), so a vector the user computed some other way is simply not checked.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["VECTORS", "VectorProvenance"]


def _digest(vector: Sequence[float]) -> bytes:
    return hashlib.blake2b(struct.pack(f"{len(vector)}d", *vector), digest_size=16).digest()


class VectorProvenance:
    """Digest of a vector -> identity of the model that made it, the `capacity` most
    recent kept (16 bytes + a shared identity string each)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._made_by: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, identity: str, vectors: Sequence[Sequence[float]]) -> None:
        """Remember that `identity`'s model made `vectors`."""
        digests = [_digest(v) for v in vectors]
        with self._lock:
            for d in digests:
                self._made_by[d] = identity
                self._made_by.move_to_end(d)
            while len(self._made_by) > self.capacity:
                self._made_by.popitem(last=False)

    def made_by(self, vector: Sequence[float]) -> str | None:
        """The identity of the model that made `vector`, or None if none noted it."""
        digest = _digest(vector)
        with self._lock:
            return self._made_by.get(digest)


VECTORS = VectorProvenance()
