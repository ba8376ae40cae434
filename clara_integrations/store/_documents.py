"""`add_documents` shared by the store backends: validate, then compress and add in chunks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from . import _validate as check

__all__ = ["add_in_chunks", "document_texts"]


def document_texts(texts: Any) -> list[str]:
    """Non-empty document strings (the compressor needs text).

    Raises:
        TypeError / ValueError: not a list of strings, or an empty one.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError("texts must be a list of strings")
    texts_ = check.texts(texts, len(texts), required=True)
    for i, t in enumerate(texts_):
        if not t.strip():
            raise ValueError(f"texts[{i}] is empty; the compressor needs text")
    return texts_


def add_in_chunks(
    add: Callable[..., list[str]],
    model: Any,
    texts: list[str],
    metadata: list[Mapping[str, Any]],
    ids: list[str],
    batch_size: int,
    chunk_size: int,
    show_progress: bool | None,
) -> list[str]:
    """Compress `texts` `chunk_size` at a time (millions of documents never sit in memory
    at once) and `add` each chunk, with one progress bar over all of them."""
    if show_progress is None:
        show_progress = len(texts) > 64
    bar = tqdm(total=len(texts), desc="compressing", unit="doc", disable=not show_progress)
    try:
        for s in range(0, len(texts), chunk_size):
            part = slice(s, s + chunk_size)
            mem = model.compress_documents(texts[part], batch_size=batch_size, show_progress=False)
            add(mem, texts=texts[part], metadata=metadata[part], ids=ids[part])
            bar.update(len(texts[part]))
    finally:
        bar.close()
    return ids
