"""LlamaIndex `MetadataFilters` -> the MemoryStore's filter dict.

The store ANDs one clause per key with ``$eq``, ``$ne``, ``$in`` and ``$nin``, and a
list-valued metadata field matches when any element does; anything else (OR, NOT,
nesting, range operators, two clauses on one key) is refused with a clear error rather
than silently widened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

_OPS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.CONTAINS: "$eq",  # list field contains the value
    FilterOperator.NE: "$ne",
    FilterOperator.IN: "$in",
    FilterOperator.ANY: "$in",  # list field contains any of the values
    FilterOperator.NIN: "$nin",
}


def to_store_filters(filters: MetadataFilters | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Translate `filters` (LlamaIndex `MetadataFilters`, or a store filter dict passed
    through unchanged) to the store's syntax.

    Raises:
        ValueError: an operator or condition the store cannot express.
    """
    if filters is None:
        return None
    if isinstance(filters, Mapping):
        return dict(filters) or None
    if not isinstance(filters, MetadataFilters):
        raise TypeError(f"filters must be MetadataFilters or a dict, got {type(filters).__name__}")
    if filters.condition not in (None, FilterCondition.AND) and len(filters.filters) > 1:
        raise ValueError(
            f"ClaraVectorStore filters support only the AND condition, got {filters.condition.value!r}"
        )
    out: dict[str, Any] = {}
    for item in filters.filters:
        if not isinstance(item, MetadataFilter):
            raise ValueError("nested MetadataFilters are not supported by the CLaRa store")
        op = _OPS.get(item.operator)
        if op is None:
            raise ValueError(
                f"filter operator {item.operator.value!r} on {item.key!r} is not supported; "
                f"use one of {sorted(o.value for o in _OPS)}"
            )
        if item.key in out:
            raise ValueError(
                f"two filters on {item.key!r}; combine them into one 'in'/'nin' filter"
            )
        value = item.value
        if op in ("$in", "$nin") and not isinstance(value, list):
            value = [value]
        out[item.key] = {op: value}
    return out or None
