"""Metadata filters, compiled to SQL over the ``node_meta`` table (and, through the same
parser, to Milvus expressions: `milvus_filters`).

Filter syntax (a dict; several keys are AND-ed)::

    {"source": "a.pdf"}                         # equality
    {"source": ["a.pdf", "b.pdf"]}              # membership: any of the listed values
    {"source": {"$in": ["a.pdf", "b.pdf"]}}     # membership, explicit
    {"source": {"$eq": "a.pdf"}}                # equality, explicit
    {"source": {"$ne": "a.pdf"}}                # not equal (nodes without the key match)
    {"source": {"$nin": ["a.pdf", "b.pdf"]}}    # none of (nodes without the key match)
    {"page": {"$gte": 3, "$lt": 10}}            # ranges: $gt $gte $lt $lte, AND-ed
    {"$or": [{"source": "a.pdf"}, {"page": {"$gt": 100}}]}   # any of the sub-filters
    {"$and": [{...}, {...}]}                    # all of them (as several keys are)

Values compare by JSON value: ``1 == 1.0`` and ``True != 1``; ``"1" != 1``. A range
compares numbers with numbers and strings with strings (code-point order); a bound of one
type never matches a value of the other, nor booleans or None (integers compare
exactly up to 64 bits, so nanosecond timestamps work; strings holding ``"``,
``\\`` or control characters compare in their JSON-escaped form). A list-valued metadata
field matches when any of its elements matches (``{"tags": "x"}`` finds nodes whose
``tags`` list contains ``"x"``). Nested dicts are stored but cannot be filtered on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["canonical_value", "compile_filters", "filter_keys", "index_pairs", "value_types"]

_SCALARS = (str, int, float, bool, type(None))
_MEMBERSHIP = ("$eq", "$in", "$ne", "$nin")
_RANGES = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_OPERATORS = (*_MEMBERSHIP, *_RANGES)
_LOGICAL = ("$and", "$or")
# node_meta values are canonical JSON text: numbers are the rows whose text is neither a
# quoted string nor true/false/null, and compare as REAL; strings compare as text.
_IS_NUMBER = "substr(value, 1, 1) != '\"' AND value NOT IN ('true', 'false', 'null')"
_IS_STRING = "substr(value, 1, 1) = '\"'"
# A number row's value: an INTEGER when its text is one exactly (SQLite then compares it
# with an integer or real bound exactly), else REAL. Everything as REAL would round
# integers past 2**53 (nanosecond timestamps: 1700000000000000001 > 1700000000000000000
# was false).
_NUMBER_SQL = (
    "(CASE WHEN CAST(CAST(value AS INTEGER) AS TEXT) = value THEN CAST(value AS INTEGER) "
    "ELSE CAST(value AS REAL) END)"
)


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


class _Dialect:
    """How one backend writes the conditions of a filter (SQL here; Milvus expressions in
    `milvus_filters`): the parsing and validation of the filter dict stay in one place."""

    true: tuple[str, list[Any]] = ("1", [])
    false: tuple[str, list[Any]] = ("0", [])

    def membership(self, key: str, values: list[str], negated: bool) -> tuple[str, list[Any]]:
        """`key` holds (or, `negated`, holds none of) these canonical values; non-empty."""
        marks = ",".join("?" * len(values))
        sub = f"SELECT vid FROM node_meta WHERE key = ? AND value IN ({marks})"
        return f"n.vid {'NOT IN' if negated else 'IN'} ({sub})", [key, *values]

    def number_range(self, key: str, op: str, bound: float | int) -> tuple[str, list[Any]]:
        test = f"{_IS_NUMBER} AND {_NUMBER_SQL} {op} ?"
        return f"n.vid IN (SELECT vid FROM node_meta WHERE key = ? AND {test})", [key, bound]

    def string_range(self, key: str, op: str, bound: str) -> tuple[str, list[Any]]:
        # Compared without the JSON quotes (a closing quote would sort "ab" after "ab c").
        test = f"{_IS_STRING} AND substr(value, 2, length(value) - 2) {op} ?"
        param = canonical_value(bound)[1:-1]
        return f"n.vid IN (SELECT vid FROM node_meta WHERE key = ? AND {test})", [key, param]

    def join(self, parts: list[tuple[str, list[Any]]], word: str) -> tuple[str, list[Any]]:
        """`parts` joined by AND/OR (two or more)."""
        return f" {word} ".join(f"({cond})" for cond, _ in parts), [
            p for _, ps in parts for p in ps
        ]


def _membership(d: _Dialect, key: str, op: str, arg: Any) -> tuple[str, list[Any]]:
    if op in ("$in", "$nin"):
        if not isinstance(arg, (list, tuple, set, frozenset)):
            raise ValueError(f"{op} for {key!r} needs a list of values, got {arg!r}")
        values = [canonical_value(v) for v in arg]
    else:
        values = [canonical_value(arg)]
    negated = op in ("$ne", "$nin")
    if not values:  # $in [] matches nothing, $nin [] matches everything
        return d.true if negated else d.false
    return d.membership(key, values, negated)


def _range(d: _Dialect, key: str, op: str, bound: Any) -> tuple[str, list[Any]]:
    if isinstance(bound, bool) or not isinstance(bound, (int, float, str)):
        raise ValueError(f"{op} for {key!r} needs a number or a string, got {bound!r}")
    if isinstance(bound, str):
        return d.string_range(key, _RANGES[op], bound)
    canonical = canonical_value(bound)  # also refuses NaN/inf
    if isinstance(bound, int) and -(2**63) <= bound < 2**63:
        return d.number_range(key, _RANGES[op], bound)  # exact, as SQLite INTEGER
    return d.number_range(key, _RANGES[op], float(canonical))


def _key_condition(d: _Dialect, key: str, spec: Any) -> tuple[str, list[Any]]:
    """Condition and parameters for one key's filter."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"filter keys must be non-empty strings, got {key!r}")
    if not isinstance(spec, Mapping):
        op = "$in" if isinstance(spec, (list, tuple, set, frozenset)) else "$eq"
        return _membership(d, key, op, spec)
    unknown = [op for op in spec if op not in _OPERATORS]
    if not spec or unknown or (len(spec) > 1 and any(op in _MEMBERSHIP for op in spec)):
        raise ValueError(
            f"filter for {key!r} must be a value, a list, one of {{'$eq': v}}, {{'$ne': v}}, "
            f"{{'$in': [...]}}, {{'$nin': [...]}}, or range bounds ({', '.join(_RANGES)}, "
            f"several AND-ed); got {spec!r}"
        )
    parts = [
        _membership(d, key, op, arg) if op in _MEMBERSHIP else _range(d, key, op, arg)
        for op, arg in spec.items()
    ]
    return _join(d, parts, "AND")


def _join(d: _Dialect, parts: list[tuple[str, list[Any]]], word: str) -> tuple[str, list[Any]]:
    if not parts:
        return d.true if word == "AND" else d.false
    if len(parts) == 1:
        return parts[0]
    return d.join(parts, word)


def condition(filters: Any, dialect: _Dialect) -> tuple[str, list[Any]]:
    """Validate `filters` and write them in `dialect` (unbracketed)."""
    if not isinstance(filters, Mapping):
        raise ValueError(f"filters must be a dict, got {type(filters).__name__}")
    parts = []
    for key, spec in filters.items():
        if key in _LOGICAL:
            if not isinstance(spec, (list, tuple)) or not spec:
                raise ValueError(f"{key} needs a non-empty list of filter dicts, got {spec!r}")
            parts.append(_join(dialect, [condition(sub, dialect) for sub in spec], key[1:].upper()))
        else:
            parts.append(_key_condition(dialect, key, spec))
    return _join(dialect, parts, "AND")


def compile_filters(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """Compile a filter dict to an SQL condition on ``nodes.vid`` plus its parameters.

    Raises:
        ValueError: on malformed filters (the message names the key and the fix).

    Example:
        >>> compile_filters({"page": {"$gte": 3}})[1]
        ['page', 3]
    """
    cond, params = condition(filters, _Dialect())
    # Bracketed: callers AND it with the live-row test, and AND binds tighter than OR.
    return f"({cond})", params


#: `json_type` in SQL, over a ``node_meta`` row's ``value`` (keep the two in step).
JSON_TYPE_SQL = (
    f"CASE WHEN {_IS_STRING} THEN 'string' WHEN value IN ('true', 'false') THEN 'bool' "
    "WHEN value = 'null' THEN 'null' ELSE 'number' END"
)


def json_type(canonical: str) -> str:
    """``"string"``, ``"number"``, ``"bool"`` or ``"null"``: the JSON type of a canonical
    value (`canonical_value`), the classes filters compare within."""
    if canonical.startswith('"'):
        return "string"
    if canonical in ("true", "false"):
        return "bool"
    return "null" if canonical == "null" else "number"


class _TypeProbe(_Dialect):
    """Records, per key, the JSON types a filter looks for (equality, ``$in`` and range
    bounds; not ``$ne``/``$nin``, which a value of another type satisfies)."""

    def __init__(self) -> None:
        self.types: dict[str, set[str]] = {}

    def membership(self, key: str, values: list[str], negated: bool) -> tuple[str, list[Any]]:
        if not negated:
            self.types.setdefault(key, set()).update(json_type(v) for v in values)
        return super().membership(key, values, negated)

    def number_range(self, key: str, op: str, bound: float) -> tuple[str, list[Any]]:
        self.types.setdefault(key, set()).add("number")
        return super().number_range(key, op, bound)

    def string_range(self, key: str, op: str, bound: str) -> tuple[str, list[Any]]:
        self.types.setdefault(key, set()).add("string")
        return super().string_range(key, op, bound)


def value_types(filters: Mapping[str, Any]) -> dict[str, set[str]]:
    """The JSON types (`json_type`) each key of a valid filter compares with; a key only
    negated (``$ne``, ``$nin``) maps to an empty set.

    Example:
        >>> value_types({"year": "2020", "$or": [{"page": {"$gt": 3}}, {"tag": {"$ne": 1}}]})
        {'year': {'string'}, 'page': {'number'}, 'tag': set()}
    """
    probe = _TypeProbe()
    condition(filters, probe)
    return {key: probe.types.get(key, set()) for key in filter_keys(filters)}


def filter_keys(filters: Mapping[str, Any]) -> list[str]:
    """The metadata keys a (valid) filter names, ``$and``/``$or`` branches included.

    Example:
        >>> filter_keys({"source": "a.pdf", "$or": [{"page": 1}, {"tags": "x"}]})
        ['source', 'page', 'tags']
    """
    keys: list[str] = []
    for key, value in filters.items():
        if key in _LOGICAL:
            for branch in value:
                keys.extend(filter_keys(branch))
        else:
            keys.append(key)
    return list(dict.fromkeys(keys))
