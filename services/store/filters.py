"""Callers' filters: one parser and one set of error messages for every backend.

Filters use Qdrant's JSON filter model (qdrant-client's pydantic classes). Reserved keys (`_...`) may not
be named anywhere in a filter; the store ANDs its own `_tenant` condition into every read, delete and
scroll. Boolean `match` values are refused on every backend: Qdrant Edge 0.9.0 turns `true` into the
integer 1 and never matches a stored boolean, and a filter must not mean different things on the two
backends (store flags as integers or keywords).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from qdrant_client import models as qm

from services.errors import InvalidInput
from services.store.names import TENANT_KEY, is_reserved

MAX_FILTER_DEPTH = 16


def _conditions(part: Any) -> list[Any]:
    if part is None:
        return []
    return list(part) if isinstance(part, list) else [part]


def _has_bool(match: Any) -> bool:
    if isinstance(match, qm.MatchValue):
        return isinstance(match.value, bool)
    if isinstance(match, qm.MatchAny):
        return any(isinstance(v, bool) for v in match.any)
    if isinstance(match, qm.MatchExcept):
        return any(isinstance(v, bool) for v in match.except_)
    return False


def _keys(flt: qm.Filter, depth: int = 0) -> Iterator[tuple[Any, str | None]]:
    """Every condition of a filter with the payload key it names (None for ids), nested filters
    included: a nested condition's own key first, then its inner keys (relative, as written)."""
    if depth > MAX_FILTER_DEPTH:
        raise InvalidInput(f"filter nested deeper than {MAX_FILTER_DEPTH}", field="filter")
    conds = [*_conditions(flt.must), *_conditions(flt.should), *_conditions(flt.must_not)]
    if flt.min_should is not None:
        conds += flt.min_should.conditions
    for cond in conds:
        if isinstance(cond, qm.Filter):
            yield from _keys(cond, depth + 1)
        elif isinstance(cond, qm.FieldCondition):
            yield cond, cond.key
        elif isinstance(cond, qm.IsEmptyCondition):
            yield cond, cond.is_empty.key
        elif isinstance(cond, qm.IsNullCondition):
            yield cond, cond.is_null.key
        elif isinstance(cond, qm.NestedCondition):
            yield cond, cond.nested.key
            yield from _keys(cond.nested.filter, depth + 1)
        else:
            yield cond, None


def _check(flt: qm.Filter) -> None:
    """Reject reserved keys wherever a filter names a payload key (a nested filter's keys are relative)."""
    for cond, key in _keys(flt):
        if isinstance(cond, qm.FieldCondition) and _has_bool(cond.match):
            raise InvalidInput(
                f"filter on {key!r} matches a boolean: not supported (store flags as integers or keywords)",
                field="filter",
            )
        if key is not None and is_reserved(key):
            raise InvalidInput(f"filter may not name reserved key {key!r}", field="filter")


def payload_keys(flt: qm.Filter | None) -> set[str]:
    """The payload keys a parsed filter names, a nested filter's inner keys as written (relative), so a
    nested condition counts as unindexed unless those very names are indexed."""
    return set() if flt is None else {key for _, key in _keys(flt) if key is not None}


def parse_filter(flt: qm.Filter | Mapping[str, Any] | None) -> qm.Filter | None:
    """A caller's filter in Qdrant's JSON filter model, validated; 400 (field `filter`) when malformed."""
    if flt is None:
        return None
    if isinstance(flt, Mapping):
        try:
            flt = qm.Filter.model_validate(dict(flt))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "top level"
            raise InvalidInput(f"malformed filter at {where}: {first['msg']}", field="filter") from None
    if not isinstance(flt, qm.Filter):
        raise InvalidInput("filter must be an object", field="filter")
    _check(flt)
    return flt


def tenant_filter(tenant: str, flt: qm.Filter | None = None, ids: Sequence[str] | None = None) -> qm.Filter:
    """The caller's filter ANDed with the tenant (and point ids): what every read and delete runs with."""
    must: list[Any] = [qm.FieldCondition(key=TENANT_KEY, match=qm.MatchValue(value=tenant))]
    if ids is not None:
        must.append(qm.HasIdCondition(has_id=list(ids)))
    if flt is not None:
        must.append(flt)
    return qm.Filter(must=must)
