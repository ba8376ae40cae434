"""The store's filter syntax (`filters`) as Milvus boolean expressions.

A node's metadata is written to three Milvus fields so that each filter becomes one
pushed-down expression with `MemoryStore`'s semantics:

* ``pairs`` (ARRAY of VARCHAR): a digest of every (key, canonical value) pair under which
  `filters.index_pairs` finds the node, so that equality follows JSON value rules
  (``1 == 1.0``, ``True != 1``) and a list matches when any element does, exactly as
  `MemoryStore`'s ``node_meta`` table does; digests also keep user strings out of the
  expression text;
* ``numbers`` / ``strings`` (JSON): the node's scalar numbers (booleans excluded) and
  strings, under a digest of their key, for range bounds. A range compares scalar values
  only: a list-valued field never matches a range on Milvus (on `MemoryStore` any element
  may), which the README states. Milvus compares strings as they are, `MemoryStore` in
  their JSON-escaped form: the two order a bound holding ``"`` or ``\\`` differently, and
  a bound with a control character is refused here.

Example:
    >>> milvus_expression({"page": {"$gte": 3}}).startswith('(numbers["k')
    True
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from .filters import _Dialect, condition, index_pairs

__all__ = ["metadata_fields", "milvus_expression", "pair_digest"]

#: Always true / false (ids are non-empty strings).
_TRUE, _FALSE = 'id != ""', 'id == ""'


def pair_digest(key: str, canonical: str) -> str:
    """Fixed-width digest of one (key, canonical value) pair."""
    return hashlib.sha256(json.dumps([key, canonical]).encode()).hexdigest()[:32]


def _key_digest(key: str) -> str:
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:24]


def metadata_fields(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The filterable fields of one node: ``pairs``, ``numbers``, ``strings``."""
    numbers, strings = {}, {}
    for key, value in metadata.items():
        if isinstance(value, str):
            strings[_key_digest(key)] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if not (isinstance(value, float) and not math.isfinite(value)):
                numbers[_key_digest(key)] = value
    pairs = sorted({pair_digest(k, v) for k, v in index_pairs(metadata)})
    return {"pairs": pairs, "numbers": numbers, "strings": strings}


def _literal(text: str) -> str:
    """A Milvus string literal. Milvus' expression parser knows the escapes of ``\\`` and
    ``\"`` but not ``\\u``: control characters and lone surrogates cannot be written."""
    if any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise ValueError(
            f"range bound {text!r} holds a control character or lone surrogate, which a "
            "Milvus expression cannot hold; use MemoryStore for such bounds"
        )
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _MilvusDialect(_Dialect):
    true = (_TRUE, [])
    false = (_FALSE, [])

    def membership(self, key: str, values: list[str], negated: bool) -> tuple[str, list[Any]]:
        digests = json.dumps([pair_digest(key, v) for v in values])
        test = f"array_contains_any(pairs, {digests})"
        return (f"not {test}" if negated else test), []

    def number_range(self, key: str, op: str, bound: float | int) -> tuple[str, list[Any]]:
        return f'numbers["{_key_digest(key)}"] {op} {bound!r}', []

    def string_range(self, key: str, op: str, bound: str) -> tuple[str, list[Any]]:
        return f'strings["{_key_digest(key)}"] {op} {_literal(bound)}', []

    def join(self, parts: list[tuple[str, list[Any]]], word: str) -> tuple[str, list[Any]]:
        return f" {word.lower()} ".join(f"({cond})" for cond, _ in parts), []


def milvus_expression(filters: Mapping[str, Any] | None) -> str:
    """The Milvus expression of `filters` (the `MemoryStore` syntax); ``""`` for none.

    Raises:
        ValueError: malformed filters (the same messages as `MemoryStore`).
    """
    if not filters:
        if filters is not None and not isinstance(filters, Mapping):
            raise ValueError(f"filters must be a dict, got {type(filters).__name__}")
        return ""
    expression, _ = condition(filters, _MilvusDialect())
    return f"({expression})"
