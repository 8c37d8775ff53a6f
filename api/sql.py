"""Read-only SQL on the ClickHouse data, for analysts while the stack runs.

In the embedded profile the API process owns the chDB directory, so nobody
else can open it while the stack runs; ``POST /api/v1/sql`` (and
``agentwatch sql``, which calls it) runs an analyst's query there instead.

Three guards, because ClickHouse's ``readonly`` alone is not enough in chDB:

1. The query runs on its own client whose session is read-only:
   ``max_result_rows``, ``result_overflow_mode``, ``max_execution_time`` and
   last ``readonly=1`` are set on it once, so ClickHouse refuses every write,
   DDL, ``SYSTEM`` statement, any ``SETTINGS`` that would lift a limit, and
   table functions that reach outside (``file()``, ``url()``, ``s3()``…).
   (With an ``http(s)://`` DSN clickhouse-connect sends them with every query.)
   They are not passed per call: clickhouse-connect's chdb backend applies
   per-call settings of a write with ``SET`` and restores them afterwards, and
   after a refused write that restore fails, leaving a shared client stuck in
   read-only mode with the analyst's limits.
2. What ``readonly=1`` lets through in chDB (ClickHouse as a library, where
   client features run inside the engine) is refused here before it runs:
   ``INTO OUTFILE`` (writes a file on the API's machine), the ``file()``
   function (reads any file the API can), ``KILL`` (could stop the loader's
   inserts) and more than one statement.
3. Only statements that start with a read keyword (:data:`READ_STATEMENTS`)
   are sent at all, so the error says what is allowed.

>>> check_read_only("  -- top agents\\n SELECT 1;  ")
'-- top agents\\n SELECT 1'
>>> try:
...     check_read_only("DROP TABLE agentwatch.metrics")
... except SqlRefused as refused:
...     print(refused.status, refused.message)
403 only read queries may run here (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS); this one is DROP
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from itertools import pairwise
from typing import Literal

import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from pydantic import BaseModel, Field

from agentwatch.settings import Settings
from sinks.clickhouse import connect

#: Statements an analyst may run (by their first keyword).
READ_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
#: Result formats, and their media types.
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
}
SqlFormat = Literal["json", "csv", "tsv"]

# ClickHouse error codes that mean "this query", not "ClickHouse is down".
_READONLY, _TIMEOUT_EXCEEDED, _TOO_MANY_ROWS = 164, 159, 396

# Tokens as ClickHouse's lexer sees them, as far as these checks need: comments and quoted
# text are skipped, so `SELECT 'a;b'` is one statement and `INTO/**/OUTFILE` is caught.
# Where this lexer and ClickHouse's could differ (nested comments, heredocs), this one sees
# more words and semicolons than ClickHouse does, so it refuses more, never less.
_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<quoted>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`(?:[^`\\]|\\.|``)*`)
    | (?P<word>[A-Za-z_][A-Za-z_0-9]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


class SqlRequest(BaseModel):
    """The body of ``POST /api/v1/sql``."""

    query: str = Field(
        min_length=1,
        max_length=100_000,
        description="One read-only statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS); "
        "no FORMAT clause: choose the format below.",
        examples=["SELECT agent_id, count() FROM agentwatch.anomalies GROUP BY agent_id"],
    )
    format: SqlFormat = Field(
        "json", description="json (columns, types, rows), csv or tsv (with a header row)."
    )


class SqlColumn(BaseModel):
    """A result column: its name and ClickHouse type."""

    name: str
    type: str


class SqlAnswer(BaseModel):
    """The answer to ``POST /api/v1/sql`` in format json."""

    columns: list[SqlColumn]
    rows: list[list]
    row_count: int
    elapsed_s: float


class SqlRefused(Exception):
    """The query may not run, or ClickHouse refused it; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SqlResult:
    """What a query returned."""

    columns: list[str]
    types: list[str]
    rows: Sequence[Sequence[object]]
    elapsed_s: float


def read_only_settings(settings: Settings) -> dict[str, str]:
    """ClickHouse settings of the read-only session, in the order they must be set.

    ``readonly`` comes last: after it, no setting can change.

    >>> read_only_settings(Settings())  # doctest: +NORMALIZE_WHITESPACE
    {'max_result_rows': '10000', 'result_overflow_mode': 'throw',
     'max_execution_time': '10', 'readonly': '1'}
    """
    return {
        "max_result_rows": str(settings.api_sql_max_result_rows),
        "result_overflow_mode": "throw",
        "max_execution_time": f"{settings.api_sql_max_execution_time_s:g}",
        "readonly": "1",
    }


def open_read_only_client(settings: Settings) -> Client:
    """A client of its own on ``settings.clickhouse_dsn`` whose session can only read.

    Its default database is ``settings.clickhouse_database`` when that exists,
    so ``SELECT … FROM metrics`` works as well as ``agentwatch.metrics``.
    """
    client = connect(settings)
    try:
        database = settings.clickhouse_database
        exists = client.command(
            "SELECT count() FROM system.databases WHERE name = {database:String}",
            parameters={"database": database},
        )
        if exists:
            client.database = database
        for name, value in read_only_settings(settings).items():
            client.set_client_setting(name, value)
    except Exception:
        client.close()
        raise
    return client


def check_read_only(query: str) -> str:
    """The query to run (trailing semicolons and comments cut off), if it may run.

    Raises :class:`SqlRefused`: 403 for anything but one read statement, 400
    for an empty query or a ``FORMAT`` clause (the request's format replaces it).
    """
    tokens = [m for m in _TOKEN.finditer(query) if m.lastgroup not in ("space", "comment")]
    while tokens and tokens[-1].group() == ";":
        tokens.pop()
    if not tokens:
        raise SqlRefused(400, "the query is empty")
    texts = [token.group() for token in tokens]
    if ";" in texts:
        raise SqlRefused(403, "one statement at a time: the query holds more than one")
    keyword = next((text for text in texts if text != "("), "(").upper()
    if keyword not in READ_STATEMENTS:
        allowed = ", ".join(name for name in READ_STATEMENTS if name != "DESC")
        raise SqlRefused(403, f"only read queries may run here ({allowed}); this one is {keyword}")
    words = [token.group().upper() for token in tokens if token.lastgroup == "word"]
    if any(pair == ("INTO", "OUTFILE") for pair in pairwise(words)):
        raise SqlRefused(
            403, "INTO OUTFILE would write a file on the server; ask for format csv or tsv instead"
        )
    called = {word.lower() for word, after in pairwise(texts) if after == "("}
    if "file" in called:
        raise SqlRefused(403, "file() reads files on the server's disk; it is not allowed here")
    if len(words) >= 2 and words[-2] == "FORMAT" and texts[-1].upper() == words[-1]:
        raise SqlRefused(
            400,
            f"leave out FORMAT {texts[-1]}: choose json, csv or tsv with the request's format "
            "(agentwatch sql --format)",
        )
    return query[: tokens[-1].end()].strip()


def run_read_query(client: Client, query: str) -> SqlResult:
    """Run a checked query on a read-only client; :class:`SqlRefused` (4xx) when ClickHouse says no.

    Errors that are not about the query (ClickHouse unreachable) propagate.
    """
    started = time.perf_counter()
    try:
        result = client.query(query)
    except DatabaseError as exc:
        raise _refusal(exc) from None
    columns = list(result.column_names)
    return SqlResult(
        columns=columns,
        types=[t.name for t in result.column_types] if result.column_types else [""] * len(columns),
        rows=result.result_rows,
        elapsed_s=round(time.perf_counter() - started, 4),
    )


def _refusal(exc: DatabaseError) -> SqlRefused | DatabaseError:
    """A readable 4xx for ClickHouse's answer to a bad query."""
    code = getattr(exc, "code", None)
    message = " ".join(str(exc).split())
    message = re.sub(r"\s*\(version [\d.]+\)\.?", "", message)[:500]
    if code == _READONLY:
        return SqlRefused(403, f"read-only: ClickHouse refused the query: {message}")
    if code == _TOO_MANY_ROWS:
        return SqlRefused(
            400,
            "the result has more rows than allowed (AGENTWATCH_API_SQL_MAX_RESULT_ROWS); "
            f"add a LIMIT or aggregate: {message}",
        )
    if code == _TIMEOUT_EXCEEDED:
        return SqlRefused(
            400,
            "the query ran longer than allowed (AGENTWATCH_API_SQL_MAX_EXECUTION_TIME_S); "
            f"narrow it down: {message}",
        )
    if code is not None:
        return SqlRefused(400, f"ClickHouse refused the query: {message}")
    return exc


def render(result: SqlResult, fmt: SqlFormat) -> bytes:
    """The result as the body of an answer in ``fmt`` (see :data:`MEDIA_TYPES`).

    >>> result = SqlResult(["agent_id", "n"], ["String", "UInt64"], [("a1", 3)], 0.001)
    >>> render(result, "csv").decode()
    'agent_id,n\\r\\na1,3\\r\\n'
    >>> orjson.loads(render(result, "json"))["rows"]
    [['a1', 3]]
    """
    if fmt == "json":
        columns = zip(result.columns, result.types, strict=True)
        answer = {
            "columns": [{"name": name, "type": type_name} for name, type_name in columns],
            "rows": result.rows,
            "row_count": len(result.rows),
            "elapsed_s": result.elapsed_s,
        }
        return orjson.dumps(
            answer,
            default=_json_default,
            option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS,
        )
    out = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(result.columns)
        writer.writerows([cell_text(value) for value in row] for row in result.rows)
    else:
        out.write("\t".join(result.columns) + "\n")
        for row in result.rows:
            out.write("\t".join(_tsv_escape(cell_text(value, null="\\N")) for value in row) + "\n")
    return out.getvalue().encode()


def cell_text(value: object, null: str = "") -> str:
    """One value as text: ISO-8601 times, JSON for nested values, lower-case booleans.

    >>> cell_text(datetime(2026, 1, 1, 12, 0)), cell_text({"cpu": 1.5}), cell_text(True)
    ('2026-01-01T12:00:00Z', '{"cpu":1.5}', 'true')
    """
    if value is None:
        return null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        text = value.isoformat()
        return text + "Z" if value.tzinfo is None else text.replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict | list | tuple):
        return orjson.dumps(
            value, default=_json_default, option=orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS
        ).decode()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _tsv_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)  # Decimal, IP addresses, …
