#!/bin/sh
# Give one tenant's analyst a ClickHouse user that sees only that tenant's rows.
#
#   AGENTWATCH_TENANT_ANALYST_PASSWORD=… infra/cluster/clickhouse/add-tenant-analyst.sh \
#       tenant-1 alice [clickhouse client options, e.g. --host clickhouse --password …]
#
# Creates role `agentwatch_tenant_<tenant>` with a row policy `tenant_id = '<tenant>'` on
# every tenant table, and user <user> with roles agentwatch_analyst + that tenant role
# (docs/sql.md). Safe to run again. Tenant and user names: letters, digits, _ . -
set -eu
tenant=${1:?usage: add-tenant-analyst.sh TENANT USER [clickhouse client options]}
user=${2:?usage: add-tenant-analyst.sh TENANT USER [clickhouse client options]}
shift 2
for name in "$tenant" "$user"; do
    case $name in
        *[!A-Za-z0-9_.-]* | "") echo "add-tenant-analyst: bad name '$name'" >&2; exit 2 ;;
    esac
done
: "${AGENTWATCH_TENANT_ANALYST_PASSWORD:?set AGENTWATCH_TENANT_ANALYST_PASSWORD}"
role="\`agentwatch_tenant_$tenant\`"
hash=$(printf '%s' "$AGENTWATCH_TENANT_ANALYST_PASSWORD" | sha256sum | cut -d' ' -f1)
clickhouse client --multiquery "$@" <<SQL
CREATE ROLE IF NOT EXISTS $role;
CREATE ROW POLICY OR REPLACE $role ON agentwatch.metrics, agentwatch.anomalies,
    agentwatch.threats, agentwatch.baselines, agentwatch.alerts, agentwatch.security_scores,
    agentwatch.commands, agentwatch.incidents, agentwatch.agent_events, agentwatch.silences
    AS PERMISSIVE FOR SELECT USING tenant_id = '$tenant' TO $role;
CREATE USER IF NOT EXISTS \`$user\` IDENTIFIED WITH sha256_hash BY '$hash'
    DEFAULT ROLE agentwatch_analyst, $role DEFAULT DATABASE agentwatch;
GRANT agentwatch_analyst, $role TO \`$user\`;
SQL
