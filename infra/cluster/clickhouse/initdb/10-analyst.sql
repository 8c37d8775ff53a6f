-- agentwatch analysts on the cluster profile's ClickHouse server (docs/sql.md).
--
-- Who may read what, decided by ClickHouse itself: analysts get SELECT on the
-- agentwatch tables and nothing else (no SOURCES: no file(), url(), s3(), remote(),
-- mysql()…; no dictionaries, no system tables beyond what every user sees, no DDL),
-- a settings profile that caps every query (readonly = 2: clients may send settings,
-- never lift the caps or readonly), a quota per user and hour, and row policies by
-- tenant_id.
--
-- Roles:
--   agentwatch_analyst         SELECT on the tenant tables and rules, the limits, the
--                              quota; sees no rows until a tenant or fleet role adds them
--   agentwatch_tenant_<id>     rows of one tenant (add-tenant-analyst.sh makes one)
--   agentwatch_analyst_fleet   every tenant's rows, and the dead letters and offsets
--
-- Runs once, on first start, from /docker-entrypoint-initdb.d (as the image's default
-- user, which needs CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT=1); safe to run again. The
-- tables need not exist yet: grants and policies name them, the API creates them.
-- A new table with a tenant_id column belongs in the lists below.

CREATE SETTINGS PROFILE OR REPLACE agentwatch_analyst_limits SETTINGS
    readonly = 2,
    max_memory_usage = 1073741824 MIN 1 MAX 1073741824,
    max_threads = 2 MIN 1 MAX 2,
    max_rows_to_read = 100000000 MIN 1 MAX 100000000,
    max_bytes_to_read = 10737418240 MIN 1 MAX 10737418240,
    max_execution_time = 10 MIN 1 MAX 10,
    max_result_rows = 100000 MIN 1 MAX 100000,
    max_result_bytes = 33554432 MIN 1 MAX 33554432,
    read_overflow_mode = 'throw' CONST,
    result_overflow_mode = 'throw' CONST,
    timeout_overflow_mode = 'throw' CONST,
    allow_ddl = 0 CONST,
    allow_introspection_functions = 0 CONST;

CREATE ROLE IF NOT EXISTS agentwatch_analyst SETTINGS PROFILE 'agentwatch_analyst_limits';
CREATE ROLE IF NOT EXISTS agentwatch_analyst_fleet;

-- Exactly these grants, however often this runs: everything else stays denied.
REVOKE ALL ON *.* FROM agentwatch_analyst;
REVOKE ALL ON *.* FROM agentwatch_analyst_fleet;
GRANT SELECT ON agentwatch.metrics TO agentwatch_analyst;
GRANT SELECT ON agentwatch.anomalies TO agentwatch_analyst;
GRANT SELECT ON agentwatch.threats TO agentwatch_analyst;
GRANT SELECT ON agentwatch.baselines TO agentwatch_analyst;
GRANT SELECT ON agentwatch.alerts TO agentwatch_analyst;
GRANT SELECT ON agentwatch.security_scores TO agentwatch_analyst;
GRANT SELECT ON agentwatch.commands TO agentwatch_analyst;
GRANT SELECT ON agentwatch.incidents TO agentwatch_analyst;
GRANT SELECT ON agentwatch.agent_events TO agentwatch_analyst;
GRANT SELECT ON agentwatch.silences TO agentwatch_analyst;
GRANT SELECT ON agentwatch.rules TO agentwatch_analyst;
GRANT agentwatch_analyst TO agentwatch_analyst_fleet;
GRANT SELECT ON agentwatch.deadletter TO agentwatch_analyst_fleet;
GRANT SELECT ON agentwatch.loader_offsets TO agentwatch_analyst_fleet;
GRANT SELECT ON agentwatch.webhook_offsets TO agentwatch_analyst_fleet;
GRANT SELECT ON agentwatch.audit_log TO agentwatch_analyst_fleet;
-- the API's projections the dashboards read (every tenant's rows: no row policy yet)
GRANT SELECT ON agentwatch.agents TO agentwatch_analyst_fleet;
GRANT SELECT ON agentwatch.tasks TO agentwatch_analyst_fleet;
GRANT SELECT ON agentwatch.assignment_scores TO agentwatch_analyst_fleet;
GRANT SELECT ON agentwatch.assignment_scores_latest TO agentwatch_analyst_fleet;

CREATE QUOTA OR REPLACE agentwatch_analyst_quota KEYED BY user_name
    FOR INTERVAL 1 hour MAX queries = 2000, errors = 200, result_rows = 10000000,
        read_rows = 20000000000, execution_time = 3600
    TO agentwatch_analyst, agentwatch_analyst_fleet;

-- Once a table has a row policy, a user none of its policies names sees no row of it
-- (config.d/row-policies.xml: ClickHouse's own default lets such a user read all): so
-- the service user (the API and the loader connect as agentwatch, the compose file's
-- CLICKHOUSE_USER, which also removes the server's user default: naming default here
-- failed this script, and the analyst user was never made) and fleet analysts get every
-- row here, and a tenant's analyst only what a tenant role adds. A service user of your
-- own (Grafana's, say) belongs in this TO list, or in the fleet role.
CREATE ROW POLICY OR REPLACE agentwatch_every_tenant ON agentwatch.metrics,
    agentwatch.anomalies, agentwatch.threats, agentwatch.baselines, agentwatch.alerts,
    agentwatch.security_scores, agentwatch.commands, agentwatch.incidents,
    agentwatch.agent_events, agentwatch.silences
    AS PERMISSIVE FOR SELECT USING 1 TO agentwatch, agentwatch_analyst_fleet;
