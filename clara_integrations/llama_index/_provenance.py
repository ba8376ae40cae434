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

from ..store import StoreMismatchError

__all__ = ["VECTORS", "VectorProvenance", "refuse_foreign"]


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


def refuse_foreign(vector: Sequence[float], identity: str | None, what: str, where: str) -> None:
    """Raise `StoreMismatchError` if `ClaraEmbedding` of another model than `identity`
    made `vector` (`what`: the vector, `where`: what it was given to)."""
    made_by = VECTORS.made_by(vector)
    if made_by is not None and identity is not None and made_by != identity:
        raise StoreMismatchError(
            f"{what} was embedded by ClaraEmbedding of model {made_by}, but {where} belongs "
            f"to model {identity}: embed with that model (ClaraEmbedding(model=...)), or "
            "rebuild the store with the new model"
        )
