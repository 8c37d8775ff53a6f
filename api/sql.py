"""Read-only SQL on the ClickHouse data, for analysts while the stack runs.

In the embedded profile one process owns the chDB directory (the loader, which
serves it to the API: sinks/chdb_http.py; or the API itself when
``AGENTWATCH_EMBEDDED_LOADER_PROCESS=false``), so nobody else can open it while
the stack runs; ``POST /api/v1/sql`` (and ``agentwatch sql``, which calls it)
runs an analyst's query there instead.
The endpoint is off unless ``AGENTWATCH_API_SQL_ENABLED`` turns it on
(``agentwatch up`` does, for its loopback demo); once the API has
authentication it is for the analyst role only.

Guards, outermost first (docs/sql.md says why each one is there):

1. **The policy** (:mod:`api.sql_policy`): sqlglot parses the query with its
   ClickHouse dialect and allows one SELECT over the project's tables with
   allowlisted functions, or ``SHOW TABLES``/``DESCRIBE``. A parser, not a scan
   of words, so `` `file`(…) `` and ``file/**/(…)`` are the call they are.
2. **ClickHouse's own reading**: the engine formats the query as it parses it
   (``formatQuerySingleLine``: its own lexer, no comments, canonical quoting);
   the policy checks that text again, and that text is what runs (as
   ``SELECT * FROM (…)``: ClickHouse applies the result caps only to a query
   that reads FROM something). Whatever the two lexers might disagree on
   (comments, quotes, unicode), what runs is what was checked.
3. **The session's limits**: the query runs on a client of its own whose
   session has ClickHouse's limits on memory, threads, rows and bytes read,
   result size and time, and last ``readonly=1`` so none can be lifted. They are
   set on the client once, not per call: clickhouse-connect's chdb backend
   applies per-call settings of a write with ``SET`` and restores them
   afterwards, and after a refused write that restore fails, leaving a shared
   client stuck in read-only mode with the analyst's limits. (With an
   ``http(s)://`` DSN clickhouse-connect sends them with every query.)
4. **The process**: the engine also serves the loader, so at most
   ``AGENTWATCH_API_SQL_MAX_CONCURRENT_QUERIES`` queries run at once (more get
   429), each on one thread by default, and a request that has no answer
   ``AGENTWATCH_API_SQL_REQUEST_GRACE_S`` after the time limit gets 504. chDB
   releases the GIL while it works, so the loader and the health endpoint go on.

>>> read_only_settings(Settings())["readonly"], list(read_only_settings(Settings()))[-1]
('1', 'readonly')
"""

from __future__ import annotations

import csv
import io
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    DataError,
    NotSupportedError,
    ProgrammingError,
)
from pydantic import BaseModel, Field

from agentwatch.settings import Settings
from api.client_pool import ClientPool
from api.sql_policy import CheckedQuery, SqlRefused, check_query
from sinks.clickhouse import connect

__all__ = ["SqlRefused", "SqlSandbox", "open_read_only_client", "prepare", "run_read_query"]

#: Result formats, and their media types.
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
}
SqlFormat = Literal["json", "csv", "tsv"]

#: ClickHouse error codes that mean "this query hit a limit": the setting that says how much.
_LIMITS = {
    158: ("rows read", "AGENTWATCH_API_SQL_MAX_ROWS_TO_READ"),  # TOO_MANY_ROWS
    307: ("bytes read", "AGENTWATCH_API_SQL_MAX_BYTES_TO_READ"),  # TOO_MANY_BYTES
    241: ("memory", "AGENTWATCH_API_SQL_MAX_MEMORY_BYTES"),  # MEMORY_LIMIT_EXCEEDED
    159: ("time", "AGENTWATCH_API_SQL_MAX_EXECUTION_TIME_S"),  # TIMEOUT_EXCEEDED
    160: ("time", "AGENTWATCH_API_SQL_MAX_EXECUTION_TIME_S"),  # TOO_SLOW (estimated)
}
_READONLY, _TOO_MANY_ROWS_OR_BYTES = 164, 396


class SqlRequest(BaseModel):
    """The body of ``POST /api/v1/sql``."""

    query: str = Field(
        min_length=1,
        max_length=100_000,
        description="One SELECT (WITH, JOIN, subqueries, UNION allowed) on the project's tables, "
        "SHOW TABLES, or DESCRIBE <table>; no FORMAT clause: choose the format below.",
        examples=["SELECT agent_id, count() FROM anomalies FINAL GROUP BY agent_id"],
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
    {'max_memory_usage': '1073741824', 'max_threads': '1', 'max_rows_to_read': '100000000',
     'max_bytes_to_read': '10737418240', 'read_overflow_mode': 'throw',
     'max_result_rows': '10000', 'max_result_bytes': '33554432',
     'result_overflow_mode': 'throw', 'max_execution_time': '10',
     'timeout_overflow_mode': 'throw', 'allow_introspection_functions': '0', 'readonly': '1'}
    """
    return {
        "max_memory_usage": str(settings.api_sql_max_memory_bytes),
        "max_threads": str(settings.api_sql_max_threads),
        "max_rows_to_read": str(settings.api_sql_max_rows_to_read),
        "max_bytes_to_read": str(settings.api_sql_max_bytes_to_read),
        "read_overflow_mode": "throw",
        "max_result_rows": str(settings.api_sql_max_result_rows),
        "max_result_bytes": str(settings.api_sql_max_result_bytes),
        "result_overflow_mode": "throw",
        "max_execution_time": f"{settings.api_sql_max_execution_time_s:g}",
        "timeout_overflow_mode": "throw",
        "allow_introspection_functions": "0",
        "readonly": "1",
    }


def open_read_only_client(settings: Settings) -> Client:
    """A client of its own on ``settings.clickhouse_dsn`` whose session can only read.

    Its default database is ``settings.clickhouse_database`` (so ``SELECT … FROM
    metrics`` works as well as ``agentwatch.metrics``, and an unqualified name can
    only mean a table of the project); :class:`SqlRefused` (503) when it does not exist.
    """
    client = connect(settings)
    try:
        database = settings.clickhouse_database
        exists = client.command(
            "SELECT count() FROM system.databases WHERE name = {database:String}",
            parameters={"database": database},
        )
        if not exists:
            raise SqlRefused(
                503,
                f"there is no database {database} at {settings.clickhouse_dsn} yet: the API "
                "creates it when it starts (agentwatch up)",
            )
        client.database = database
        for name, value in read_only_settings(settings).items():
            client.set_client_setting(name, value)
    except Exception:
        client.close()
        raise
    return client


def prepare(client: Client, text: str, database: str) -> CheckedQuery:
    """The SQL to run for ``text``: checked as written, then as ClickHouse itself reads it.

    Raises :class:`SqlRefused` when either reading is refused; what runs is
    ClickHouse's canonical text of the query, the one the second check saw, as a
    subquery (so that the result caps hold for a query without FROM too).
    """
    as_written = check_query(text, database)
    if as_written.kind != "select":
        return as_written  # a statement written by the policy, not the caller's text
    try:
        canonical = client.query(
            "SELECT formatQuerySingleLine({query:String})", parameters={"query": as_written.sql}
        ).result_rows[0][0]
    except DatabaseError as exc:
        raise SqlRefused(400, f"ClickHouse cannot parse the query: {_one_line(exc)}") from None
    try:
        as_read = check_query(canonical, database)
    except SqlRefused as refused:
        raise SqlRefused(
            refused.status,
            f"{refused.message} (as ClickHouse reads the query: {canonical[:300]})",
        ) from None
    if as_read.kind != "select":
        raise SqlRefused(403, f"ClickHouse reads the query as something else: {canonical[:300]}")
    # ClickHouse applies max_result_rows/_bytes only to a query that reads FROM something:
    # `SELECT range(100000000)` or `SELECT arrayJoin(range(1e9))` would pass both caps and be
    # turned into Python objects here. As a subquery, every query reads FROM something.
    return CheckedQuery("select", f"SELECT * FROM ({as_read.sql})")


def run_read_query(client: Client, query: str) -> SqlResult:
    """Run a checked query on a read-only client; :class:`SqlRefused` (4xx) when ClickHouse says no.

    Errors that are not about the query (ClickHouse unreachable) propagate.
    """
    started = time.perf_counter()
    try:
        result = client.query(query)
    except (NotSupportedError, DataError, ProgrammingError) as exc:  # e.g. AggregateFunction
        raise SqlRefused(
            400,
            f"the result cannot be sent: {_one_line(exc)} (finish -State columns with -Merge, "
            "or cast the column to String)",
        ) from None
    except DatabaseError as exc:
        raise _refusal(exc) from None
    columns = list(result.column_names)
    return SqlResult(
        columns=columns,
        types=[t.name for t in result.column_types] if result.column_types else [""] * len(columns),
        rows=result.result_rows,
        elapsed_s=round(time.perf_counter() - started, 4),
    )


class SqlSandbox:
    """Where analysts' queries run: the policy, read-only sessions, a few at a time.

    :meth:`run` checks and runs one query on a read-only client of its own
    (opened on first use, reused after) in a worker thread; at most
    ``api_sql_max_concurrent_queries`` run at once (a query beyond is refused
    with 429 at once, it does not queue), and a caller waits at most the time
    limit plus ``api_sql_request_grace_s`` (then 504; the query keeps its slot
    until ClickHouse stops it, so stuck queries cannot pile up).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.deadline_s = settings.api_sql_max_execution_time_s + settings.api_sql_request_grace_s
        self._clients = ClientPool(open_client=lambda: open_read_only_client(settings))
        self._slots = threading.BoundedSemaphore(settings.api_sql_max_concurrent_queries)
        self._workers = ThreadPoolExecutor(
            settings.api_sql_max_concurrent_queries, thread_name_prefix="sql"
        )

    def run(self, text: str) -> SqlResult:
        """Check and run ``text``; :class:`SqlRefused` (4xx, 429, 504) if it may not or did not."""
        if not self._slots.acquire(blocking=False):
            limit = self.settings.api_sql_max_concurrent_queries
            raise SqlRefused(
                429,
                f"{limit} SQL quer{'y is' if limit == 1 else 'ies are'} running already, the most "
                "at once (AGENTWATCH_API_SQL_MAX_CONCURRENT_QUERIES); try again when "
                f"{'it finishes' if limit == 1 else 'one finishes'}",
            )
        try:
            future = self._workers.submit(self._check_and_run, text)
        except RuntimeError:  # shut down
            self._slots.release()
            raise SqlRefused(503, "the API is stopping; try again when it is back") from None
        future.add_done_callback(lambda _done: self._slots.release())
        try:
            return future.result(timeout=self.deadline_s)
        except FutureTimeout:
            raise SqlRefused(
                504,
                f"no answer within {self.deadline_s:g} s (AGENTWATCH_API_SQL_MAX_EXECUTION_TIME_S "
                "+ _REQUEST_GRACE_S); ClickHouse stops the query at its time limit, and it "
                "holds its slot until then",
            ) from None

    def _check_and_run(self, text: str) -> SqlResult:
        with self._clients.client() as client:
            checked = prepare(client, text, self.settings.clickhouse_database)
            return run_read_query(client, checked.sql)

    def close(self) -> None:
        """Wait for running queries (ClickHouse's time limit ends them), close the clients."""
        self._workers.shutdown(wait=True, cancel_futures=True)
        self._clients.close()


def _refusal(exc: DatabaseError) -> SqlRefused | DatabaseError:
    """A readable 4xx for ClickHouse's answer to a bad query."""
    code = getattr(exc, "code", None)
    message = _one_line(exc)
    if code == _READONLY:
        return SqlRefused(403, f"read-only: ClickHouse refused the query: {message}")
    if code == _TOO_MANY_ROWS_OR_BYTES:
        return SqlRefused(
            400,
            "the result is larger than allowed (AGENTWATCH_API_SQL_MAX_RESULT_ROWS, "
            f"_MAX_RESULT_BYTES); add a LIMIT or aggregate: {message}",
        )
    if code in _LIMITS:
        what, setting = _LIMITS[code]
        return SqlRefused(
            400,
            f"the query needs more {what} than allowed ({setting}); narrow it down "
            f"(a WHERE on the sort key, a shorter time range, FINAL only where needed): {message}",
        )
    if code is not None:
        return SqlRefused(400, f"ClickHouse refused the query: {message}")
    return exc


def _one_line(exc: Exception) -> str:
    message = " ".join(str(exc).split())
    return re.sub(r"\s*\(version [\d.]+\)\.?", "", message)[:500]


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
