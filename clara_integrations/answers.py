"""SQuAD-style answer normalisation of the reference evaluation (spec §8), shared by the
demo (does an answer contain the reference?) and `training.metrics` (EM/F1)."""

from __future__ import annotations

import re
import string

__all__ = ["normalize_answer"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """``"True"``/``"False"`` → ``yes``/``no``, lower case, ASCII punctuation and articles
    removed, whitespace collapsed.

    Example:
        >>> normalize_answer("The  Eiffel Tower!")
        'eiffel tower'
    """
    text = {"True": "yes", "False": "no"}.get(text, text)
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())
