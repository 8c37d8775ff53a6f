"""Check a dashboard's JSON against Grafana's dashboard schema as the foundation SDK carries it.

The SDK has no validator, but its models *are* the schema: they are generated from
Grafana's dashboard kind (and each panel plugin's options and field config) for the Grafana
version the package is pinned to, with a typed attribute per property. So a dashboard is
checked in two steps:

1. **Nothing unknown.** ``Dashboard.from_json`` decodes the JSON into the models (panel
   options and field config into the panel plugin's own models, queries into the data
   source's); encoding them again must give back every key and value of the input. A key
   the schema does not have, or one in the wrong place, is dropped by the decoder and
   shows up as a difference.
2. **Every value of its type.** The decoded tree is walked against the models' type hints:
   strings, numbers, booleans, lists, maps, enums (their allowed values), unions, nested
   models, and a required property (not ``Optional``) must be present. A query must decode
   into a known data source's model (:class:`~infra.grafana.query.ClickHouseQuery` here),
   not the SDK's catch-all for data sources it does not know.

What it does not check: rules the schema states only in prose (a uid of 8–40 characters,
panels not overlapping on the grid), and anything Grafana's own frontend migrations would
change (the SDK's ``schemaVersion`` is current, so none should).
"""

from __future__ import annotations

import enum
import json
import types
import typing
from functools import cache

from grafana_foundation_sdk.cog import plugins as cogplugins
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from infra.grafana import query as clickhouse_query

_MODELS = "grafana_foundation_sdk.models."


@cache
def _registered() -> None:
    cogplugins.register_default_plugins()
    clickhouse_query.register()


@cache
def _hints(cls: type) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _is_model(value: object) -> bool:
    return type(value).__module__.startswith(_MODELS) and hasattr(value, "to_json")


def _matches(value: object, hint: typing.Any, path: str, problems: list[str]) -> bool:
    """Whether ``value`` is of type ``hint``; the problems inside a matching model are
    appended to ``problems``."""
    origin = typing.get_origin(hint)
    if hint is typing.Any or hint is object:
        if _is_model(value):
            _check_model(value, path, problems)
        return True
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(hint)
        for arm in arms:
            inner: list[str] = []
            if _matches(value, arm, path, inner):
                problems += inner
                return True
        return False
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(
            _matches(v, item, f"{path}[{n}]", problems) for n, v in enumerate(value)
        )
    if origin is dict:
        _, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _matches(v, item, f"{path}.{k}", problems) for k, v in value.items()
        )
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value in {member.value for member in hint}
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is cogvariants.Dataquery:
        if isinstance(value, cogruntime.UnknownDataquery):
            problems.append(f"{path}: a query of a data source the schema does not know")
        return isinstance(value, cogvariants.Dataquery)
    if isinstance(hint, type):
        if not isinstance(value, hint):
            return False
        if _is_model(value):
            _check_model(value, path, problems)
        return True
    return True  # a construct the generated models do not use


def _check_model(model: object, path: str, problems: list[str]) -> None:
    for name, hint in _hints(type(model)).items():
        value = getattr(model, name, None)
        if not _matches(value, hint, f"{path}.{name}", problems):
            problems.append(f"{path}.{name}: {value!r} is not {_describe(hint)}")


def _describe(hint: typing.Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return "absent"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _lost(original: object, encoded: object, path: str, problems: list[str]) -> None:
    """What of ``original`` the round trip through the models did not keep."""
    if isinstance(original, dict) and isinstance(encoded, dict):
        for key, value in original.items():
            if key not in encoded:
                problems.append(f"{path}.{key}: not a property the schema has here")
            else:
                _lost(value, encoded[key], f"{path}.{key}", problems)
    elif isinstance(original, list) and isinstance(encoded, list):
        if len(original) != len(encoded):
            problems.append(f"{path}: {len(original)} items read back as {len(encoded)}")
        for n, (a, b) in enumerate(zip(original, encoded, strict=False)):
            _lost(a, b, f"{path}[{n}]", problems)
    elif original != encoded:
        problems.append(f"{path}: {original!r} read back as {encoded!r}")


def problems(dashboard: dict) -> list[str]:
    """Every way ``dashboard`` (a dashboard's JSON model, parsed) departs from the schema;
    empty when it conforms.

    >>> problems({"title": "t", "schemaVersion": 41, "panels": []})
    []
    >>> problems({"title": "t", "schemaVersion": "41", "colour": "red"})
    ['$.colour: not a property the schema has here', "$.schema_version: '41' is not int"]
    """
    _registered()
    try:
        model = Dashboard.from_json(dashboard)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        return [f"$: the SDK cannot read it: {error!r}"]
    found: list[str] = []
    encoded = json.loads(json.dumps(model, cls=JSONEncoder))
    _lost(dashboard, encoded, "$", found)
    _check_model(model, "$", found)
    return found
