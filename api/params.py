"""Query and path parameters the API's routes share: instants, agent ids, time ranges,
filters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import UnionType
from typing import Annotated, Union, get_args, get_origin

from fastapi import Depends, Path, Query, Request
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from api.errors import unprocessable
from api.responses import AlertStateName, ThreatCategory, ThreatSeverity
from schemas.models import TIMESTAMP_RANGE


def parse_instant(value: object) -> object:
    """A query parameter in ISO-8601 with a zone, or epoch seconds, as an aware datetime.

    >>> parse_instant("1764072000")
    datetime.datetime(2025, 11, 25, 12, 0, tzinfo=datetime.timezone.utc)
    >>> parse_instant("2025-11-25T13:00:00+01:00").isoformat()
    '2025-11-25T13:00:00+01:00'
    >>> try:
    ...     parse_instant("2025-11-25T12:00:00")
    ... except ValueError as exc:
    ...     print(exc)
    '2025-11-25T12:00:00' has no time zone; add Z or an offset such as +00:00
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        low, high = TIMESTAMP_RANGE
        if not low <= seconds <= high:
            raise PydanticCustomError(
                "instant_out_of_range",
                "{input} epoch seconds is outside the years 2000-2100",
                {"input": text},
            )
        return datetime.fromtimestamp(seconds, UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise PydanticCustomError(
            "instant_format",
            "'{input}' is neither ISO-8601 (2025-11-25T12:00:00Z) nor epoch seconds",
            {"input": text[:60]},
        ) from None
    if parsed.tzinfo is None:
        raise PydanticCustomError(
            "instant_no_zone",
            "'{input}' has no time zone; add Z or an offset such as +00:00",
            {"input": text[:60]},
        )
    return parsed


#: A point in time given as ISO-8601 with a zone, or epoch seconds.
Instant = Annotated[datetime, BeforeValidator(parse_instant)]

AgentId = Annotated[
    str,
    Path(min_length=1, max_length=128, description="The agent's id (1-128 characters)."),
]
RuleName = Annotated[
    str,
    Path(min_length=1, max_length=128, description="The rule's name (1-128 characters)."),
]


@dataclass(frozen=True)
class TimeRange:
    """The ``since``, ``until`` and ``limit`` of a per-agent history query."""

    since: datetime | None
    until: datetime | None
    limit: int


def time_range(
    since: Annotated[
        Instant | None,
        Query(
            description="Inclusive lower bound: ISO-8601 with a zone, or epoch seconds; "
            "not after `until` (422)."
        ),
    ] = None,
    until: Annotated[
        Instant | None,
        Query(
            description="Inclusive upper bound: ISO-8601 with a zone, or epoch seconds; "
            "not before `since` (422)."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Most items returned.")] = 100,
) -> TimeRange:
    """The query parameters of a history endpoint (a FastAPI dependency); 422 if since > until."""
    if since is not None and until is not None and since > until:
        raise unprocessable(
            f"{since.isoformat()} is after until={until.isoformat()}; swap them or leave one out",
            "query",
            "since",
        )
    return TimeRange(since, until, limit)


TimeRangeDep = Annotated[TimeRange, Depends(time_range)]


def _upper(value: object) -> object:
    """Severities and categories are upper case; accept them in any case."""
    return value.upper() if isinstance(value, str) else value


SeverityFilter = Annotated[
    list[Annotated[ThreatSeverity, BeforeValidator(_upper)]] | None,
    Query(description="Keep only these severities (repeat the parameter for several)."),
]
CategoryFilter = Annotated[
    list[Annotated[ThreatCategory, BeforeValidator(_upper)]] | None,
    Query(description="Keep only these categories (repeat the parameter for several)."),
]


def _lower(value: object) -> object:
    """Alert states are lower case; accept them in any case."""
    return value.lower() if isinstance(value, str) else value


StateFilter = Annotated[
    list[Annotated[AlertStateName, BeforeValidator(_lower)]] | None,
    Query(description="Keep only alerts now in these states (repeat for several)."),
]
Limit = Annotated[int, Query(ge=1, le=10_000, description="Most items returned.")]
TenantFilter = Annotated[str | None, Query(min_length=1, max_length=128)]


def one_value_each(request: Request) -> None:
    """Refuse (422) a query parameter the route takes once but the request repeats:
    ``?tenant=t1&tenant=t2`` would otherwise mean ``t2`` (the last wins, silently), and a
    proxy or log that reads the first would disagree with what the API did. Parameters
    that take several values (``?agent_ids=a&agent_ids=b``) may repeat.

    An app-wide dependency (:func:`api.app.create_app`): it reads the route's declared
    query parameters, its dependencies' included.
    """
    query = request.query_params
    if len(query) == len(query.multi_items()):  # (nothing repeated: the usual case)
        return
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    single = _single_valued(dependant)
    for name in dict.fromkeys(name for name, _ in query.multi_items()):
        count = len(query.getlist(name))
        if count > 1 and name in single:
            raise unprocessable(f"{name} is given {count} times; it takes one value",
                                "query", name)  # fmt: skip


def _single_valued(dependant: object) -> frozenset[str]:
    """The query parameters a route (with its dependencies) takes one value of."""
    names, stack, seen = set(), [dependant], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for field in current.query_params:
            if not _takes_many(field.field_info.annotation):
                names.add(field.alias)
        stack.extend(current.dependencies)
    return frozenset(names)


def _takes_many(annotation: object) -> bool:
    """Whether a parameter's type is a list, set or tuple (in an Optional or Annotated).

    >>> _takes_many(list[str] | None), _takes_many(Annotated[set[int], "x"]), _takes_many(str)
    (True, True, False)
    """
    origin = get_origin(annotation)
    if origin is Annotated:
        return _takes_many(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return any(_takes_many(arg) for arg in get_args(annotation))
    return origin in (list, set, frozenset, tuple, Sequence) or annotation in (list, set, tuple)
