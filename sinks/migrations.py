"""Versioned schema migrations: how a database made by an earlier release reaches today's DDL.

``CREATE TABLE IF NOT EXISTS`` makes a missing table at today's layout, but leaves a table
made by an earlier release as it was. What changed since is a :class:`Migration` in the
ordered list ``sinks.clickhouse.MIGRATIONS``; the table ``schema_migrations`` records each
one applied (version, name, checksum of its definition, when, rows copied, seconds), so
each runs once per database. A migration is one of two kinds:

* :class:`AddColumn`: ``ALTER TABLE … ADD COLUMN`` when the table lacks the column (and,
  for a key column, ``MODIFY ORDER BY``, which may only append a column added by the same
  ``ALTER``).
* a rebuild (``rebuild=(table, …)``): ClickHouse cannot change a table's sort key other
  than by appending a new column, so a table whose sort key changes is rebuilt: today's
  DDL of the table is created as ``<table>__migrating``, the rows are copied partition by
  partition (``INSERT … SELECT``, progress logged), the counts are compared, and
  ``EXCHANGE TABLES`` swaps the two atomically; the old layout is then dropped.

Every step can be interrupted and run again. A rebuild starts by dropping any
``<table>__migrating`` left behind: before the exchange that is a partial copy (the table
still has its old layout and is copied again), after it the old layout (the table already
has the new key: nothing more to do). A migration is recorded only once all its steps are
done. A fresh database (none of its tables existed) is created at today's layout and
marked with every version without running any.

Rows are copied as they are (no ``FINAL``, ``optimize_on_insert = 0``, merges of both
tables stopped during the copy, so that the counts compare): a table's new sort key must
keep its identity (the same rows collapse in its ``ReplacingMergeTree`` as before), so
unmerged duplicates, and rows past their TTL not yet dropped, are copied and merge away
later, as they would have.

Writers must not write while a rebuild runs (rows written to the old table after its
partition was copied would be lost; the count check refuses the exchange then). Each
process runs :func:`apply_migrations` before it starts its loader; in the cluster profile
one job migrates (``python -m sinks.clickhouse``) and the others run with
``AGENTWATCH_CLICKHOUSE_MIGRATE=false``, which only checks that nothing is pending.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)

#: Where the versions applied to a database are recorded.
MIGRATIONS_TABLE = "schema_migrations"
#: A table being rebuilt is copied into ``<table>{REBUILD_SUFFIX}`` first.
REBUILD_SUFFIX = "__migrating"


@dataclass(frozen=True, slots=True)
class AddColumn:
    """A column added to ``table`` after it was first released: ``definition`` as in the
    table's DDL; ``order_by``, if set, the sort key that ends with the new column."""

    table: str
    definition: str
    order_by: str | None = None

    @property
    def column(self) -> str:
        """The column's name.

        >>> AddColumn("t", "channel LowCardinality(String) COMMENT 'x'").column
        'channel'
        """
        return self.definition.split(maxsplit=1)[0]

    def statement(self, database: str) -> str:
        """The ``ALTER`` that adds the column (safe to repeat).

        >>> AddColumn("t", "c UInt8", order_by="a, c").statement("db")
        'ALTER TABLE db.t ADD COLUMN IF NOT EXISTS c UInt8, MODIFY ORDER BY (a, c)'
        """
        alter = f"ALTER TABLE {database}.{self.table} ADD COLUMN IF NOT EXISTS {self.definition}"
        return alter if self.order_by is None else f"{alter}, MODIFY ORDER BY ({self.order_by})"


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned change of the schema: columns to add, then tables to rebuild at
    today's DDL (for a new sort key), in this order."""

    version: int
    name: str
    add_columns: tuple[AddColumn, ...] = ()
    rebuild: tuple[str, ...] = ()
    #: What the migration is for, recorded nowhere but read by whoever adds the next one.
    why: str = ""

    @property
    def checksum(self) -> str:
        """SHA-256 of the definition: a recorded version whose definition changed since is
        reported (a released migration is never edited; add a new one).

        >>> len(Migration(1, "x").checksum)
        64
        """
        text = repr((self.version, self.name, self.add_columns, self.rebuild))
        return hashlib.sha256(text.encode()).hexdigest()


class SchemaNotCurrent(RuntimeError):
    """The database has migrations pending and this process may not apply them."""


def check_order(migrations: Sequence[Migration]) -> None:
    """Refuse a list whose versions are not 1, 2, 3, … (a gap or a duplicate is a mistake).

    >>> check_order([Migration(1, "a"), Migration(3, "b")])
    Traceback (most recent call last):
    ...
    ValueError: migration versions must be 1..2 in order; got [1, 3]
    """
    versions = [migration.version for migration in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1..{len(versions)} in order; got {versions}")


def applied_versions(client: Client, database: str) -> dict[int, str]:
    """version → checksum of the migrations recorded in ``database`` (empty if none)."""
    if not _exists(client, database, MIGRATIONS_TABLE):
        return {}
    result = client.query(f"SELECT version, checksum FROM {database}.{MIGRATIONS_TABLE} FINAL")
    return dict(result.result_rows)


def apply_migrations(
    client: Client,
    database: str,
    statements: Sequence[str],
    migrations: Sequence[Migration],
    migrate: bool = True,
) -> list[int]:
    """Bring ``database`` to today's layout: run ``statements`` (``CREATE … IF NOT
    EXISTS`` of the database and every table, at today's layout), then every migration
    not yet recorded, in order; returns the versions applied.

    ``migrate=False`` runs nothing: it raises :class:`SchemaNotCurrent` if a migration
    is pending (another process migrates).
    """
    check_order(migrations)
    if not migrate:
        applied = applied_versions(client, database)
        pending = [m.version for m in migrations if m.version not in applied]
        if pending:
            raise SchemaNotCurrent(
                f"database {database!r} has schema migrations {pending} pending and this "
                "process runs with AGENTWATCH_CLICKHOUSE_MIGRATE=false: run "
                "`python -m sinks.clickhouse` once (or start one process with it true)"
            )
        return []
    fresh = not _tables(client, database)
    for statement in statements:
        client.command(statement)
    client.command(
        f"""
        CREATE TABLE IF NOT EXISTS {database}.{MIGRATIONS_TABLE} (
            version UInt32,
            name String,
            checksum String COMMENT 'SHA-256 of the migration''s definition',
            applied_at DateTime64(3, 'UTC'),
            rows_copied UInt64 COMMENT 'by its rebuilds; 0 when marked on a fresh database',
            seconds Float64
        )
        ENGINE = ReplacingMergeTree(applied_at)
        ORDER BY version
        """
    )
    applied = applied_versions(client, database)
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            log.warning(
                "schema_migration_changed version=%d name=%s: its definition differs from the "
                "one applied; a released migration must not be edited, add a new one",
                migration.version,
                migration.name,
            )
    pending = [migration for migration in migrations if migration.version not in applied]
    if fresh:  # created at today's layout just now: nothing to migrate
        for migration in pending:
            _record(client, database, migration, rows=0, seconds=0.0)
        if pending:
            log.info("schema_created database=%s version=%d", database, migrations[-1].version)
        return []
    done = []
    for migration in pending:
        started = time.perf_counter()
        log.info(
            "schema_migration_started database=%s version=%d name=%s",
            database,
            migration.version,
            migration.name,
        )
        rows = 0
        for column in migration.add_columns:
            if column.column not in _columns(client, database, column.table):
                client.command(column.statement(database))
        for table in migration.rebuild:
            rows += rebuild_table(client, database, table, create_statement(statements, table))
        seconds = time.perf_counter() - started
        _record(client, database, migration, rows=rows, seconds=seconds)
        log.info(
            "schema_migration_applied database=%s version=%d name=%s rows_copied=%d seconds=%.2f",
            database,
            migration.version,
            migration.name,
            rows,
            seconds,
        )
        done.append(migration.version)
    return done


def create_statement(statements: Sequence[str], table: str) -> str:
    """The ``CREATE TABLE`` of ``table`` among ``statements`` (raises if there is none).

    >>> create_statement(["CREATE TABLE IF NOT EXISTS db.t (a UInt8) ENGINE = Log"], "t")
    'CREATE TABLE IF NOT EXISTS db.t (a UInt8) ENGINE = Log'
    """
    pattern = re.compile(rf"CREATE TABLE IF NOT EXISTS \w+\.{re.escape(table)}\s*\(")
    found = [statement.strip() for statement in statements if pattern.search(statement)]
    if len(found) != 1:
        raise ValueError(f"expected one CREATE TABLE of {table!r}, found {len(found)}")
    return found[0]


def rebuild_table(client: Client, database: str, table: str, create: str) -> int:
    """Give ``table`` the layout of ``create`` (its ``CREATE TABLE IF NOT EXISTS``) if its
    sort or primary key differs; returns the rows copied (0: it had the layout already).

    Safe to run again after an interruption at any point (see the module's docstring).
    """
    staging = f"{table}{REBUILD_SUFFIX}"
    client.command(f"DROP TABLE IF EXISTS {database}.{staging} SYNC")  # a crash's leftover
    client.command(
        create.replace(
            f"CREATE TABLE IF NOT EXISTS {database}.{table}",
            f"CREATE TABLE {database}.{staging}",
            1,
        )
    )
    keys = _keys(client, database, (table, staging))
    if keys[table] == keys[staging]:
        client.command(f"DROP TABLE {database}.{staging} SYNC")
        return 0
    columns = ", ".join(_shared_columns(client, database, table, staging))
    partitions = client.query(
        "SELECT partition_id, sum(rows) FROM system.parts WHERE database = {db:String} "
        "AND table = {table:String} AND active GROUP BY partition_id ORDER BY partition_id",
        parameters={"db": database, "table": table},
    ).result_rows
    total = sum(rows for _, rows in partitions)
    log.info(
        "schema_rebuild_started table=%s.%s from=(%s) to=(%s) rows=%d partitions=%d",
        database,
        table,
        keys[table][0],
        keys[staging][0],
        total,
        len(partitions),
    )
    started = time.perf_counter()
    copied = 0
    # Rows as stored, so that the counts compare: no merges (they would collapse
    # duplicates, or drop rows past their TTL, in one table and not yet in the other) and
    # no collapsing of the duplicates an inserted block holds (optimize_on_insert).
    _merges(client, database, (table, staging), "STOP")
    try:
        for partition_id, rows in partitions:
            client.command(
                f"INSERT INTO {database}.{staging} ({columns}) SELECT {columns} "
                f"FROM {database}.{table} WHERE _partition_id = {{partition:String}}",
                parameters={"partition": partition_id},
                settings={"optimize_on_insert": 0},
            )
            copied += rows
            log.info(
                "schema_rebuild_progress table=%s.%s partition=%s rows=%d copied=%d/%d "
                "seconds=%.2f",
                database,
                table,
                partition_id,
                rows,
                copied,
                total,
                time.perf_counter() - started,
            )
        before, after = (_count(client, database, name) for name in (table, staging))
        if before != after:
            client.command(f"DROP TABLE {database}.{staging} SYNC")
            raise RuntimeError(
                f"rebuilding {database}.{table}: copied {after} rows of {before}, so the "
                "table changed during the copy (a loader, or another process migrating?); "
                "stop every writer and start again: the rebuild starts over"
            )
        client.command(f"EXCHANGE TABLES {database}.{table} AND {database}.{staging}")
    finally:
        _merges(client, database, (table,), "START")  # the new layout, once exchanged
    client.command(f"DROP TABLE {database}.{staging} SYNC")  # now the old layout
    log.info(
        "schema_rebuild_done table=%s.%s rows=%d seconds=%.2f",
        database,
        table,
        after,
        time.perf_counter() - started,
    )
    return after


def _record(client: Client, database: str, migration: Migration, rows: int, seconds: float):
    client.command(
        f"INSERT INTO {database}.{MIGRATIONS_TABLE} "
        "(version, name, checksum, applied_at, rows_copied, seconds) VALUES "
        "({version:UInt32}, {name:String}, {checksum:String}, now64(3), {rows:UInt64}, "
        "{seconds:Float64})",
        parameters={
            "version": migration.version,
            "name": migration.name,
            "checksum": migration.checksum,
            "rows": rows,
            "seconds": seconds,
        },
    )


def _tables(client: Client, database: str) -> set[str]:
    result = client.query(
        "SELECT name FROM system.tables WHERE database = {db:String}", parameters={"db": database}
    )
    return {name for (name,) in result.result_rows}


def _exists(client: Client, database: str, table: str) -> bool:
    return table in _tables(client, database)


def _columns(client: Client, database: str, table: str) -> set[str]:
    result = client.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {table:String}",
        parameters={"db": database, "table": table},
    )
    return {name for (name,) in result.result_rows}


def _keys(client: Client, database: str, tables: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    result = client.query(
        "SELECT name, sorting_key, primary_key FROM system.tables "
        "WHERE database = {db:String} AND name IN {tables:Array(String)}",
        parameters={"db": database, "tables": list(tables)},
    )
    return {name: (sorting, primary) for name, sorting, primary in result.result_rows}


def _shared_columns(client: Client, database: str, source: str, target: str) -> list[str]:
    """Columns of ``target`` that ``source`` has too and that take inserted values, in
    ``target``'s order (a column the source lacks gets its default)."""
    result = client.query(
        "SELECT table, name FROM system.columns WHERE database = {db:String} "
        "AND table IN {tables:Array(String)} AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') "
        "ORDER BY position",
        parameters={"db": database, "tables": [source, target]},
    )
    rows = result.result_rows
    present = {name for table, name in rows if table == source}
    return [f"`{name}`" for table, name in rows if table == target and name in present]


def _merges(client: Client, database: str, tables: tuple[str, ...], action: str) -> None:
    """``SYSTEM STOP``/``START`` the merges and TTL merges of ``tables`` (a lock held by
    this server process on the table itself: it moves with ``EXCHANGE`` and is gone after a
    restart)."""
    for table in tables:
        client.command(f"SYSTEM {action} MERGES {database}.{table}")
        client.command(f"SYSTEM {action} TTL MERGES {database}.{table}")


def _count(client: Client, database: str, table: str) -> int:
    return client.query(f"SELECT count() FROM {database}.{table}").result_rows[0][0]
