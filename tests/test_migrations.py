"""Versioned schema migrations against chDB: a database of the release before them is
brought to today's layout with every row kept, once; an interrupted rebuild finishes on
the next start; a fresh database is created at today's layout and marked current."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from clickhouse_connect.driver.client import Client

from agentwatch.settings import Settings
from sinks.clickhouse import MIGRATIONS, TENANT_TABLES, connect, create_schema, schema_statements
from sinks.migrations import (
    MIGRATIONS_TABLE,
    REBUILD_SUFFIX,
    Migration,
    SchemaNotCurrent,
    apply_migrations,
    create_statement,
)
from tests.release_6c57025_schema import RELEASE_6C57025_TABLES

#: Today's sort keys of the tables read per tenant, as system.tables writes them.
TENANT_FIRST_KEYS = {
    "metrics": "tenant_id, agent_id, timestamp",
    "anomalies": "tenant_id, agent_id, timestamp",
    "threats": "tenant_id, agent_id, first_seen, rule",
    "baselines": "tenant_id, agent_id",
    "alerts": "tenant_id, agent_id, fingerprint, updated_at, state",
    "security_scores": "tenant_id, agent_id, timestamp, cause",
    "commands": "tenant_id, agent_id, command_id",
    "agent_events": "tenant_id, agent_id, timestamp, type",
    "incidents": "tenant_id, incident_id",
}
ROWS_PER_TABLE = 300  # 6 hours apart: 75 days, 3 or 4 monthly partitions, within the TTL
#: The newest row's time: the same in every insert (the same rows twice are duplicates).
ANCHOR = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture
def old_database(settings: Settings) -> Iterator[tuple[Client, Settings]]:
    """A database made by the release before migrations, with rows in every table."""
    db = settings.clickhouse_database
    client = connect(settings)
    client.command(f"CREATE DATABASE {db}")
    for statement in RELEASE_6C57025_TABLES:
        client.command(statement.replace("__DB__", db))
    for table in tables(client, db):
        fill(client, db, table)
    try:
        yield client, settings
    finally:
        client.command(f"DROP DATABASE IF EXISTS {db}")
        client.close()


def fill(client: Client, db: str, table: str) -> None:
    """``ROWS_PER_TABLE`` rows, each of its own identity (every sort key distinct), agents
    each of one tenant, timestamps spread over months (several partitions)."""
    columns = client.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} "
        "AND table = {table:String} AND default_kind NOT IN ('MATERIALIZED', 'ALIAS')",
        parameters={"db": db, "table": table},
    ).result_rows
    rows = 50 if table == "baselines" else ROWS_PER_TABLE  # one baseline per agent
    expressions = [value_of(name, kind) for name, kind in columns]
    client.command(
        f"INSERT INTO {db}.{table} ({', '.join(name for name, _ in columns)}) "
        f"SELECT {', '.join(expressions)} FROM numbers({rows})"
    )


def value_of(name: str, kind: str) -> str:
    """A SQL expression of ``number`` for a column."""
    if name == "agent_id":
        return "concat('agent-', toString(number % 50))"
    if name == "tenant_id":
        return "concat('tenant-', toString(number % 50 % 3))"  # one tenant per agent
    base = kind.removeprefix("Nullable(").removeprefix("LowCardinality(").rstrip(")")
    if base.startswith("DateTime64"):
        return f"toDateTime64('{ANCHOR}', 3, 'UTC') - toIntervalSecond(number * 21600)"
    if base.startswith("Map("):
        return "map('cpu_usage', toFloat64(number))"
    if base.startswith("Array("):
        return "[concat('agent-', toString(number))]"
    if base == "String":
        return f"concat('{name}-', toString(number))"
    if base == "Bool":
        return "number % 2 = 1"
    return f"to{base}(number)"  # UInt32, UInt64, Int64, Float64


def tables(client: Client, db: str) -> list[str]:
    return [
        name
        for (name,) in client.query(
            "SELECT name FROM system.tables WHERE database = {db:String} ORDER BY name",
            parameters={"db": db},
        ).result_rows
    ]


def sorting_keys(client: Client, db: str) -> dict[str, str]:
    return dict(
        client.query(
            "SELECT name, sorting_key FROM system.tables WHERE database = {db:String}",
            parameters={"db": db},
        ).result_rows
    )


#: Columns added by migrations after the tenant-first rebuild (version 4 on).
ADDED_COLUMNS = {
    ("commands", "task_id"),
    ("anomalies", "episode_start"),
    ("anomalies", "episode_end"),
}


def fingerprints(client: Client, db: str, names: list[str]) -> dict[str, tuple[int, int]]:
    """(rows, a checksum of every stored column's values) per table; a column added by a
    later migration (NULL in every old row) is left out, so the old values compare."""
    found = {}
    for table in names:
        columns = [
            f"`{name}`"
            for (name,) in client.query(
                "SELECT name FROM system.columns WHERE database = {db:String} "
                "AND table = {table:String} ORDER BY name",
                parameters={"db": db, "table": table},
            ).result_rows
            if (table, name) not in ADDED_COLUMNS
        ]
        found[table] = client.query(
            f"SELECT count(), sum(cityHash64({', '.join(columns)})) FROM {db}.{table}"
        ).result_rows[0]
    return found


def recorded(client: Client, db: str) -> list[tuple[int, str, str]]:
    return client.query(
        f"SELECT version, name, checksum FROM {db}.{MIGRATIONS_TABLE} ORDER BY version"
    ).result_rows


def expected_records() -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.checksum) for m in MIGRATIONS]


def test_the_release_before_migrations_is_brought_to_tenant_first_keys(old_database, caplog):
    client, settings = old_database
    db = settings.clickhouse_database
    before_tables = tables(client, db)
    before = fingerprints(client, db, before_tables)
    assert {table: rows for table, (rows, _) in before.items()} == {
        table: 50 if table == "baselines" else ROWS_PER_TABLE for table in before_tables
    }

    with caplog.at_level(logging.INFO, logger="sinks.migrations"):
        create_schema(client, settings)

    keys = sorting_keys(client, db)
    assert {table: keys[table] for table in TENANT_FIRST_KEYS} == TENANT_FIRST_KEYS
    assert fingerprints(client, db, before_tables) == before  # every row, every value
    # new tables: created, nothing to migrate
    added_since = {
        "agents",
        "agent_registry",
        "assignment_scores",
        "assignment_scores_latest",
        "tasks",
    }
    assert set(tables(client, db)) == set(before_tables) | {MIGRATIONS_TABLE} | added_since
    assert recorded(client, db) == expected_records()
    rows_copied = client.query(
        f"SELECT rows_copied FROM {db}.{MIGRATIONS_TABLE} WHERE version = 3"
    ).result_rows[0][0]
    assert rows_copied == sum(before[table][0] for table in TENANT_TABLES)
    assert "schema_rebuild_progress table=" in caplog.text
    assert "schema_migration_applied" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sinks.migrations"):
        create_schema(client, settings)  # again: nothing to do
    assert "schema_migration_started" not in caplog.text
    assert recorded(client, db) == expected_records()
    assert fingerprints(client, db, before_tables) == before


def test_a_rebuild_interrupted_after_the_copy_finishes_on_the_next_start(old_database):
    """Three tables stopped at three points of a rebuild: part of the copy done (metrics),
    the whole copy done (anomalies), exchanged but the old layout not dropped (threats)."""
    client, settings = old_database
    db = settings.clickhouse_database
    before_tables = tables(client, db)
    before = fingerprints(client, db, before_tables)
    statements = schema_statements(settings)

    def staged(table: str) -> str:
        staging = f"{db}.{table}{REBUILD_SUFFIX}"
        client.command(
            create_statement(statements, table).replace(
                f"CREATE TABLE IF NOT EXISTS {db}.{table}", f"CREATE TABLE {staging}"
            )
        )
        return staging

    client.command(f"INSERT INTO {staged('metrics')} SELECT * FROM {db}.metrics LIMIT 100")
    # (the release's columns: today's layout has columns added since, NULL in old rows)
    old_columns = ", ".join(
        f"`{name}`"
        for (name,) in client.query(
            "SELECT name FROM system.columns WHERE database = {db:String} "
            "AND table = 'anomalies' ORDER BY position",
            parameters={"db": db},
        ).result_rows
    )
    client.command(
        f"INSERT INTO {staged('anomalies')} ({old_columns}) "
        f"SELECT {old_columns} FROM {db}.anomalies"
    )
    client.command(f"INSERT INTO {staged('threats')} SELECT * FROM {db}.threats")
    client.command(f"EXCHANGE TABLES {db}.threats AND {db}.threats{REBUILD_SUFFIX}")

    create_schema(client, settings)

    keys = sorting_keys(client, db)
    assert {table: keys[table] for table in TENANT_FIRST_KEYS} == TENANT_FIRST_KEYS
    assert fingerprints(client, db, before_tables) == before
    assert not [name for name in tables(client, db) if name.endswith(REBUILD_SUFFIX)]
    assert recorded(client, db) == expected_records()


def test_a_fresh_database_is_made_at_todays_layout_and_marked_current(settings, caplog):
    db = settings.clickhouse_database
    client = connect(settings)
    try:
        with caplog.at_level(logging.INFO, logger="sinks.migrations"):
            create_schema(client, settings)
        keys = sorting_keys(client, db)
        assert {table: keys[table] for table in TENANT_FIRST_KEYS} == TENANT_FIRST_KEYS
        assert recorded(client, db) == expected_records()
        assert "schema_created" in caplog.text
        assert "schema_rebuild_started" not in caplog.text
    finally:
        client.command(f"DROP DATABASE IF EXISTS {db}")
        client.close()


def test_a_process_that_may_not_migrate_refuses_a_database_with_one_pending(settings):
    db = settings.clickhouse_database
    client = connect(settings)
    try:
        with pytest.raises(SchemaNotCurrent, match="python -m sinks.clickhouse"):
            create_schema(client, settings.model_copy(update={"clickhouse_migrate": False}))
        create_schema(client, settings)
        create_schema(client, settings.model_copy(update={"clickhouse_migrate": False}))
        statements = schema_statements(settings)
        later = (*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "a_later_one"))
        with pytest.raises(SchemaNotCurrent, match=rf"\[{len(later)}\] pending"):
            apply_migrations(client, db, statements, later, migrate=False)
        assert apply_migrations(client, db, statements, later) == [len(later)]
        assert apply_migrations(client, db, statements, later) == []
    finally:
        client.command(f"DROP DATABASE IF EXISTS {db}")
        client.close()


def test_duplicates_not_merged_yet_and_rows_past_their_ttl_are_copied_as_stored(old_database):
    """The copy neither collapses duplicates nor drops expired rows (so its count check
    holds while merges would do either); once exchanged, they merge away as before."""
    client, settings = old_database
    db = settings.clickhouse_database
    client.command(f"SYSTEM STOP MERGES {db}.metrics")
    client.command(f"SYSTEM STOP TTL MERGES {db}.metrics")
    fill(client, db, "metrics")  # the same rows again: duplicates in another part
    client.command(
        f"INSERT INTO {db}.metrics (agent_id, tenant_id, timestamp) SELECT 'agent-1', "
        "'tenant-1', now64(3, 'UTC') - toIntervalDay(200 + number) FROM numbers(20)"
    )
    stored = client.query(f"SELECT count() FROM {db}.metrics").result_rows[0][0]
    assert stored == 2 * ROWS_PER_TABLE + 20
    live = (
        "SELECT count(), sum(cityHash64(agent_id, tenant_id, timestamp, cpu_usage)) "
        f"FROM {db}.metrics FINAL WHERE timestamp > now64(3, 'UTC') - toIntervalDay(80)"
    )
    identities = client.query(live).result_rows[0]
    assert identities[0] == ROWS_PER_TABLE

    create_schema(client, settings)

    copied = client.query(
        f"SELECT rows_copied FROM {db}.{MIGRATIONS_TABLE} WHERE version = 3"
    ).result_rows[0][0]
    others = 50 + ROWS_PER_TABLE * (len(TENANT_TABLES) - 2)  # baselines and the rest
    assert copied == stored + others
    assert sorting_keys(client, db)["metrics"] == TENANT_FIRST_KEYS["metrics"]
    assert client.query(live).result_rows[0] == identities
    client.command(f"OPTIMIZE TABLE {db}.metrics FINAL")  # merges run again on the new table
    assert client.query(f"SELECT count() FROM {db}.metrics").result_rows[0][0] == ROWS_PER_TABLE
