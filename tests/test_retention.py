"""Retention (issue 14, Deliver 4): a TTL per kind of table, set by settings, applied to
tables made under other settings; the audit trail never expires; recovery snapshots
are pruned by Bytewax after recovery_backup_interval_s."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from agentwatch.settings import Settings
from dataflows.heartbeats import recovery_config
from sinks.clickhouse import RETENTION, apply_retention, connect, create_schema
from tests.conftest import wait_until


def ttl_days(client, settings: Settings) -> dict[str, str]:
    """table → its TTL clause ('' when none), from ClickHouse itself."""
    rows = client.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = {db:String}",
        parameters={"db": settings.clickhouse_database},
    ).result_rows
    return {name: query.partition(" TTL ")[2].split(" SETTINGS")[0] for name, query in rows}


def test_raw_findings_and_audit_keep_rows_as_long_as_their_settings_say(make_settings, chdb_dir):
    settings = make_settings(
        clickhouse_dsn=f"chdb://{chdb_dir}",
        clickhouse_metrics_ttl_days=14,
        clickhouse_findings_ttl_days=180,
    )
    client = connect(settings)
    try:
        create_schema(client, settings)
        ttls = ttl_days(client, settings)
        assert "toIntervalDay(14)" in ttls["metrics"] and "toIntervalDay(14)" in ttls["deadletter"]
        for table, (kind, _column) in RETENTION.items():
            assert f"toIntervalDay({14 if kind == 'raw' else 180})" in ttls[table], table
        assert ttls["audit_log"] == ""  # never shortened
        assert ttls["loader_offsets"] == ""

        db = settings.clickhouse_database
        old = datetime.now(UTC) - timedelta(days=10)
        client.command(
            f"INSERT INTO {db}.metrics (agent_id, tenant_id, timestamp) VALUES "
            f"('old', 't', '{old:%Y-%m-%d %H:%M:%S}'), ('new', 't', now())"
        )
        assert client.command(f"SELECT count() FROM {db}.metrics") == 2

        # the operator shortens raw retention to 7 days: the next start alters the tables
        shorter = settings.model_copy(update={"clickhouse_metrics_ttl_days": 7})
        assert apply_retention(client, shorter) == ["metrics", "deadletter"]
        assert "toIntervalDay(7)" in ttl_days(client, shorter)["metrics"]
        assert "toIntervalDay(180)" in ttl_days(client, shorter)["threats"]
        wait_until(
            lambda: client.query(f"SELECT agent_id FROM {db}.metrics").result_rows == [("new",)],
            30,
            "the 10-day-old heartbeat to expire under a 7-day TTL",
        )
        assert apply_retention(client, shorter) == []  # nothing left to do
    finally:
        client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
        client.close()


def test_without_migrations_a_different_ttl_is_only_reported(make_settings, chdb_dir, caplog):
    settings = make_settings(clickhouse_dsn=f"chdb://{chdb_dir}")
    client = connect(settings)
    try:
        create_schema(client, settings)
        frozen = settings.model_copy(
            update={"clickhouse_findings_ttl_days": 30, "clickhouse_migrate": False}
        )
        with caplog.at_level(logging.WARNING, logger="sinks.clickhouse"):
            assert apply_retention(client, frozen) == []
        assert "retention_differs table=anomalies" in caplog.text
        assert "AGENTWATCH_CLICKHOUSE_MIGRATE=true" in caplog.text
        assert "toIntervalDay(90)" in ttl_days(client, settings)["anomalies"]
    finally:
        client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
        client.close()


def test_recovery_snapshots_are_pruned_after_the_backup_interval(tmp_path):
    settings = Settings(var_dir=tmp_path, recovery_backup_interval_s=120)
    assert recovery_config(settings).backup_interval == timedelta(seconds=120)
    assert recovery_config(Settings(var_dir=tmp_path)).backup_interval == timedelta(0)
