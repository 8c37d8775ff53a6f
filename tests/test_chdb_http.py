"""The embedded chDB served over ClickHouse's HTTP interface (sinks/chdb_http.py), tried from
outside: ``python -m sinks.chdb_http`` on a chDB directory of its own, an unchanged
clickhouse-connect ``http://`` client, and raw HTTP for what a client library would not send.

Each guard of the module's docstring gets a test that tries to break it: the credential,
loopback only, one session per request (``readonly`` never leaks, and cannot be lifted),
settings and names as data, a parameter given twice, compressed and external-data bodies.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import clickhouse_connect
import httpx
import pandas as pd
import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from pydantic import ValidationError

from agentwatch.settings import Settings
from infra.broker import free_port
from sinks.chdb_http import ChdbHttpServer, Refused, parse_request, served_dsn
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e  # a process of its own: chDB opens one directory per process

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Served:
    """A running ``python -m sinks.chdb_http`` and how to reach it."""

    url: str
    dsn: str
    password: str
    process: subprocess.Popen
    log: Path

    def client(self, **settings: object) -> Client:
        return clickhouse_connect.get_client(dsn=self.dsn, settings=settings or None)

    def post(self, query: str, auth: tuple[str, str] | None = None, **options: object):
        auth = auth or ("agentwatch", self.password)
        return httpx.post(self.url, content=query.encode(), auth=auth, timeout=30, **options)


def start_served(tmp_path: Path) -> Served:
    port, password = free_port(), secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "AGENTWATCH_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}",
        "AGENTWATCH_CLICKHOUSE_SERVE_PORT": str(port),
        "AGENTWATCH_CLICKHOUSE_SERVE_PASSWORD": password,
    }
    log = tmp_path / "chdb_http.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sinks.chdb_http"], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}/"

    def pings() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(url + "ping", timeout=1).text == "Ok.\n"
        except httpx.HTTPError:
            return False

    wait_until(pings, 60, "the served chDB to answer /ping")
    dsn = served_dsn(Settings(clickhouse_serve_password=password), port)
    return Served(url, dsn, password, process, log)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    running = start_served(tmp_path_factory.mktemp("served"))
    try:
        client = running.client()
        client.command("CREATE DATABASE IF NOT EXISTS d")
        client.command(
            "CREATE TABLE IF NOT EXISTS d.t (a Int64, s String) ENGINE = MergeTree ORDER BY a"
        )
        client.close()
        yield running
    finally:
        running.process.terminate()
        code = running.process.wait(timeout=30)
        assert code == 0, running.log.read_text()
        assert running.password not in running.log.read_text()  # never logged


def count(client: Client, where: str = "1") -> int:
    return client.command(f"SELECT count() FROM d.t WHERE {where}")


# --- what a clickhouse-connect client does -------------------------------------------------


def test_an_unchanged_client_creates_inserts_and_queries(served: Served) -> None:
    client = served.client()
    before = count(client)
    client.insert("d.t", [[1, "x"], [2, "y'z"]], column_names=["a", "s"])
    client.insert_df("d.t", pd.DataFrame({"a": [3], "s": ["w"]}))
    client.insert_arrow("d.t", pa.table({"a": [4], "s": ["v\\n"]}))
    client.command("INSERT INTO d.t SELECT 5, 'from select'")
    assert count(client) == before + 5
    bound = {"s": "y'z"}
    assert client.query("SELECT a FROM d.t WHERE s = {s:String}", parameters=bound).result_rows == [
        (2,)
    ]
    assert client.query("SELECT a FROM d.t WHERE s = %(s)s", parameters=bound).result_rows == [(2,)]
    frame = client.query_df("SELECT a, s FROM d.t WHERE a IN (3, 4) ORDER BY a")
    assert frame.to_dict("list") == {"a": [3, 4], "s": ["w", "v\\n"]}
    assert client.query_arrow("SELECT max(a) AS m FROM d.t").column("m").to_pylist() == [5]
    client.command("CREATE TABLE IF NOT EXISTS d.t2 (a Int8) ENGINE = Memory")  # no result set
    assert client.command("EXISTS TABLE d.t2") == 1
    one_thread = client.query("SELECT getSetting('max_threads')", settings={"max_threads": 1})
    assert one_thread.first_row == (1,)
    client.close()


def test_concurrent_clients_each_get_their_answers_and_every_insert_lands_once(
    served: Served,
) -> None:
    """Eight clients at once, as the API's pool and its background threads use it."""
    setup = served.client()
    setup.command(
        "CREATE TABLE IF NOT EXISTS d.c (w UInt8, i UInt32) ENGINE = MergeTree ORDER BY (w, i)"
    )
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        client = served.client(max_threads=1)
        try:
            for i in range(10):
                client.insert("d.c", [[worker, i]], column_names=["w", "i"])
                mine = client.query(
                    "SELECT count() FROM d.c WHERE w = {w:UInt8}", parameters={"w": worker}
                )
                assert mine.first_row == (i + 1,)
                assert client.query("SELECT getSetting('max_threads')").first_row == (1,)
        except BaseException as exc:  # noqa: BLE001 (reported below, with the worker)
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    counts = setup.query("SELECT w, count(), uniqExact(i) FROM d.c GROUP BY w ORDER BY w")
    assert counts.result_rows == [(w, 10, 10) for w in range(8)]
    setup.close()


def test_a_long_bound_parameter_travels_as_a_form_and_arrives_whole(served: Served) -> None:
    client = served.client()
    text = "é'\\" * 20_000  # past clickhouse-connect's URL limit: multipart/form-data
    answer = client.query("SELECT length({q:String})", parameters={"q": text})
    assert answer.first_row == (len(text.encode()),)
    client.close()


def test_clickhouses_error_comes_back_with_its_code_and_the_server_goes_on(
    served: Served,
) -> None:
    client = served.client()
    with pytest.raises(DatabaseError) as unknown:
        client.query("SELECT * FROM d.no_such_table")
    assert unknown.value.code == 60
    with pytest.raises(DatabaseError) as syntax:
        client.query("SELEC 1")
    assert syntax.value.code == 62
    raw = served.post("SELECT * FROM d.no_such_table")
    assert (raw.status_code, raw.headers["X-ClickHouse-Exception-Code"]) == (404, "60")
    assert client.command("SELECT 1") == 1
    client.close()


def test_a_query_stopped_at_its_time_limit_is_answered_once_not_retried(served: Served) -> None:
    """clickhouse-connect retries 502–504: a timeout must not come back as one of them."""
    client = served.client(max_execution_time=0.3, timeout_overflow_mode="throw")
    before = served.log.read_text().count("code=159")
    with pytest.raises(DatabaseError) as stopped:
        client.query(
            "SELECT count() FROM (SELECT arrayJoin(range(100000)) AS a) AS l "
            "CROSS JOIN (SELECT arrayJoin(range(100000)) AS b) AS r WHERE (a * b) % 7 = 3"
        )
    assert stopped.value.code == 159  # TIMEOUT_EXCEEDED
    assert served.log.read_text().count("code=159") == before + 1  # one request reached it
    client.close()


# --- who may ask ---------------------------------------------------------------------------


def test_only_the_user_with_its_password_gets_in(served: Served) -> None:
    query = "SELECT 1"
    assert served.post(query).text == "1\n"
    for auth in (("agentwatch", "wrong" * 5), ("default", served.password), ("", "")):
        refused = served.post(query, auth=auth)
        assert refused.status_code == 401, auth
        assert "authentication failed" in refused.text
        assert served.password not in refused.text
    anonymous = httpx.post(served.url, content=query.encode(), timeout=10)
    assert anonymous.status_code == 401
    # a stranger cannot make it read a big body: the 401 comes before any of it is sent
    port = int(served.url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stranger:
        stranger.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n")
        answer = stranger.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401") and b"Connection: close" in answer
    mangled = httpx.post(
        served.url, content=query.encode(), headers={"Authorization": "Basic !!notbase64"}
    )
    assert mangled.status_code == 401
    # a password with the right prefix, or the user's name in another case
    for user, password in (("agentwatch", served.password[:-1]), ("AgentWatch", served.password)):
        assert served.post(query, auth=(user, password)).status_code == 401
    by_headers = httpx.post(
        served.url,
        content=query.encode(),
        headers={"X-ClickHouse-User": "agentwatch", "X-ClickHouse-Key": served.password},
    )
    assert by_headers.text == "1\n"
    in_url = httpx.post(
        served.url,
        params={"user": "agentwatch", "password": served.password},
        content=query.encode(),
        auth=("agentwatch", served.password),
    )
    assert in_url.status_code == 400 and "Authorization header" in in_url.text
    with pytest.raises(DatabaseError):
        clickhouse_connect.get_client(dsn=served.dsn.replace(served.password, "x" * 32))
    assert "clickhouse_http_refused status=401 code=516" in served.log.read_text()


def test_it_serves_on_loopback_only() -> None:
    with pytest.raises(ValidationError, match="loopback"):
        Settings(clickhouse_serve_host="0.0.0.0")
    with pytest.raises(ValidationError, match="loopback"):
        Settings(clickhouse_serve_host="localhost.example.com")
    with pytest.raises(ValueError, match="loopback"):
        ChdbHttpServer("/nonexistent", "192.168.1.1", 0, "agentwatch", "p" * 32)
    with pytest.raises(ValueError, match="16 characters"):
        ChdbHttpServer("/nonexistent", "127.0.0.1", 0, "agentwatch", "short")


# --- one session per request: readonly holds, for its request only -------------------------


def test_readonly_holds_for_its_request_cannot_be_lifted_and_does_not_leak(
    served: Served,
) -> None:
    reader = served.client(readonly=1, max_threads=1)
    before = count(reader)
    attempts = [
        "INSERT INTO d.t VALUES (99, 'written')",
        "INSERT INTO d.t SELECT 99, 'written'",
        "DROP TABLE d.t",
        "SET readonly = 0",
        "SELECT 1 SETTINGS readonly = 0",
        "CREATE TABLE d.x (a Int8) ENGINE = Memory",
    ]
    for statement in attempts:
        with pytest.raises(DatabaseError) as refused:
            reader.command(statement)
        assert refused.value.code == 164, statement  # READONLY
    with pytest.raises(DatabaseError):
        reader.insert("d.t", [[99, "written"]], column_names=["a", "s"])
    got = reader.query("SELECT getSetting('readonly'), getSetting('max_threads')").result_rows
    assert got == [(1, 1)]
    # readonly first in the URL: it is still set last, so the other settings apply too
    raw = served.post(
        "SELECT getSetting('max_threads')", params={"readonly": "1", "max_threads": "1"}
    )
    assert raw.text == "1\n"
    writer = served.client()  # no readonly: the next requests may write (nothing leaked)
    assert writer.query("SELECT getSetting('readonly')").first_row == (0,)
    writer.insert("d.t", [[98, "after"]], column_names=["a", "s"])
    assert count(writer) == before + 1 and count(writer, "a = 99") == 0
    reader.close()
    writer.close()


def test_a_parameter_given_twice_is_refused(served: Served) -> None:
    for query_string in ("readonly=1&readonly=0", "param_a=1&param_a=2", "database=d&database=x"):
        answer = httpx.post(
            f"{served.url}?{query_string}",
            content=b"SELECT 1",
            auth=("agentwatch", served.password),
        )
        assert answer.status_code == 400 and "more than once" in answer.text, query_string


# --- settings, names and parameters are data -----------------------------------------------


def test_setting_names_databases_and_formats_must_be_identifiers(served: Served) -> None:
    hostile = [
        {"max_threads=1;DROP TABLE d.t;--": "1"},
        {"database": "d`; DROP TABLE d.t; --"},
        {"default_format": "TSV; DROP TABLE d.t"},
        {"param_a b": "1"},
    ]
    for params in hostile:
        answer = served.post("SELECT 1", params=params)
        assert answer.status_code == 400 and "not an identifier" in answer.text, params
    assert count(served.client()) > 0  # the table is still there


def test_setting_values_and_bound_parameters_stay_literals(served: Served) -> None:
    injection = "x'; DROP TABLE d.t; --"
    logged = served.post("SELECT getSetting('log_comment')", params={"log_comment": injection})
    assert logged.text == "x\\'; DROP TABLE d.t; --\n"  # TabSeparated escapes the quote
    bound = served.post("SELECT {s:String}", params={"param_s": injection})
    assert bound.text == "x\\'; DROP TABLE d.t; --\n"
    typed = served.post("SELECT {n:UInt8}", params={"param_n": "1; DROP TABLE d.t"})
    assert typed.status_code != 200
    assert count(served.client()) > 0


# --- bodies --------------------------------------------------------------------------------


def test_compressed_and_external_data_bodies_are_refused(served: Served) -> None:
    auth = ("agentwatch", served.password)
    gzipped = httpx.post(
        served.url, content=b"\x1f\x8b...", headers={"Content-Encoding": "gzip"}, auth=auth
    )
    assert gzipped.status_code == 415 and "compress=False" in gzipped.text
    external = httpx.post(
        served.url,
        data={"query": "SELECT * FROM _data"},
        files={"_data": ("data.tsv", b"1\n2\n")},
        auth=auth,
    )
    assert external.status_code == 400 and "external data" in external.text
    only_get_ping = httpx.get(served.url + "?query=SELECT%201", auth=auth)
    assert only_get_ping.text == "Ok.\n"  # GET answers the health check, never a query
    assert httpx.post(served.url + "play", content=b"SELECT 1", auth=auth).status_code == 404
    assert served.post("   ").status_code == 400


def test_an_insert_body_needs_a_format_and_lands_whole(served: Served) -> None:
    client = served.client()
    before = count(client, "s = 'tsv'")
    rows = "".join(f"{1000 + i}\ttsv\n" for i in range(5000)).encode()
    chunks = (rows[i : i + 4096] for i in range(0, len(rows), 4096))  # chunked transfer
    answer = httpx.post(
        served.url,
        params={"query": "INSERT INTO d.t (a, s) FORMAT TabSeparated"},
        content=chunks,
        auth=("agentwatch", served.password),
    )
    assert answer.status_code == 200, answer.text
    assert count(client, "s = 'tsv'") == before + 5000
    no_format = served.post("1\tx\n", params={"query": "INSERT INTO d.t (a, s)"})
    assert no_format.status_code == 400 and "FORMAT" in no_format.text
    client.close()


def test_insert_bodies_wait_beside_the_database_and_a_start_clears_what_a_crash_left(
    tmp_path: Path,
) -> None:
    """Insert bodies are spooled in ``<database dir>.http-spool`` (mode 0700), not in a new
    directory of the system's temporary one: a server killed with -9 leaves its spool to
    the next start, which empties it."""
    import tempfile

    def strays() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("agentwatch-chdb-http-*"))

    before = strays()
    spool = tmp_path / "chdb.http-spool"
    first = start_served(tmp_path)
    try:
        assert spool.is_dir() and spool.stat().st_mode & 0o777 == 0o700
        client = first.client()
        client.command("CREATE TABLE default.k (a Int64) ENGINE = MergeTree ORDER BY a")
        client.insert("default.k", [[1], [2]], column_names=["a"])  # (through the spool)
        client.close()
    finally:
        first.process.kill()  # a crash: nothing is cleaned up
        first.process.wait(timeout=30)
    (spool / "left-by-the-crash.rows").write_bytes(b"3\n")
    again = start_served(tmp_path)
    try:
        assert list(spool.iterdir()) == []
        client = again.client()
        client.insert("default.k", [[3]], column_names=["a"])
        assert client.query("SELECT sum(a) FROM default.k").result_rows == [(6,)]
        client.close()
    finally:
        again.process.terminate()
        try:
            code = again.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # (never left running: a fresh clone's run did)
            again.process.kill()
            again.process.wait()
            raise
        assert code == 0, again.log.read_text()
    assert not spool.exists()  # (a server that stops removes it)
    assert strays() <= before


# --- the request's reading, without a server ------------------------------------------------


def test_the_query_parameter_and_the_body_make_one_query() -> None:
    assert parse_request([("query", "SELECT")], b"1").sql == "SELECT\n1"
    insert = parse_request([("query", "INSERT INTO t FORMAT CSV")], b"1,2\n")
    assert (insert.sql, insert.data_format, insert.data) == ("INSERT INTO t", "CSV", b"1,2\n")
    inline = parse_request([], b"INSERT INTO t VALUES (1)")
    assert (inline.sql, inline.data) == ("INSERT INTO t VALUES (1)", None)
    with pytest.raises(Refused, match="not UTF-8"):
        parse_request([], b"SELECT '\xff'")
    with pytest.raises(Refused, match="no query"):
        parse_request([], b"")
