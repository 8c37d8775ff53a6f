#!/bin/sh
# The fleet-wide analyst user `analyst` (role agentwatch_analyst_fleet, see 10-analyst.sql),
# with the password from AGENTWATCH_ANALYST_PASSWORD: never written to a file. The
# ClickHouse image runs this once, on first start, from /docker-entrypoint-initdb.d.
set -eu
if [ -z "${AGENTWATCH_ANALYST_PASSWORD:-}" ]; then
    echo "agentwatch: AGENTWATCH_ANALYST_PASSWORD is not set; no analyst user created" >&2
    exit 0
fi
hash=$(printf '%s' "$AGENTWATCH_ANALYST_PASSWORD" | sha256sum | cut -d' ' -f1)
clickhouse client --user "${CLICKHOUSE_USER:-default}" --password "${CLICKHOUSE_PASSWORD:-}" \
    --multiquery <<SQL
CREATE USER IF NOT EXISTS analyst IDENTIFIED WITH sha256_hash BY '$hash'
    DEFAULT ROLE agentwatch_analyst_fleet DEFAULT DATABASE agentwatch;
GRANT agentwatch_analyst_fleet TO analyst;
SQL
