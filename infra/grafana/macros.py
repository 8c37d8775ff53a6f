"""What Grafana and the ClickHouse plugin do to a panel's SQL before ClickHouse sees it, done
here so the tests can run every panel's SQL (tests/test_grafana_dashboards.py).

Three passes, in the order Grafana and the plugin apply them:

1. ``$__conditionalAll(condition, $variable)`` (the plugin's front end): the condition
   when the variable has a selection, ``1=1`` when it is "All".
2. Dashboard variables (Grafana's template service): ``$name``, ``${name}``,
   ``${name:singlequote}`` and ``${name:sqlstring}`` (``'a','b'``, quotes escaped),
   ``${name:csv}``. A multi-value variable written bare is refused here: write a format.
3. The plugin's SQL macros (its back end; the semantics are the plugin's ``pkg/macros``,
   times in UTC seconds or milliseconds):

   ===============================  ===========================================================
   ``$__timeFilter(c)``             ``c >= toDateTime(FROM) AND c <= toDateTime(TO)``
   ``$__timeFilter_ms(c)``          ``c >= fromUnixTimestamp64Milli(FROM_MS) AND c <= …``
   ``$__dateFilter(c)``             ``c >= toDate('YYYY-MM-DD') AND c <= toDate('YYYY-MM-DD')``
   ``$__fromTime``, ``$__toTime``   ``toDateTime(FROM)``, ``toDateTime(TO)``
   ``$__fromTime_ms``, ``_ms``      ``fromUnixTimestamp64Milli(FROM_MS)``, likewise TO
   ``$__timeInterval(c)``           ``toStartOfInterval(toDateTime(c), INTERVAL S second)``
   ``$__timeInterval_ms(c)``        ``toStartOfInterval(toDateTime64(c, 3), INTERVAL MS …)``
   ``$__interval_s``                ``S``: the panel's interval in whole seconds, at least 1
   ===============================  ===========================================================

Limits (docs/grafana.md): the interval is the range divided by the panel's data points,
not rounded to Grafana's "nice" steps; ``$__dateTimeFilter``/``$__dt``, ``$__timezone``,
ad hoc filters and Grafana's own globals (``$__from``, ``$__interval``…) are not expanded:
a query that uses one fails here (:class:`MacroError`) instead of running half-expanded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

#: The value Grafana gives a variable whose "All" is selected.
ALL = "$__all"


class MacroError(ValueError):
    """A query uses a macro or variable this expander does not know, or uses one wrongly."""


@dataclass(frozen=True)
class Variable:
    """A dashboard variable's current selection: one value, several, or "All" (then
    ``values`` are every option, as Grafana substitutes them)."""

    values: tuple[str, ...]
    all: bool = False
    multi: bool = False


@dataclass(frozen=True)
class Context:
    """What a panel's query is run with: the time range, the interval and the variables."""

    start: datetime
    end: datetime
    interval_s: float = 60.0
    variables: dict[str, Variable] = field(default_factory=dict)

    @classmethod
    def for_panel(
        cls,
        start: datetime,
        end: datetime,
        variables: dict[str, Variable] | None = None,
        max_data_points: int = 1000,
    ) -> Context:
        """The context Grafana gives a panel ``max_data_points`` wide (interval = range /
        points, at least a second).

        >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
        >>> Context.for_panel(t0, t0.replace(hour=8), max_data_points=480).interval_s
        60.0
        """
        span = (end - start).total_seconds()
        return cls(start, end, max(1.0, span / max_data_points), variables or {})


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_FORMATS: dict[str, Callable[[Sequence[str]], str]] = {
    "singlequote": lambda values: ",".join(_quote(v) for v in values),
    "sqlstring": lambda values: ",".join(_quote(v) for v in values),
    "csv": ",".join,
    "raw": ",".join,
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)|\[\[(\w+)\]\]")


def _arguments(sql: str, open_at: int) -> tuple[list[str], int]:
    """The comma-separated arguments of the call whose ``(`` is at ``open_at`` (commas
    inside nested parentheses or quotes belong to the argument), and the index after ``)``."""
    depth, quote, args, current = 0, "", [], []
    for index in range(open_at, len(sql)):
        char = sql[index]
        if quote:
            current.append(char)
            if char == quote and sql[index - 1] != "\\":
                quote = ""
            continue
        if char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
            if depth == 1:
                continue
        elif char == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(current).strip())
                return args, index + 1
        elif char == "," and depth == 1:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    raise MacroError(f"unclosed parenthesis after {sql[max(0, open_at - 20) : open_at]!r}")


def conditional_all(sql: str, variables: dict[str, Variable]) -> str:
    """Pass 1: ``$__conditionalAll(condition, $variable)``.

    >>> tenant = {"tenant": Variable(("t1",))}
    >>> conditional_all("WHERE $__conditionalAll(tenant_id IN ($tenant), $tenant)", tenant)
    'WHERE tenant_id IN ($tenant)'
    >>> every = {"tenant": Variable(("t1", "t2"), all=True, multi=True)}
    >>> conditional_all("WHERE $__conditionalAll(tenant_id IN ($tenant), $tenant)", every)
    'WHERE 1=1'
    """
    name = "$__conditionalAll"
    while (at := sql.find(name)) >= 0:
        args, end = _arguments(sql, at + len(name))
        if len(args) != 2 or not args[1].startswith("$"):
            raise MacroError(f"{name} takes (condition, $variable), got {args}")
        variable = _lookup(variables, args[1].strip("${}").split(":")[0])
        sql = sql[:at] + ("1=1" if variable.all else args[0]) + sql[end:]
    return sql


def _lookup(variables: dict[str, Variable], name: str) -> Variable:
    if name not in variables:
        raise MacroError(f"variable ${name} has no value: give it one in the context")
    return variables[name]


def substitute(sql: str, variables: dict[str, Variable]) -> str:
    """Pass 2: dashboard variables, as Grafana's template service formats them.

    >>> substitute("agent_id = '${agent}'", {"agent": Variable(("a-1",))})
    "agent_id = 'a-1'"
    >>> substitute("tenant_id IN (${tenant:singlequote})",
    ...            {"tenant": Variable(("t1", "o'k"), multi=True)})
    "tenant_id IN ('t1','o\\\\'k')"
    """

    def one(match: re.Match) -> str:
        name = match.group(1) or match.group(3) or match.group(4)
        variable = _lookup(variables, name)
        fmt = match.group(2)
        if fmt is None:
            if variable.multi:
                raise MacroError(f"${name} is multi-value: write ${{{name}:singlequote}}")
            return variable.values[0]
        if fmt not in _FORMATS:
            raise MacroError(f"format {fmt!r} of ${name} is not supported here")
        return _FORMATS[fmt](variable.values)

    return _VARIABLE.sub(one, sql)


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _date(moment: datetime) -> str:
    return f"toDate('{moment.astimezone(UTC):%Y-%m-%d}')"


def _between(column: str, low: str, high: str) -> str:
    return f"{column} >= {low} AND {column} <= {high}"


def _one_column(name: str, args: list[str]) -> str:
    if len(args) != 1 or not args[0]:
        raise MacroError(f"$__{name} takes one column, got {args}")
    return args[0]


def _macros(context: Context) -> dict[str, Callable[[list[str]], str] | str]:
    start, end = context.start, context.end
    seconds = max(int(context.interval_s), 1)
    millis = max(int(context.interval_s * 1000), 1)
    dt_from, dt_to = f"toDateTime({_seconds(start)})", f"toDateTime({_seconds(end)})"
    ms_from = f"fromUnixTimestamp64Milli({_millis(start)})"
    ms_to = f"fromUnixTimestamp64Milli({_millis(end)})"
    return {
        "timeFilter": lambda a: _between(_one_column("timeFilter", a), dt_from, dt_to),
        "timeFilter_ms": lambda a: _between(_one_column("timeFilter_ms", a), ms_from, ms_to),
        "dateFilter": lambda a: _between(_one_column("dateFilter", a), _date(start), _date(end)),
        "timeInterval": lambda a: (
            f"toStartOfInterval(toDateTime({_one_column('timeInterval', a)}), "
            f"INTERVAL {seconds} second)"
        ),
        "timeInterval_ms": lambda a: (
            f"toStartOfInterval(toDateTime64({_one_column('timeInterval_ms', a)}, 3), "
            f"INTERVAL {millis} millisecond)"
        ),
        "fromTime": dt_from,
        "toTime": dt_to,
        "fromTime_ms": ms_from,
        "toTime_ms": ms_to,
        "interval_s": str(seconds),
    }


_MACRO = re.compile(r"\$__(\w+)")


def expand_macros(sql: str, context: Context) -> str:
    """Pass 3: the plugin's SQL macros.

    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> context = Context(t0, t0.replace(hour=1), interval_s=30)
    >>> expand_macros("WHERE $__timeFilter(timestamp)", context)
    'WHERE timestamp >= toDateTime(1767225600) AND timestamp <= toDateTime(1767229200)'
    >>> expand_macros("$__timeInterval(t) AS time, count() / $__interval_s", context)
    'toStartOfInterval(toDateTime(t), INTERVAL 30 second) AS time, count() / 30'
    """
    macros = _macros(context)
    out, position = [], 0
    while match := _MACRO.search(sql, position):
        name = match.group(1)
        if name not in macros:
            raise MacroError(f"macro $__{name} is not expanded here (docs/grafana.md)")
        out.append(sql[position : match.start()])
        macro = macros[name]
        if isinstance(macro, str):
            out.append(macro)
            position = match.end()
        else:
            if match.end() >= len(sql) or sql[match.end()] != "(":
                raise MacroError(f"macro $__{name} needs its arguments in parentheses")
            args, position = _arguments(sql, match.end())
            out.append(macro(args))
    out.append(sql[position:])
    return "".join(out)


def expand(sql: str, context: Context) -> str:
    """A panel's SQL as ClickHouse receives it: the three passes, in Grafana's order.

    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> context = Context(t0, t0.replace(hour=1), variables={
    ...     "tenant": Variable(("t1", "t2"), all=True, multi=True)})
    >>> expand("SELECT count() FROM metrics WHERE $__timeFilter(timestamp) "
    ...        "AND $__conditionalAll(tenant_id IN (${tenant:singlequote}), $tenant)", context)
    ... # doctest: +NORMALIZE_WHITESPACE
    'SELECT count() FROM metrics WHERE timestamp >= toDateTime(1767225600)
     AND timestamp <= toDateTime(1767229200) AND 1=1'
    """
    sql = conditional_all(sql, context.variables)
    sql = substitute(sql, context.variables)
    return expand_macros(sql, context)
