"""Metadata filters, compiled to SQL over the ``node_meta`` table.

Filter syntax (a dict; several keys are AND-ed)::

    {"source": "a.pdf"}                         # equality
    {"source": ["a.pdf", "b.pdf"]}              # membership: any of the listed values
    {"source": {"$in": ["a.pdf", "b.pdf"]}}     # membership, explicit
    {"source": {"$eq": "a.pdf"}}                # equality, explicit
    {"source": {"$ne": "a.pdf"}}                # not equal (nodes without the key match)
    {"source": {"$nin": ["a.pdf", "b.pdf"]}}    # none of (nodes without the key match)

Values compare by JSON value: ``1 == 1.0`` and ``True != 1``; ``"1" != 1``. A list-valued
metadata field matches when any of its elements matches (``{"tags": "x"}`` finds nodes
whose ``tags`` list contains ``"x"``). Nested dicts are stored but cannot be filtered on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["canonical_value", "compile_filters", "index_pairs"]

_SCALARS = (str, int, float, bool, type(None))
_OPERATORS = ("$eq", "$in", "$ne", "$nin")


def canonical_value(value: Any) -> str:
    """A canonical text form of a scalar so that SQL equality is JSON equality.

    Raises:
        ValueError: for non-scalar values and NaN/inf.
    """
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"metadata/filter value {value!r} is not finite")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise ValueError(f"filter values must be str, int, float, bool or None, got {value!r}")


def index_pairs(metadata: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """The (key, canonical value) pairs under which a node is found by filters."""
    for key, value in metadata.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, _SCALARS) and not (
                isinstance(item, float) and not math.isfinite(item)
            ):
                yield key, canonical_value(item)


def _clause(key: str, spec: Any) -> tuple[str, list[str], bool]:
    """-> (op, canonical values, negated) for one filter key."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"filter keys must be non-empty strings, got {key!r}")
    if isinstance(spec, Mapping):
        if len(spec) != 1 or next(iter(spec)) not in _OPERATORS:
            raise ValueError(
                f"filter for {key!r} must be a value, a list, or one of "
                f"{{'$eq': v}}, {{'$ne': v}}, {{'$in': [...]}}, {{'$nin': [...]}}; got {spec!r}"
            )
        op, arg = next(iter(spec.items()))
    elif isinstance(spec, (list, tuple, set, frozenset)):
        op, arg = "$in", spec
    else:
        op, arg = "$eq", spec
    if op in ("$in", "$nin"):
        if not isinstance(arg, (list, tuple, set, frozenset)):
            raise ValueError(f"{op} for {key!r} needs a list of values, got {arg!r}")
        values = [canonical_value(v) for v in arg]
    else:
        values = [canonical_value(arg)]
    return op, values, op in ("$ne", "$nin")


def compile_filters(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """Compile a filter dict to an SQL condition on ``nodes.vid`` plus its parameters.

    Raises:
        ValueError: on malformed filters (the message names the key and the fix).
    """
    if not isinstance(filters, Mapping):
        raise ValueError(f"filters must be a dict, got {type(filters).__name__}")
    conds: list[str] = []
    params: list[Any] = []
    for key, spec in filters.items():
        _op, values, negated = _clause(key, spec)
        if not values:  # $in [] matches nothing, $nin [] matches everything
            conds.append("1" if negated else "0")
            continue
        marks = ",".join("?" * len(values))
        sub = f"SELECT vid FROM node_meta WHERE key = ? AND value IN ({marks})"
        conds.append(f"n.vid {'NOT IN' if negated else 'IN'} ({sub})")
        params.extend([key, *values])
    return (" AND ".join(conds) or "1"), params
