"""LlamaIndex `MetadataFilters` -> the MemoryStore's filter dict.

Equality, membership, ranges, AND / OR and nesting translate one to one
(`clara_integrations.store.filters`); what the store cannot evaluate before the top-k cut
(NOT, text matching, empty checks) is refused with a clear error rather than silently
widened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilters,
)

_OPS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.CONTAINS: "$eq",  # list field contains the value
    FilterOperator.NE: "$ne",
    FilterOperator.IN: "$in",
    FilterOperator.ANY: "$in",  # list field contains any of the values
    FilterOperator.NIN: "$nin",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
}
_CONDITIONS = {None: "$and", FilterCondition.AND: "$and", FilterCondition.OR: "$or"}


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
    return _translate(filters) or None


def _translate(filters: MetadataFilters) -> dict[str, Any]:
    word = _CONDITIONS.get(filters.condition)
    if word is None:
        raise ValueError(
            f"filter condition {filters.condition.value!r} is not supported by the CLaRa store; "
            "use 'and' or 'or' (a negation can often be written with 'ne' / 'nin')"
        )
    parts = []
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            parts.append(_translate(item))
            continue
        op = _OPS.get(item.operator)
        if op is None:
            raise ValueError(
                f"filter operator {item.operator.value!r} on {item.key!r} is not supported; "
                f"use one of {sorted(o.value for o in _OPS)}"
            )
        value = item.value
        if op in ("$in", "$nin") and not isinstance(value, list):
            value = [value]
        parts.append({item.key: {op: value}})
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {word: parts}
