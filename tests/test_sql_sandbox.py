"""The SQL sandbox, tried as an outside tester would: through the real API, on real chDB.

Every hostile query of :data:`HOSTILE` goes to ``POST /api/v1/sql`` of an app on
the session's chDB: each is refused (403 for the policy, 400 for what cannot be
read) or stopped by a limit, with a message that names the problem, and no
answer ever holds host data (a secret file the queries try to read, and
``/etc/hostname`` as the issue read it). Analysts' queries still work
(:data:`ANALYST_QUERIES`). Each of ClickHouse's limits is shown to bite on its
own. Last, heavy queries run against ``python -m api`` while heartbeats stream
into its loader: they are stopped within a bound, health keeps answering, and
rows keep landing.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from clickhouse_connect.driver.client import Client
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from agentwatch.settings import Settings
from api.app import create_app
from api.sql import SqlSandbox, open_read_only_client, prepare
from api.sql_policy import (
    AGGREGATE_FUNCTIONS,
    SCALAR_FUNCTIONS,
    TYPED_FUNCTIONS,
    WINDOW_FUNCTIONS,
    SqlRefused,
    check_query,
    function_allowed,
)
from infra.broker import ensure_topics, free_port
from schemas.metric_rows import encode_json
from sinks.clickhouse import connect, create_schema
from tests.conftest import LOOPBACK_CLIENT, wait_until

pytestmark = pytest.mark.integration

#: A file the hostile queries try to read; its content must never come back.
SECRET = f"agentwatch-secret-{uuid.uuid4().hex}"
#: /etc/hostname as the file-read of the issue returned it (["vm\n"]), JSON-escaped.
HOSTNAME = orjson.dumps(Path("/etc/hostname").read_text()).decode().strip('"')
DB = "aw_sandbox"  # the module's database (tests isolate by database name)

# (query, HTTP status, what the refusal must say); {secret} is the secret file's path.
HOSTILE: list[tuple[str, int, str]] = [
    # -- the file-read of the issue, and its disguises
    ("SELECT `file`('/etc/hostname', 'LineAsString')", 403, "function file() is not allowed"),
    ("SELECT \"file\"('{secret}', 'LineAsString')", 403, "function file() is not allowed"),
    ("SELECT FiLe('{secret}')", 403, "function FiLe() is not allowed"),
    ("SELECT file/**/('{secret}')", 403, "function file() is not allowed"),
    ("SELECT file -- a comment\n('{secret}')", 403, "function file() is not allowed"),
    ("SELECT /* /* nested */ */ file('{secret}')", 403, "function file() is not allowed"),
    ("SELECT \uff46\uff49\uff4c\uff45('{secret}')", 403, "is not allowed"),  # fullwidth
    ("SELECT fi\u200ble('{secret}')", 403, "is not allowed"),  # zero-width space
    ("SELECT f\u0456le('{secret}')", 403, "is not allowed"),  # Cyrillic і
    ("SELECT * FROM file('{secret}', 'LineAsString')", 403, "table function file()"),
    ("SELECT * FROM `file`('{secret}', 'LineAsString')", 403, "table function file()"),
    ("SELECT * FROM FILE('{secret}', 'LineAsString')", 403, "table function FILE()"),
    (f"SELECT * FROM {DB}.metrics, file('{{secret}}', 'LineAsString')", 403, "file()"),
    ("SELECT * FROM metrics AS m JOIN file('{secret}', 'LineAsString') AS f ON 1", 403, "file()"),
    ("WITH f AS (SELECT * FROM file('{secret}', 'LineAsString')) SELECT * FROM f", 403, "file()"),
    ("SELECT (SELECT any(line) FROM file('{secret}', 'LineAsString'))", 403, "file()"),
    # -- every other door out of the database
    ("SELECT * FROM url('http://127.0.0.1:9/x', 'CSV', 'a String')", 403, "table function url()"),
    ("SELECT * FROM s3('http://127.0.0.1:9/b/x', 'CSV', 'a String')", 403, "table function s3()"),
    ("SELECT * FROM remote('127.0.0.1:9000', system.one)", 403, "table function remote()"),
    ("SELECT * FROM input('a String')", 403, "table function input()"),
    ("SELECT * FROM executable('cat {secret}', 'TSV', 'a String')", 403, "executable()"),
    ("SELECT * FROM jdbc('jdbc:x', 'd', 't')", 403, "table function jdbc()"),
    ("SELECT * FROM mysql('127.0.0.1:3306', 'd', 't', 'u', 'p')", 403, "mysql()"),
    ("SELECT * FROM postgresql('127.0.0.1:5432', 'd', 't', 'u', 'p')", 403, "postgresql()"),
    ("SELECT * FROM dictionary('d')", 403, "dictionary(…) is not allowed"),  # sqlglot: a table
    ("SELECT * FROM merge('system', '.*')", 403, "table function merge()"),
    ("SELECT * FROM cluster('default', system.one)", 403, "table function cluster()"),
    ("SELECT * FROM python(secret)", 403, "table function python()"),  # chDB: a Python object
    ("SELECT * FROM view(SELECT 1)", 403, "table function view()"),
    ("SELECT url('http://127.0.0.1:9/')", 403, "function url() is not allowed"),
    # -- system tables and other databases, quoted too
    ("SELECT * FROM system.tables", 403, "table system.tables is not allowed"),
    ("SELECT * FROM `system`.`users`", 403, "table system.users is not allowed"),
    ('SELECT * FROM "system"."settings"', 403, "table system.settings is not allowed"),
    ("SELECT * FROM SYSTEM.TABLES", 403, "table SYSTEM.TABLES is not allowed"),
    ("SELECT * FROM information_schema.tables", 403, "information_schema.tables"),
    ("SELECT * FROM default.metrics", 403, "table default.metrics is not allowed"),
    ("SELECT * FROM metrics WHERE agent_id IN system.one", 403, "table system.one"),
    ("SELECT * FROM metrics JOIN system.one ON 1", 403, "table system.one"),
    ("SELECT (SELECT name FROM system.users LIMIT 1)", 403, "table system.users"),
    ("SELECT system.one.dummy", 403, "column system.one.dummy"),
    ("DESCRIBE system.tables", 403, "table system.tables is not allowed"),
    ("SHOW TABLES FROM system", 403, "this one is SHOW"),
    ("SHOW DATABASES", 403, "this one is SHOW"),
    # -- functions that read outside the tables or tell about the server
    ("SELECT dictGet('d', 'a', toUInt64(1))", 403, "function dictGet() is not allowed"),
    ("SELECT getSetting('max_memory_usage')", 403, "function getSetting() is not allowed"),
    ("SELECT currentUser(), hostName(), version()", 403, "function currentUser()"),
    ("SELECT joinGet('j', 'v', 1)", 403, "function joinGet() is not allowed"),
    ("SELECT arrayReduce('sum', [1])", 403, "function arrayReduce() is not allowed"),
    ("SELECT sleep(3)", 403, "function sleep() is not allowed"),
    ("SELECT filesystemAvailable()", 403, "function filesystemAvailable()"),
    # -- clauses the caller may not use, statements that are not reads
    ("SELECT 1 SETTINGS readonly = 0", 403, "SETTINGS clause is not allowed"),
    ("SELECT * FROM (SELECT 1 SETTINGS max_memory_usage = 0)", 403, "SETTINGS clause"),
    ("SELECT 1 UNION ALL SELECT 2 SETTINGS max_threads = 64", 403, "SETTINGS clause"),
    ("SET readonly = 0", 403, "this one is SET"),
    ("INSERT INTO metrics (agent_id, tenant_id) VALUES ('x', 't')", 403, "this one is INSERT"),
    ("ALTER TABLE metrics DELETE WHERE 1", 403, "this one is ALTER"),
    ("OPTIMIZE TABLE metrics FINAL", 403, "this one is OPTIMIZE"),
    ("SYSTEM SHUTDOWN", 403, "this one is SYSTEM"),
    ("KILL QUERY WHERE 1", 403, "this one is KILL"),
    ("ATTACH TABLE x FROM '{secret}' (a String) ENGINE = File(CSV)", 403, "this one is ATTACH"),
    ("DROP TABLE metrics", 403, "this one is DROP"),
    ("CREATE TABLE stolen (a UInt8) ENGINE = Memory", 403, "this one is CREATE"),
    ("TRUNCATE TABLE metrics", 403, "this one is TRUNCATE"),
    ("GRANT ALL ON *.* TO default", 403, "this one is GRANT"),
    ("EXPLAIN SELECT 1", 403, "this one is EXPLAIN"),
    ("SELECT 1; DROP TABLE metrics", 403, "one statement at a time"),
    ("SELECT 1; SELECT 2", 403, "one statement at a time"),
    ("SELECT 1 INTO OUTFILE 'leak.csv'", 400, "INTO OUTFILE would write a file"),
    ("SELECT * FROM metrics FORMAT CSV", 400, "leave out FORMAT CSV"),
    ("SELECT {x:String}", 403, "query parameters"),
    # -- too big or too deep: refused before anything runs, or stopped by a limit
    ("SELECT groupArray(number) FROM numbers(200000000)", 403, "table function numbers()"),
    (
        "SELECT count() FROM numbers(1e12) AS a CROSS JOIN numbers(1e12) AS b",
        403,
        "table function numbers()",
    ),
    ("SELECT " + "(" * 5000 + "1" + ")" * 5000, 400, "nests parentheses 5000 levels deep"),
    ("SELECT * FROM " + "(SELECT * FROM " * 3000 + "metrics" + ")" * 3000, 400, "levels deep"),
    ("SELECT " + "NOT " * 5000 + "1", 400, "nests too deeply"),
    ("SELECT " + " + ".join(["1"] * 20000), 400, "ClickHouse cannot parse the query"),
    ("SELECT 1 /* never closed", 400, "cannot read the query"),
    ("SELECT * FROM values()", 400, "the parser failed"),
    (
        "SELECT length(groupArray(x)) FROM (SELECT arrayJoin(range(200000000)) AS x)",
        400,
        "AGENTWATCH_API_SQL_MAX_MEMORY_BYTES",
    ),
    (
        "SELECT count() FROM (SELECT arrayJoin(range(200000)) AS a) AS l "
        "CROSS JOIN (SELECT arrayJoin(range(100000)) AS b) AS r WHERE (a * b) % 7 = 3",
        400,
        "AGENTWATCH_API_SQL_MAX_EXECUTION_TIME_S",
    ),
    ("SELECT arrayMap(x -> repeat('x', 1000000), range(2000))", 400, "_MAX_MEMORY_BYTES"),
]

# Queries analysts run: each answers 200 (with what the test fleet holds).
ANALYST_QUERIES: list[tuple[str, list[list]]] = [
    (  # the README's first example
        "SELECT agent_id, count() AS anomalies, max(score) AS worst FROM anomalies FINAL "
        "WHERE is_anomaly GROUP BY agent_id ORDER BY anomalies DESC LIMIT 10",
        [["a1", 1, 0.9995]],
    ),
    (
        "SELECT agent_id, count() AS beats, round(avg(cpu_usage), 1) AS cpu, "
        "countIf(cpu_usage > 90) AS hot, quantile(0.5)(cpu_usage) AS p50 "
        "FROM metrics FINAL GROUP BY agent_id ORDER BY agent_id",
        [["a1", 3, 56.7, 1, 38.0], ["a2", 1, 12.0, 0, 12.0]],
    ),
    (
        "WITH hot AS (SELECT DISTINCT agent_id FROM anomalies FINAL WHERE is_anomaly) "
        "SELECT m.agent_id, max(m.cpu_usage) FROM metrics AS m INNER JOIN hot USING agent_id "
        "GROUP BY m.agent_id",
        [["a1", 97.0]],
    ),
    (
        "SELECT agent_id FROM metrics WHERE agent_id = 'a2' "
        "UNION ALL SELECT agent_id FROM baselines FINAL WHERE agent_id = 'a3'",
        [["a2"], ["a3"]],
    ),
    (
        "SELECT agent_id, heartbeats FROM baselines FINAL WHERE agent_id IN "
        "(SELECT agent_id FROM metrics GROUP BY agent_id HAVING count() > 2)",
        [["a1", 2000]],
    ),
    (
        f"SELECT t.rule, t.severity FROM {DB}.threats AS t FINAL "
        "LEFT JOIN (SELECT agent_id, max(timestamp) AS last FROM metrics GROUP BY agent_id) AS l "
        "ON t.agent_id = l.agent_id ORDER BY t.first_seen",
        [["high_error_rate", "HIGH"], ["resource_exhaustion", "CRITICAL"]],
    ),
    (
        "SELECT agent_id, cpu_usage, row_number() OVER (PARTITION BY agent_id "
        "ORDER BY timestamp DESC) AS n FROM metrics ORDER BY agent_id, n LIMIT 1 BY agent_id",
        [["a1", 97.0, 1], ["a2", 12.0, 1]],
    ),
    (
        "SELECT arrayMap(x -> x * 2, [1, 2]), arrayFilter(x -> x > 1, [1, 2, 3]), "
        "mapKeys(mean), JSONExtractFloat('{\"z\": 1.5}', 'z') FROM baselines FINAL "
        "WHERE agent_id = 'a3'",
        [[[2, 4], [2, 3], ["cpu_usage", "memory_usage"], 1.5]],
    ),
    (
        "SELECT toStartOfHour(timestamp) = toStartOfHour(timestamp), "
        "dateDiff('second', min(timestamp), max(timestamp)) FROM metrics WHERE agent_id = 'a1' "
        "GROUP BY 1",
        [[1, 60]],
    ),
    ("SELECT count() FROM metrics -- a comment at the end", [[4]]),
]


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "secret.txt"
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture(scope="module", params=["chdb", pytest.param("served", marks=pytest.mark.e2e)])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The DSN the module runs on: the session's chDB in this process, then the same engine
    served by a process of its own (sinks/chdb_http.py, as `agentwatch up` runs it): every
    guard must hold through both."""
    if request.param == "chdb":
        yield f"chdb://{request.getfixturevalue('chdb_dir')}"
        return
    from tests.test_chdb_http import start_served

    served = start_served(tmp_path_factory.mktemp("served"))
    try:
        yield served.dsn
    finally:
        served.process.terminate()
        served.process.wait(timeout=30)


def sandbox_settings(dsn: str, var_dir: Path, **overrides: object) -> Settings:
    """Settings of the module's database on ``dsn`` (:func:`engine`), SQL on, no broker."""
    values: dict[str, object] = {
        "clickhouse_dsn": dsn,
        "clickhouse_database": DB,
        "bootstrap_servers": f"127.0.0.1:{free_port()}",
        "api_broker_timeout_s": 0.3,
        "var_dir": var_dir,
        "api_sql_enabled": True,
        "api_auth_required": False,  # tests/test_rbac.py tries keys on this route
        "api_sql_max_memory_bytes": 256 * 2**20,
        "api_sql_max_execution_time_s": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def fleet_db(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """The module's database with a small fleet: a1 (history, anomalies), a2, a3 (baseline)."""
    from tests.test_api import (
        ANOMALY_COLUMNS,
        BASELINE_COLUMNS,
        METRIC_COLUMNS,
        THREAT_COLUMNS,
        anomaly_row,
        baseline_row,
        heartbeat_row,
        threat_row,
    )

    settings = sandbox_settings(engine, tmp_path_factory.mktemp("var"))
    client = connect(settings)
    create_schema(client, settings)
    rows = {
        "metrics": ([heartbeat_row("a1", 90, cpu=35.0), heartbeat_row("a1", 60, cpu=38.0),
                     heartbeat_row("a1", 30, cpu=97.0, status="busy"),
                     heartbeat_row("a2", 10, cpu=12.0)], METRIC_COLUMNS),
        "baselines": ([baseline_row("a1", 60, heartbeats=2000, warmed_up=True),
                       baseline_row("a3", 60, heartbeats=5, warmed_up=False)], BASELINE_COLUMNS),
        "anomalies": ([anomaly_row("a1", 600, score=0.991, cpu=70.0),
                       anomaly_row("a1", 30, score=0.9995, cpu=97.0),
                       anomaly_row("a1", 20, score=0.995, cpu=90.0)], ANOMALY_COLUMNS),
        "threats": ([threat_row("a1", 900), threat_row("a1", 60, rule="resource_exhaustion",
                     category="SYSTEM", severity="CRITICAL")], THREAT_COLUMNS),
    }  # fmt: skip
    for table, (values, columns) in rows.items():
        client.insert(table, values, column_names=columns, database=DB)
    try:
        yield client
    finally:
        client.command(f"DROP DATABASE IF EXISTS {DB}")
        client.close()


@pytest.fixture(scope="module")
def api(
    fleet_db: Client, engine: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The app with SQL on, on the module's database (its own read-only sessions)."""
    settings = sandbox_settings(engine, tmp_path_factory.mktemp("var"))
    with TestClient(
        create_app(settings, client=fleet_db, run_loader=False), client=LOOPBACK_CLIENT
    ) as client:
        yield client


def assert_no_host_data(body: str) -> None:
    assert SECRET not in body
    assert f'"{HOSTNAME}"' not in body  # the answer was {"rows":[["vm\n"]], …}


# --- the hostile table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status", "says"), HOSTILE, ids=[f"hostile-{i:02d}" for i in range(len(HOSTILE))]
)
def test_hostile_query_is_refused_or_stopped_and_returns_no_host_data(
    api: TestClient,
    secret_file: Path,
    query: str,
    status: int,
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # where a relative INTO OUTFILE would land
    query = query.replace("{secret}", str(secret_file))
    started = time.monotonic()
    response = api.post("/api/v1/sql", json={"query": query})
    took = time.monotonic() - started
    assert response.status_code == status, response.text[:500]
    assert says in response.json()["detail"], response.text[:500]
    assert_no_host_data(response.text)
    assert took < 2.0 + 3.0, f"{took:.1f} s"  # the module's time limit + slack
    assert list(tmp_path.iterdir()) == []
    count = api.post("/api/v1/sql", json={"query": "SELECT count() FROM metrics"})
    assert count.json()["rows"] == [[4]]  # the session still answers reads; nothing changed


def test_the_hostile_table_is_big_and_varied_enough() -> None:
    assert len(HOSTILE) >= 40
    assert {status for _, status, _ in HOSTILE} == {400, 403}


def test_no_refusal_leaks_the_secret_in_csv_either(api: TestClient, secret_file: Path) -> None:
    """The issue's read, each way a caller can ask for an answer."""
    query = f"SELECT `file`('{secret_file}', 'LineAsString')"
    for fmt in ("json", "csv", "tsv"):
        response = api.post("/api/v1/sql", json={"query": query, "format": fmt})
        assert response.status_code == 403
        assert_no_host_data(response.text)


# --- analysts' queries still work -------------------------------------------------------


@pytest.mark.parametrize(("query", "rows"), ANALYST_QUERIES)
def test_analyst_queries_answer(api: TestClient, query: str, rows: list[list]) -> None:
    response = api.post("/api/v1/sql", json={"query": query})
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == rows


def test_show_tables_and_describe_answer_for_the_projects_tables(api: TestClient) -> None:
    tables = api.post("/api/v1/sql", json={"query": "SHOW TABLES", "format": "tsv"})
    assert tables.status_code == 200, tables.text
    names = tables.text.splitlines()
    assert names[0] == "name" and {"metrics", "anomalies", "baselines", "threats"} <= set(names)
    described = api.post("/api/v1/sql", json={"query": f"DESCRIBE TABLE {DB}.metrics"}).json()
    assert described["rows"][0][:2] == ["agent_id", "String"]


def test_a_table_analysts_may_not_read_is_a_403_whatever_it_hides_behind(api: TestClient) -> None:
    """Found by an attacker (2026-12-07): every table of the project's database was readable,
    the keys' ids, roles and secret hashes among them. Now only the fleet analyst's grants of
    the cluster profile, however a query names or shadows the others."""
    for query in (
        "SELECT key_id, secret_hash FROM api_keys",
        f"SELECT * FROM {DB}.api_keys",
        "SELECT count() FROM schema_migrations",
        "SELECT * FROM agent_registry",
        "SELECT * FROM no_such_table",
        "DESCRIBE api_keys",
        # a WITH name covers only its own query, and not its own body, nor a scalar's name
        "SELECT * FROM (WITH api_keys AS (SELECT 1) SELECT * FROM api_keys) AS s, api_keys",
        "WITH api_keys AS (SELECT * FROM api_keys) SELECT * FROM api_keys",
        "WITH (SELECT 1) AS api_keys SELECT * FROM api_keys",
        "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
        "SELECT * FROM metrics WHERE agent_id IN api_keys",
    ):
        response = api.post("/api/v1/sql", json={"query": query})
        assert response.status_code == 403, (query, response.text)
        assert "not one analysts may read" in response.json()["detail"], query
    named = api.post("/api/v1/sql", json={"query": "WITH k AS (SELECT 1 AS x) SELECT x FROM k"})
    assert named.status_code == 200 and named.json()["rows"] == [[1]]
    listed = api.post("/api/v1/sql", json={"query": "SHOW TABLES", "format": "tsv"})
    assert "api_keys" not in listed.text and "metrics" in listed.text


def test_the_tables_analysts_may_read_are_the_cluster_profiles_grants() -> None:
    from api.sql_policy import ANALYST_TABLES

    root = Path(__file__).resolve().parent.parent
    grants = (root / "infra" / "cluster" / "clickhouse" / "initdb" / "10-analyst.sql").read_text()
    granted = set(re.findall(r"GRANT SELECT ON agentwatch\.(\w+) TO agentwatch_analyst", grants))
    assert granted == ANALYST_TABLES


def test_a_quadratic_string_distance_is_refused(api: TestClient) -> None:
    """Found by an attacker: editDistance of two 65,000-character strings ran past the time
    limit in one block (ClickHouse checks the limit between blocks), holding the SQL slot
    and a core for as long as the attacker chose."""
    for function in ("editDistance", "damerauLevenshteinDistance", "jaroWinklerSimilarity"):
        query = f"SELECT {function}(repeat('a', 65000), repeat('b', 65000))"
        response = api.post("/api/v1/sql", json={"query": query})
        assert response.status_code == 403, (function, response.text)


def test_what_runs_is_clickhouses_own_reading_of_the_query(
    fleet_db: Client, engine: str, tmp_path: Path
) -> None:
    """Comments gone, quoting canonical: the text the second check saw is the text that runs."""
    client = open_read_only_client(sandbox_settings(engine, tmp_path))
    try:
        checked = prepare(client, "select /* why */ `agent_id` -- me\nfrom metrics;", DB)
        ternary = prepare(client, "SELECT 1 ? 'yes' : 'no'", DB)  # ClickHouse's if(), checked
    finally:
        client.close()
    assert checked.sql == "SELECT * FROM (SELECT agent_id FROM metrics)"
    assert ternary.sql == "SELECT * FROM (SELECT if(1, 'yes', 'no'))"


# --- the allowlist against everything ClickHouse knows -----------------------------------


@pytest.fixture(scope="module")
def clickhouse_functions(fleet_db: Client) -> list[tuple[str, str, str]]:
    """(name, category, alias of) of every function this chDB knows."""
    rows = fleet_db.query("SELECT name, categories, alias_to FROM system.functions").result_rows
    return [(name, categories, alias) for name, categories, alias in rows]


def test_every_function_clickhouse_knows_is_refused_unless_allowlisted(
    clickhouse_functions: list[tuple[str, str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="sqlglot")
    passed_unlisted = []
    for name, _, alias in clickhouse_functions:
        allowed = function_allowed(name) or (alias and function_allowed(alias))
        for args in ("", "1", "x, 'y'"):
            try:
                check_query(f"SELECT {name}({args})", DB)
            except SqlRefused:
                continue
            if not allowed:
                passed_unlisted.append(f"{name}({args})")
    assert passed_unlisted == []


def test_no_allowlisted_function_is_dangerous_or_a_typo(
    clickhouse_functions: list[tuple[str, str, str]],
) -> None:
    known = {name.lower(): (categories, alias) for name, categories, alias in clickhouse_functions}
    allowlist = SCALAR_FUNCTIONS | AGGREGATE_FUNCTIONS | WINDOW_FUNCTIONS
    assert sorted(name for name in allowlist if name not in known) == []
    forbidden = ("Dictionary", "Introspection", "Internal", "AI", "Machine Learning", "Encryption")
    dangerous = [
        (name, known[name][0])
        for name in allowlist
        if any(category in known[name][0] for category in forbidden)
    ]
    assert dangerous == []
    for name in TYPED_FUNCTIONS.values():
        assert function_allowed(name), name


def test_every_table_function_is_refused_wherever_it_stands(fleet_db: Client) -> None:
    names = [
        row[0] for row in fleet_db.query("SELECT name FROM system.table_functions").result_rows
    ]
    assert {"file", "url", "s3", "remote", "numbers", "python"} <= set(names)
    passed = []
    for name in names:
        for args in ("", "'x'", "x, 1", "'a', 'b', 'c'"):
            for query in (
                f"SELECT * FROM {name}({args})",
                f"SELECT * FROM metrics, {name}({args})",
                f"SELECT 1 FROM metrics JOIN {name}({args}) AS t ON 1",
                f"WITH w AS (SELECT * FROM {name}({args})) SELECT * FROM w",
            ):
                try:
                    check_query(query, DB)
                    passed.append(query)
                except SqlRefused:
                    pass
    assert passed == []


# --- each of ClickHouse's limits bites --------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "query", "setting"),
    [
        (
            {"api_sql_max_memory_bytes": 64 * 2**20},
            "SELECT length(groupArray(x)) FROM (SELECT arrayJoin(range(20000000)) AS x)",
            "AGENTWATCH_API_SQL_MAX_MEMORY_BYTES",
        ),
        (
            {"api_sql_max_rows_to_read": 2},
            "SELECT sum(cpu_usage) FROM metrics",
            "AGENTWATCH_API_SQL_MAX_ROWS_TO_READ",
        ),
        (
            {"api_sql_max_bytes_to_read": 16},
            "SELECT sum(cpu_usage) FROM metrics",
            "AGENTWATCH_API_SQL_MAX_BYTES_TO_READ",
        ),
        (
            {"api_sql_max_execution_time_s": 0.5},
            "SELECT count() FROM (SELECT arrayJoin(range(200000)) AS a) AS l "
            "CROSS JOIN (SELECT arrayJoin(range(100000)) AS b) AS r WHERE (a * b) % 7 = 3",
            "AGENTWATCH_API_SQL_MAX_EXECUTION_TIME_S",
        ),
        (
            {"api_sql_max_result_rows": 3},
            "SELECT agent_id FROM metrics",
            "AGENTWATCH_API_SQL_MAX_RESULT_ROWS",
        ),
        (
            {"api_sql_max_result_rows": 3},
            "SELECT arrayJoin(range(5000))",  # no FROM: ClickHouse alone would not cap it
            "AGENTWATCH_API_SQL_MAX_RESULT_ROWS",
        ),
        (
            {"api_sql_max_result_bytes": 2**20},
            "SELECT range(1000000)",  # one row of 4 MB: the row cap alone would let it by
            "_MAX_RESULT_BYTES",
        ),
    ],
    ids=["memory", "rows-read", "bytes-read", "time", "result-rows", "no-from", "result-bytes"],
)
def test_each_limit_stops_a_query_with_a_400_that_names_the_setting(
    fleet_db: Client, engine: str, tmp_path: Path, overrides: dict, query: str, setting: str
) -> None:
    settings = sandbox_settings(engine, tmp_path, **overrides)
    with TestClient(
        create_app(settings, client=fleet_db, run_loader=False), client=LOOPBACK_CLIENT
    ) as api:
        started = time.monotonic()
        response = api.post("/api/v1/sql", json={"query": query})
        took = time.monotonic() - started
        assert response.status_code == 400, response.text[:500]
        assert setting in response.json()["detail"]
        assert took < settings.api_sql_max_execution_time_s + 2.0
        fine = api.post("/api/v1/sql", json={"query": "SELECT 1"})
        assert fine.status_code == 200  # the session goes on


def test_threads_and_every_limit_are_in_force_and_cannot_be_lifted(
    fleet_db: Client, engine: str, tmp_path: Path
) -> None:
    """The session's own settings, read back on the engine side (trusted SQL, not the policy)."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from api.sql import open_read_only_client, read_only_settings

    settings = sandbox_settings(engine, tmp_path)
    client = open_read_only_client(settings)
    try:
        wanted = read_only_settings(settings)
        names = ", ".join(f"'{name}'" for name in wanted)
        got = dict(
            client.query(
                f"SELECT name, value FROM system.settings WHERE name IN ({names})"
            ).result_rows
        )
        assert got == wanted
        for name in ("max_threads", "max_memory_usage", "max_execution_time", "readonly"):
            with pytest.raises(DatabaseError) as refused:
                client.command(f"SET {name} = 0")
            assert refused.value.code == 164  # READONLY
    finally:
        client.close()


def test_more_queries_than_allowed_at_once_get_429_and_the_slot_comes_back(
    fleet_db: Client, engine: str, tmp_path: Path
) -> None:
    settings = sandbox_settings(
        engine, tmp_path, api_sql_max_concurrent_queries=1, api_sql_max_execution_time_s=1.5
    )
    slow = (
        "SELECT count() FROM (SELECT arrayJoin(range(200000)) AS a) AS l "
        "CROSS JOIN (SELECT arrayJoin(range(100000)) AS b) AS r WHERE (a * b) % 7 = 3"
    )
    with TestClient(
        create_app(settings, client=fleet_db, run_loader=False), client=LOOPBACK_CLIENT
    ) as api:
        answers: list[httpx.Response] = []
        first = threading.Thread(
            target=lambda: answers.append(api.post("/api/v1/sql", json={"query": slow}))
        )
        first.start()
        # the first query holds the one slot for ~1.5 s once it has it: the second is sent
        # when it has (after a fixed 0.3 s, a slow machine had not yet taken it)
        slots = api.app.state.runtime.sql_sandbox._slots
        wait_until(lambda: slots._value == 0, 30, "the first query to take the slot")
        second = api.post("/api/v1/sql", json={"query": "SELECT 1"})
        first.join(10)
        assert second.status_code == 429, second.text
        assert second.headers["retry-after"] == "1"
        assert "AGENTWATCH_API_SQL_MAX_CONCURRENT_QUERIES" in second.json()["detail"]
        assert answers[0].status_code == 400  # stopped by its time limit
        assert api.post("/api/v1/sql", json={"query": "SELECT 1"}).status_code == 200


class _StuckSandbox(SqlSandbox):
    """A sandbox whose engine never answers (the gate's logic alone)."""

    def __init__(self, settings: Settings, release: threading.Event) -> None:
        super().__init__(settings)
        self.release = release

    def _check_and_run(self, text: str) -> None:
        self.release.wait(10)
        raise SqlRefused(400, "stopped")


def test_a_request_waits_at_most_the_time_limit_plus_grace_then_504(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path,
        api_sql_max_execution_time_s=0.2,
        api_sql_request_grace_s=0.2,
        api_sql_max_concurrent_queries=1,
    )
    release = threading.Event()
    sandbox = _StuckSandbox(settings, release)
    try:
        started = time.monotonic()
        with pytest.raises(SqlRefused) as late:
            sandbox.run("SELECT 1")
        assert late.value.status == 504 and 0.4 <= time.monotonic() - started < 1.5
        with pytest.raises(SqlRefused) as busy:  # the stuck query still holds the slot
            sandbox.run("SELECT 1")
        assert busy.value.status == 429
        release.set()

        def slot_back() -> bool:
            try:
                sandbox.run("SELECT 1")
            except SqlRefused as refused:
                return refused.status == 400  # ran (and "stopped"), not 429
            return False

        wait_until(slot_back, 5, "the slot to come back")
    finally:
        release.set()
        sandbox.close()


# --- heavy queries while heartbeats stream into the loader ------------------------------

HEAVY = [
    "SELECT groupArray(number) FROM numbers(200000000)",  # the issue's: 403 at once
    "SELECT length(groupArray(x)) FROM (SELECT arrayJoin(range(200000000)) AS x)",  # memory
    "SELECT count() FROM (SELECT arrayJoin(range(200000)) AS a) AS l "  # time, one core
    "CROSS JOIN (SELECT arrayJoin(range(100000)) AS b) AS r WHERE (a * b) % 7 = 3",
    "SELECT arrayMap(x -> repeat('x', 1000000), range(2000))",  # memory
    "SELECT range(100000000)",  # memory (or result bytes)
    "SELECT count() FROM metrics AS a, metrics AS b, metrics AS c, metrics AS d",  # time
    "SELECT `file`('/etc/hostname', 'LineAsString')",  # the file-read: 403
]


T0 = float(int(time.time()) - 7200)  # recent: the tables' TTL keeps the rows


def _heartbeat(seq: int) -> bytes:
    return orjson.dumps(
        {
            "agent_id": f"agent-{seq % 200:04d}",
            "tenant_id": "t1",
            "timestamp": T0 + seq / 100,
            "cpu_usage": 10.0 + seq % 80,
            "memory_usage": 40.0,
            "disk_usage": 30.0,
            "network_latency": 12.5,
            "active_tasks": 1,
            "completed_tasks": seq,
            "failed_tasks": 0,
            "error_rate": 0.01,
            "response_time_avg": 200.0,
            "uptime_seconds": 100.0 + seq,
            "bytes_out": 10,
        }  # fmt: skip
    )


@pytest.mark.e2e
def test_heavy_queries_are_stopped_while_ingestion_and_health_go_on(
    settings: Settings, tmp_path: Path
) -> None:
    """`python -m api` with its loader; 1,000 heartbeats/s stream in while HEAVY runs."""
    ensure_topics(settings)
    port = free_port()
    time_limit = 4.0
    env = {
        **os.environ,
        **settings.as_env(),
        "AGENTWATCH_API_PORT": str(port),
        "AGENTWATCH_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'api-chdb'}",  # the API's own
        "AGENTWATCH_API_SQL_ENABLED": "true",
        "AGENTWATCH_API_SQL_MAX_EXECUTION_TIME_S": str(time_limit),
    }
    base = f"http://127.0.0.1:{port}/api/v1"
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "api"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    stop = threading.Event()
    produced = [0]
    health_samples: list[tuple[float, float, int, int]] = []  # (t, latency, rows, lag)

    def produce() -> None:  # 1,000 heartbeats/s in batches of 100, as the dataflow hands
        # them to the loader (Arrow batches on agents.metric_rows; no dataflow runs here)
        producer = Producer({**settings.kafka_config(), "linger.ms": 20})
        next_at = time.monotonic()
        while not stop.is_set():
            beats = [_heartbeat(seq) for seq in range(produced[0], produced[0] + 100)]
            for rows in encode_json(beats):
                producer.produce(settings.topic("metric_rows"), rows, key=b"0")
            produced[0] += len(beats)
            producer.poll(0)
            next_at += 0.1
            time.sleep(max(0.0, next_at - time.monotonic()))
        producer.flush(10)

    def watch_health() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                body = httpx.get(f"{base}/system/health", timeout=10).json()
                loader = body["loader"]
                rows, lag = loader["rows_inserted"].get("metric_rows", 0), loader["lag_total"] or 0
            except (httpx.HTTPError, ValueError, KeyError):
                rows, lag = -1, -1
            health_samples.append((started, time.monotonic() - started, rows, lag))
            time.sleep(0.25)

    try:

        def answers() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{base}/system/health", timeout=2).is_success
            except httpx.TransportError:
                return False

        wait_until(answers, 60, "python -m api to answer")
        threads = [threading.Thread(target=produce), threading.Thread(target=watch_health)]
        for thread in threads:
            thread.start()
        # ingestion under way before the first heavy query: rows have landed
        wait_until(lambda: health_samples and health_samples[-1][2] > 0, 30, "rows landing")
        heavy_started = time.monotonic()
        outcomes = []
        for query in HEAVY:
            started = time.monotonic()
            response = httpx.post(f"{base}/sql", json={"query": query}, timeout=60)
            took = time.monotonic() - started
            detail = response.json().get("detail", "")
            outcomes.append((query[:60], response.status_code, round(took, 2), detail[:90]))
            assert response.status_code in (400, 403), (query, response.text)
            assert took < time_limit + 3.0, (query, took)
            assert_no_host_data(response.text)
        heavy_ended = time.monotonic()
        stop.set()
        for thread in threads:
            thread.join(20)
        assert process.poll() is None, "the API died:\n" + log_path.read_text()[-3000:]

        def all_landed() -> int | None:
            body = httpx.get(f"{base}/system/health", timeout=5).json()
            rows = body["loader"]["rows_inserted"].get("metric_rows", 0)
            return rows if rows >= produced[0] else None

        wait_until(all_landed, 30, f"all {produced[0]} heartbeats to land")
    finally:
        stop.set()
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    during = [s for s in health_samples if heavy_started <= s[0] <= heavy_ended]
    latencies = [latency for _, latency, _, _ in during]
    assert len(during) >= 10 and all(rows >= 0 for _, _, rows, _ in during)
    # Health answers throughout; rows keep landing: no 5 s without progress while heavy
    # queries run, and the loader's lag stays far below what streamed in meanwhile.
    assert max(latencies) < 2.0, sorted(latencies)[-5:]
    stalls = [b[0] - a[0] for a, b in zip(during, during[1:], strict=False) if b[2] == a[2]]
    progress_times = [s[0] for s in during if s[2] > during[0][2]]
    gaps = [b - a for a, b in zip([heavy_started, *progress_times], progress_times, strict=False)]
    assert max(gaps, default=0.0) < 5.0, gaps
    max_lag = max(lag for _, _, _, lag in during)
    assert max_lag < 5_000, max_lag
    report = {
        "outcomes": outcomes,
        "heavy_window_s": round(heavy_ended - heavy_started, 1),
        "health_latency_s": {
            "median": round(statistics.median(latencies), 3),
            "max": round(max(latencies), 3),
        },
        "loader_lag_max_messages": max_lag,
        "longest_gap_without_new_rows_s": round(max(gaps, default=0.0), 2),
        "stall_samples": len(stalls),
        "heartbeats_produced": produced[0],
    }
    print("heavy-query figures:", orjson.dumps(report).decode())


# --- the cluster profile's ClickHouse users: ClickHouse's own parser reads every statement ---

CLUSTER_SQL = Path(__file__).resolve().parents[1] / "infra" / "cluster" / "clickhouse"


def statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def assert_clickhouse_parses(client: Client, sql: str) -> list[str]:
    """Each statement formatted by ClickHouse's parser (chDB cannot run access DDL: no
    access storage is writable there; the statements are checked, not executed)."""
    formatted = []
    for statement in statements(sql):
        formatted.append(
            client.query(
                "SELECT formatQuerySingleLine({q:String})", parameters={"q": statement}
            ).result_rows[0][0]
        )
    return formatted


def captured_client_input(script: list[str], tmp_path: Path, env: dict[str, str]) -> str:
    """Run a shell script with a stand-in `clickhouse` that records what it was sent."""
    stub = tmp_path / "bin" / "clickhouse"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f'#!/bin/sh\ncat > "{tmp_path}/sent.sql"\necho "$@" > "{tmp_path}/args"\n')
    stub.chmod(0o755)
    path = f"{stub.parent}:{os.environ['PATH']}"
    done = subprocess.run(
        ["sh", *script], env={"PATH": path, **env}, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return (tmp_path / "sent.sql").read_text()


def test_the_analyst_roles_profile_quota_and_policies_parse_in_clickhouse(
    fleet_db: Client,
) -> None:
    sql = (CLUSTER_SQL / "initdb" / "10-analyst.sql").read_text()
    formatted = assert_clickhouse_parses(fleet_db, sql)
    text = "\n".join(formatted)
    assert "readonly = 2" in text and "max_memory_usage = 1073741824" in text
    grants = [f for f in formatted if f.startswith("GRANT SELECT")]
    assert all(" ON agentwatch." in grant for grant in grants) and len(grants) == 19
    for forbidden in ("SOURCES", "FILE", "URL", "S3", "REMOTE", "ALL ON", "dictGet"):
        assert not any(forbidden in grant for grant in formatted if grant.startswith("GRANT"))
    policy = next(f for f in formatted if f.startswith("CREATE ROW POLICY"))
    assert "USING 1 TO agentwatch, agentwatch_analyst_fleet" in policy
    # (not default: the compose file's CLICKHOUSE_USER removes that user, and a TO list
    # naming a user that does not exist fails the init script: no analyst user was made)
    compose = yaml.safe_load((CLUSTER_SQL.parent / "docker-compose.yml").read_text())
    assert compose["services"]["clickhouse"]["environment"]["CLICKHOUSE_USER"] != "default"
    assert " default" not in policy.split(" TO ", 1)[1]


@pytest.mark.e2e  # runs the init shell scripts
def test_the_analyst_users_take_their_password_from_the_environment(
    fleet_db: Client, tmp_path: Path
) -> None:
    password = "s3cret-'quote\"-" + uuid.uuid4().hex
    sent = captured_client_input(
        [str(CLUSTER_SQL / "initdb" / "20-analyst-user.sh")],
        tmp_path,
        {"AGENTWATCH_ANALYST_PASSWORD": password},
    )
    assert password not in sent  # only its SHA-256
    formatted = assert_clickhouse_parses(fleet_db, sent)
    assert formatted[0].startswith("CREATE USER IF NOT EXISTS analyst IDENTIFIED WITH sha256_hash")
    assert "DEFAULT ROLE agentwatch_analyst_fleet" in formatted[0]

    tenant = captured_client_input(
        [str(CLUSTER_SQL / "add-tenant-analyst.sh"), "tenant-1", "alice", "--host", "ch"],
        tmp_path,
        {"AGENTWATCH_TENANT_ANALYST_PASSWORD": password},
    )
    assert password not in tenant
    formatted = assert_clickhouse_parses(fleet_db, tenant)
    assert "USING tenant_id = 'tenant-1' TO `agentwatch_tenant_tenant-1`" in formatted[1]
    assert "DEFAULT ROLE agentwatch_analyst, `agentwatch_tenant_tenant-1`" in formatted[2]
    assert (tmp_path / "args").read_text().split() == ["client", "--multiquery", "--host", "ch"]


@pytest.mark.e2e  # runs the tenant script
def test_a_tenant_name_that_could_inject_sql_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        ["sh", str(CLUSTER_SQL / "add-tenant-analyst.sh"), "t1' OR 1 --", "alice"],
        env={"PATH": os.environ["PATH"], "AGENTWATCH_TENANT_ANALYST_PASSWORD": "x"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "bad name" in done.stderr
