"""The embedded ClickHouse served over (a subset of) ClickHouse's HTTP interface.

chDB lives inside one process: only the process that opened the directory can
read it. That process is the loader (``python -m sinks.loader``); with
``AGENTWATCH_CLICKHOUSE_SERVE_PORT`` set it also answers on
``127.0.0.1:<port>`` the way a ClickHouse server's HTTP port does, so the API
(and Grafana) can run in processes of their own with an unchanged
clickhouse-connect ``http://`` client. That is why it exists: in one process,
the loader's Python work held the interpreter lock that the API's requests wait
for (docs/benchmarks.md, "Issue 10").

What a request may do, and what guards it (tests/test_chdb_http.py tries each):

- **Who.** A user name and password in the ``Authorization: Basic`` header or
  ``X-ClickHouse-User``/``X-ClickHouse-Key``, compared in constant time;
  anything else is 401, before the body is read. Credentials in the URL are
  refused (URLs get logged). The address must be a loopback one (checked by the
  settings and again here).
- **One fresh session per request.** Each request gets a chDB connection of its
  own, closed afterwards: a setting (``readonly=1`` above all) holds for its
  request only and never leaks into the next one.
- **Settings are data.** Every URL parameter that is not a transport one
  (:data:`TRANSPORT_PARAMETERS`) or a bound parameter (``param_x``) is a
  setting: its name must be an identifier, its value is quoted as a string
  literal, and it is ``SET`` before the query, ``readonly`` last (after it, no
  setting can change). A parameter given twice is refused: which one would win
  is exactly what an attacker would probe.
- **Bound parameters are chDB's own** (``{name:Type}`` in the query, bound by
  the engine, never spliced into the text).
- **Bodies are plain.** No ``Content-Encoding`` (it is loopback), no
  external-data files, at most ``max_body_bytes``.

Supported: queries in the body or ``query`` parameter (the body is appended, or
is an INSERT's data), multipart forms of plain fields (clickhouse-connect uses
them for long bound parameters), ``INSERT … FORMAT <fmt>`` with data, ``FORMAT``
clauses and ``default_format``, ``database``, ``query_id``, ``GET /ping``.
Not supported: sessions (``session_id`` is accepted and ignored: each request
stands alone), compression, external data, progress headers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import chdb

from agentwatch.logfmt import OneLineMessages
from agentwatch.secrets import redact, redact_handlers
from agentwatch.settings import Settings

log = logging.getLogger("sinks.chdb_http")  # (not __main__ under python -m)

#: URL parameters that steer the HTTP exchange, not the query; accepted and not ``SET``.
#: (Progress headers, compression and sessions are not offered: they are ignored.)
TRANSPORT_PARAMETERS = frozenset(
    {
        "database",
        "query",
        "query_id",
        "default_format",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "enable_http_compression",
        "wait_end_of_query",
        "buffer_size",
        "client_protocol_version",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "quota_key",
    }
)

#: ClickHouse error codes answered with a status other than 500 (as its HTTP server does).
#: Never 502–504: clickhouse-connect retries those, and a query stopped at its time limit
#: (TIMEOUT_EXCEEDED) would run again.
STATUS_OF_CODE = {
    27: 400,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    62: 400,  # SYNTAX_ERROR
    73: 400,  # UNKNOWN_FORMAT
    115: 400,  # UNKNOWN_SETTING
    456: 400,  # UNKNOWN_QUERY_PARAMETER
    60: 404,  # UNKNOWN_TABLE
    81: 404,  # UNKNOWN_DATABASE
    164: 403,  # READONLY
    497: 403,  # ACCESS_DENIED
}

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*\Z", re.IGNORECASE)
# An INSERT whose data follows its FORMAT clause on the next line (as clickhouse-connect writes it)
_INSERT_WITH_DATA = re.compile(
    rb"\A\s*(INSERT\b[^\n]*?)\s+FORMAT\s+([A-Za-z0-9_]+)[ \t]*\r?\n", re.IGNORECASE
)
_IS_INSERT = re.compile(r"\A\s*INSERT\b", re.IGNORECASE)
_CODE = re.compile(r"Code: (\d+)\.")
_CONTENT_TYPES = {"JSON": "application/json", "TabSeparated": "text/tab-separated-values"}


class Refused(Exception):
    """A request refused before it reaches the engine: its HTTP status and ClickHouse code."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class Request:
    """One query as the engine will run it."""

    sql: str
    data: bytes | None = None  # an INSERT's rows, in ``data_format``
    data_format: str = ""
    database: str | None = None
    settings: list[tuple[str, str]] = field(default_factory=list)  # in SET order
    params: dict[str, str] = field(default_factory=dict)
    default_format: str | None = None
    query_id: str = ""


@dataclass
class Answer:
    """What the engine gave: the body, its format (None: no result set) and the summary."""

    body: bytes
    format: str | None
    summary: dict[str, str]


def parse_request(fields: list[tuple[str, str]], body: bytes) -> Request:
    """A :class:`Request` from the URL's (or form's) fields and the body.

    >>> r = parse_request([("database", "agentwatch"), ("readonly", "1"),
    ...                    ("max_threads", "1"), ("param_a", "x'y")], b"SELECT {a:String}")
    >>> r.sql, r.database, r.settings, r.params
    ('SELECT {a:String}', 'agentwatch', [('max_threads', '1'), ('readonly', '1')], {'a': "x'y"})
    >>> r = parse_request([], b"INSERT INTO t (a) FORMAT Native\\n\\x01\\x02")
    >>> r.sql, r.data_format, r.data
    ('INSERT INTO t (a)', 'Native', b'\\x01\\x02')
    >>> parse_request([("readonly", "1"), ("readonly", "0")], b"SELECT 1")
    Traceback (most recent call last):
    ...
    sinks.chdb_http.Refused: parameter readonly is given more than once
    """
    names = [name for name, _ in fields]
    for name in names:
        if names.count(name) > 1:
            raise Refused(400, 36, f"parameter {name} is given more than once")
    given = dict(fields)
    for secret in ("user", "password"):
        if secret in given:
            raise Refused(400, 36, "credentials go in the Authorization header, not the URL")
    settings, params = [], {}
    for name, value in fields:
        if name.startswith("param_"):
            params[_identifier(name.removeprefix("param_"), "query parameter")] = value
        elif name not in TRANSPORT_PARAMETERS:
            settings.append((_identifier(name, "setting"), value))
    settings.sort(key=lambda item: item[0] == "readonly")  # readonly last: then nothing changes
    request = Request(
        sql="",
        database=given.get("database") or None,
        settings=settings,
        params=params,
        default_format=given.get("default_format") or None,
        query_id=given.get("query_id") or str(uuid.uuid4()),
    )
    if request.database is not None:
        _identifier(request.database, "database")
    query = given.get("query")
    if query is None:
        match = _INSERT_WITH_DATA.match(body)
        if match:
            request.sql = match.group(1).decode()
            request.data_format = match.group(2).decode()
            request.data = body[match.end() :]
        else:
            request.sql = _text(body)
    elif _IS_INSERT.match(query) and body:
        trailing = _TRAILING_FORMAT.search(query)
        if trailing is None:
            raise Refused(400, 62, "an INSERT with data in the body needs a FORMAT clause")
        request.sql = query[: trailing.start()].rstrip()
        request.data_format = trailing.group(1)
        request.data = body
    else:
        request.sql = f"{query}\n{_text(body)}" if body else query
    if not request.sql.strip():
        raise Refused(400, 62, "no query: send it in the body or the query parameter")
    for fmt in (request.default_format, request.data_format):
        if fmt:
            _identifier(fmt, "format")
    return request


def form_fields(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The plain fields of a ``multipart/form-data`` body; a file part (external data) is refused.

    >>> body = (b'--b\\r\\nContent-Disposition: form-data; name="query"\\r\\n\\r\\nSELECT 1'
    ...         b'\\r\\n--b--\\r\\n')
    >>> form_fields('multipart/form-data; boundary="b"', body)
    [('query', 'SELECT 1')]
    """
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    if not message.is_multipart():
        raise Refused(400, 36, "a multipart/form-data body without parts")
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            raise Refused(400, 36, "a form part without a name")
        if part.get_filename() is not None:
            raise Refused(400, 48, "external data (file parts) is not supported here")
        fields.append((name, _text(part.get_payload(decode=True) or b"")))
    return fields


class Engine:
    """Runs :class:`Request` s on the process's chDB, each on a connection of its own."""

    def __init__(self, path: str | Path, spool_dir: Path) -> None:
        self.path = str(path)
        self.spool_dir = spool_dir
        # Held open while the engine serves: each request's own connection is then a new
        # session on the open database (~0.1 ms). Without it, when nothing else in the
        # process holds the database (`python -m sinks.chdb_http`), every request opened
        # and closed the whole database: 27 ms for SELECT 1.
        self._held = chdb.connect(self.path)
        self.timezone = (
            self._held.query("SELECT timezone()", "TabSeparated").bytes().decode().strip()
        )

    def close(self) -> None:
        self._held.close()

    def run(self, request: Request) -> Answer:
        """Run one request; raises what chDB raises (a ``Code: N. DB::Exception`` text)."""
        conn = chdb.connect(self.path)
        try:
            if request.database:
                conn.query(f"USE `{request.database}`")
            for name, value in request.settings:
                conn.query(f"SET {name} = {_string_literal(value)}")
            if request.data is not None:
                return self._insert(conn, request)
            trailing = _TRAILING_FORMAT.search(request.sql)
            if trailing or request.default_format:
                fmt = trailing.group(1) if trailing else request.default_format
                result = conn.query(request.sql, fmt, params=request.params)
                return Answer(result.bytes() or b"", fmt, _summary(result))
            # No format asked: a statement with a result set answers in TabSeparated, one
            # without (DDL, INSERT … SELECT) with nothing; the names line tells them apart.
            result = conn.query(request.sql, "TabSeparatedWithNames", params=request.params)
            body = result.bytes() or b""
            if not body:
                return Answer(b"", None, _summary(result))
            return Answer(body.partition(b"\n")[2], "TabSeparated", _summary(result))
        finally:
            conn.close()

    def _insert(self, conn: object, request: Request) -> Answer:
        handle, name = tempfile.mkstemp(suffix=".rows", dir=self.spool_dir)
        try:
            with os.fdopen(handle, "wb") as spool:
                spool.write(request.data)
            result = conn.query(
                f"{request.sql} FROM INFILE {_string_literal(name)} FORMAT {request.data_format}",
                "TabSeparated",
                params=request.params,
            )
            return Answer(b"", None, _summary(result))
        finally:
            Path(name).unlink(missing_ok=True)


def spool_dir(path: str | Path) -> Path:
    """Where insert bodies wait for chDB to read them: beside the database's directory
    (``<path>.http-spool``, mode 0700), emptied when a server starts. A process killed
    while it served (kill -9, a crash) leaves its files to the next start there, not a
    directory in the system's temporary one at every crash."""
    spool = Path(f"{os.fspath(path).rstrip(os.sep)}.http-spool")
    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir(mode=0o700)
    return spool


class ChdbHttpServer:
    """Serves :class:`Engine` on ``host:port`` to one user; :meth:`start` it in a thread.

    ``port`` 0 takes a free one (:attr:`port` says which).
    """

    def __init__(
        self,
        path: str | Path,
        host: str,
        port: int,
        user: str,
        password: str,
        max_body_bytes: int = 256 << 20,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the embedded ClickHouse serves on loopback only, not {host}")
        if len(password) < 16:
            raise ValueError("the embedded ClickHouse needs a password of 16 characters or more")
        self._spool = spool_dir(path)
        self.engine = Engine(path, self._spool)
        self.user = user
        self._password = password.encode()
        self.max_body_bytes = max_body_bytes
        self._httpd = ThreadingHTTPServer((host, port), _Handler, bind_and_activate=True)
        self._httpd.daemon_threads = True
        self._httpd.service = self

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> ChdbHttpServer:
        threading.Thread(target=self._httpd.serve_forever, name="chdb-http", daemon=True).start()
        log.info(
            "clickhouse_http_serving host=%s port=%d user=%s",
            self._httpd.server_address[0], self.port, self.user,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.engine.close()
        shutil.rmtree(self._spool, ignore_errors=True)

    def authenticated(self, headers: object) -> bool:
        """True when the request carries this server's user and password."""
        user, key = headers.get("X-ClickHouse-User"), headers.get("X-ClickHouse-Key")
        basic = headers.get("Authorization", "")
        if basic.startswith("Basic "):
            try:
                user, _, key = base64.b64decode(basic[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
        if user is None or key is None:
            return False
        same_user = hmac.compare_digest(user.encode(), self.user.encode())
        return hmac.compare_digest(key.encode(), self._password) and same_user


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "agentwatch-chdb"
    # An answer is two writes (the headers, then the body) on a kept-alive connection:
    # with Nagle's algorithm the body waited for the client's delayed ACK of the
    # headers (measured: SELECT 1 took 48 ms, 2 ms without; bench/served_chdb.py).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass  # the query text is the caller's business: do_POST logs outcomes without it

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if urlsplit(self.path).path in ("/", "/ping"):
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
        else:
            self._error(Refused(404, 0, "only POST / (queries) and GET /ping are served"))

    def do_POST(self) -> None:  # noqa: N802
        service: ChdbHttpServer = self.server.service
        started = time.perf_counter()
        try:
            if not service.authenticated(self.headers):
                self.close_connection = True  # its body is never read: nothing to keep alive
                raise Refused(401, 516, f"{service.user}: authentication failed")
            body = self._body(service.max_body_bytes)
            url = urlsplit(self.path)
            if url.path != "/":
                raise Refused(404, 0, "queries go to POST /")
            fields = parse_qsl(url.query, keep_blank_values=True)
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith("multipart/form-data"):
                fields += form_fields(content_type, body)
                body = b""
            request = parse_request(fields, body)
            answer = service.engine.run(request)
        except Refused as refused:  # logged without the query or any credential
            log.info("clickhouse_http_refused status=%d code=%d", refused.status, refused.code)
            self._error(refused)
            return
        except Exception as exc:  # chDB's error: "Code: N. DB::Exception: …"
            message = str(exc)
            match = _CODE.search(message)
            code = int(match.group(1)) if match else 1000
            log.info("clickhouse_http_error code=%d", code)
            self._error(Refused(STATUS_OF_CODE.get(code, 500), code, message))
            return
        headers = {
            "X-ClickHouse-Query-Id": request.query_id,
            "X-ClickHouse-Timezone": service.engine.timezone,
            "X-ClickHouse-Summary": json.dumps(
                answer.summary | {"elapsed_ns": str(int((time.perf_counter() - started) * 1e9))}
            ),
            "Content-Type": _content_type(answer.format),
        }
        if answer.format is not None:
            headers["X-ClickHouse-Format"] = answer.format
        self._send(200, answer.body, headers)

    def _body(self, limit: int) -> bytes:
        if self.headers.get("Content-Encoding", "identity").lower() != "identity":
            self.close_connection = True  # its body stays unread
            raise Refused(415, 36, "compressed bodies are not accepted: send compress=False")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts, size = [], 0
            while True:
                length = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if length == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                size += length
                if size > limit:
                    self.close_connection = True
                    raise Refused(413, 36, f"the body is over {limit} bytes")
                parts.append(self.rfile.read(length))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            self.close_connection = True
            raise Refused(413, 36, f"the body is over {limit} bytes")
        return self.rfile.read(length) if length else b""

    def _error(self, refused: Refused) -> None:
        text = str(refused)
        if not text.startswith("Code:"):
            text = f"Code: {refused.code}. DB::Exception: {text}"
        self._send(
            refused.status,
            text.encode() + b"\n",
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(refused.code),
            },
        )

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(settings: Settings) -> ChdbHttpServer | None:
    """Serve this process's chDB when ``settings.clickhouse_serve_port`` asks for it.

    Raises ValueError with a one-line reason when it cannot (not a chdb:// DSN, a
    short password).
    """
    if not settings.clickhouse_serve_port:
        return None
    dsn = settings.clickhouse_dsn.get_secret_value()
    if not dsn.startswith("chdb://"):
        raise ValueError(
            "AGENTWATCH_CLICKHOUSE_SERVE_PORT serves the embedded chDB, and "
            "AGENTWATCH_CLICKHOUSE_DSN is not a chdb:// one"
        )
    # chDB compares engine paths literally: the spelling clickhouse-connect gives it
    path = os.path.realpath(dsn.removeprefix("chdb://") or ".")
    return ChdbHttpServer(
        path,
        settings.clickhouse_serve_host,
        settings.clickhouse_serve_port,
        settings.clickhouse_serve_user,
        settings.clickhouse_serve_password.get_secret_value(),
    ).start()


def served_dsn(settings: Settings, port: int) -> str:
    """The ``http://`` DSN of the chDB that ``settings`` serve on ``port`` (a secret).

    >>> served_dsn(Settings(clickhouse_serve_password="p" * 16), 8124)
    'http://agentwatch:pppppppppppppppp@127.0.0.1:8124?compress=false&autogenerate_session_id=false'
    """
    password = quote(settings.clickhouse_serve_password.get_secret_value(), safe="")
    host = settings.clickhouse_serve_host
    host = f"[{host}]" if ":" in host else host
    return (
        f"http://{quote(settings.clickhouse_serve_user, safe='')}:{password}@{host}:{port}"
        "?compress=false&autogenerate_session_id=false"
    )


def main() -> int:
    """``python -m sinks.chdb_http``: serve the chDB of ``AGENTWATCH_CLICKHOUSE_DSN`` alone
    (for tests, or to read a stopped stack's data with Grafana) until SIGTERM or Ctrl-C."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
    )
    settings = Settings()
    redact_handlers(logging.getLogger().handlers, settings.secret_values())
    for handler in logging.getLogger().handlers:
        handler.addFilter(OneLineMessages())  # (what agents send cannot break a line)
    stop = threading.Event()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda _signum, _frame: stop.set())
    try:
        server = serve(settings)
    except (ValueError, RuntimeError, OSError) as exc:
        reason = redact(str(exc), settings.secret_values())
        print(f"agentwatch chdb-http: {reason}", file=sys.stderr)
        return 1
    if server is None:
        print("agentwatch chdb-http: set AGENTWATCH_CLICKHOUSE_SERVE_PORT", file=sys.stderr)
        return 1
    stop.wait()
    server.stop()
    return 0


def _identifier(name: str, what: str) -> str:
    if not _IDENTIFIER.match(name):
        raise Refused(400, 36, f"{what} name {name!r} is not an identifier")
    return name


def _string_literal(value: str) -> str:
    """``value`` as a ClickHouse string literal (ClickHouse converts it to the setting's type).

    >>> _string_literal("a'b\\\\c")
    "'a\\\\'b\\\\\\\\c'"
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _text(body: bytes) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError as exc:
        raise Refused(400, 36, f"the query is not UTF-8 ({exc.reason})") from None


def _summary(result: object) -> dict[str, str]:
    return {
        "read_rows": str(result.rows_read()),
        "read_bytes": str(result.bytes_read()),
        "written_rows": str(result.rows_written()),
        "written_bytes": str(result.bytes_written()),
    }


def _content_type(fmt: str | None) -> str:
    if fmt is None:
        return "text/plain; charset=UTF-8"
    for prefix, content_type in _CONTENT_TYPES.items():
        if fmt.startswith(prefix):
            return content_type
    return "application/octet-stream"


if __name__ == "__main__":
    sys.exit(main())
