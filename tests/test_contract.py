"""The API keeps the contract its OpenAPI schema publishes (Schemathesis).

Schemathesis reads ``/openapi.json`` and, for every operation, sends the
schema's examples, its boundary and invalid cases (coverage) and generated
requests (fuzzing), then chains operations through the links it infers
(stateful). Every check runs: no 5xx; the status code, content type, headers
and body are the documented ones; schema-valid requests are accepted and
invalid ones refused; an undocumented method answers 405 with an ``Allow``
that lists exactly the documented methods.

The app runs with the real parts behind it — the session's Tansu broker and
chDB, in this test's own topic prefix and database — under uvicorn in a thread
of this process on a free loopback port, so the requests come from loopback and
the mutations (rules, silences, quarantine) are allowed (api/access.py). The
run is deterministic (``--generation-deterministic``, no example database), so
CI sees the same requests every time; ``--max-examples`` keeps it to well under
a minute on two cores.

Rules that JSON Schema cannot state — one field against another: ``since`` not
after ``until``, a silence's ``ends_at`` after its ``starts_at``, a baseline rule's
``log_metrics`` among its ``metric`` — are documented in
the operations' descriptions and their 422 answers; for those operations alone a
documented 422 is an accepted answer to schema-valid data (:data:`CROSS_FIELD_RULES`).
Every other check stays on for them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from click.testing import CliRunner
from schemathesis.cli import schemathesis as schemathesis_cli

from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import free_port
from sinks.clickhouse import connect
from sinks.loader import assignment_score_row
from tests.conftest import wait_until
from tests.test_api import (
    ANOMALY_COLUMNS,
    BASELINE_COLUMNS,
    METRIC_COLUMNS,
    THREAT_COLUMNS,
    anomaly_row,
    baseline_row,
    heartbeat_row,
    insert_docs,
    threat_row,
)
from tests.test_tasks_api import assigned, finished, insert_tasks
from tests.test_tasks_api import score as assignment_score

#: Generated requests per operation and phase: enough to reach every documented
#: status of this API, small enough for ~30 s on two shared cores.
MAX_EXAMPLES = 25

#: Operations with a rule the schema cannot state, and the rule: a schema-valid
#: request that breaks it gets the documented 422 (tests/test_api.py checks each).
CROSS_FIELD_RULES = {
    ("GET", "/api/v1/agents/{agent_id}/anomalies"): "since is not after until",
    ("GET", "/api/v1/agents/{agent_id}/threats"): "since is not after until",
    ("GET", "/api/v1/agents/{agent_id}/assignment-scores"): "since is not after until",
    ("POST", "/api/v1/silences"): "ends_at is after starts_at",
    ("POST", "/api/v1/agents/{agent_id}/quarantine"): "until is in the future",
    ("GET", "/api/v1/reports/{kind}"): "since is not after until",
    ("POST", "/api/v1/agents/bulk-operation"): "a quarantine's until is in the future",
    ("POST", "/api/v1/rules"): "log_metrics are among the watched metrics",
    ("PUT", "/api/v1/rules/{name}"): "log_metrics are among the watched metrics; "
    "the body names the rule of the path",
}


#: The agent the run asks about (its rows are written before the run), so the agent
#: operations answer with data, not only with 404 (tests/test_api.py covers the 404s).
AGENT = "agent-contract"
#: The task the run asks about (assigned to :data:`AGENT` before the run).
TASK = "task-contract"


@schemathesis.check
def error_says_why(ctx: object, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx says why: a JSON body whose ``detail`` (or, for a 422, ``message``) is a
    sentence."""
    if not 400 <= response.status_code < 500:
        return
    body = response.json()
    reason = body.get("message") if response.status_code == 422 else body.get("detail")
    if not isinstance(reason, str) or len(reason.split()) < 2:
        raise AssertionError(f"{response.status_code} without a reason: {response.text[:200]}")


def schemathesis_config() -> str:
    """The run's configuration (TOML): the agent to ask about; 422 accepted for valid
    data on the operations of :data:`CROSS_FIELD_RULES` only."""
    accepted = '["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]'
    blocks = [f'[parameters]\n"path.agent_id" = "{AGENT}"\n"path.task_id" = "{TASK}"\n']
    blocks += [
        f'[[operations]]\ninclude-method = "{method}"\ninclude-path = "{path}"\n'
        f"checks.positive_data_acceptance.expected-statuses = {accepted}\n"
        for method, path in CROSS_FIELD_RULES
    ]
    return "\n".join(blocks)


@pytest.fixture
def served_api(settings: Settings) -> Iterator[str]:
    """The app on a free loopback port, under uvicorn in a thread; its base URL."""
    contract_settings = settings.model_copy(update={"api_sql_enabled": True})
    port = free_port()
    config = uvicorn.Config(
        create_app(contract_settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="contract-api", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{base_url}/openapi.json", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(lambda: server.started and answers(), 30, "the API under uvicorn")
        seed_agent(contract_settings)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive(), "the API did not stop within 20 s"


def seed_agent(settings: Settings) -> None:
    """Write :data:`AGENT`'s heartbeats, baseline, anomaly and threat, its assignment
    score, and :data:`TASK` (assigned to it, then completed) into the test's database (the
    app created its tables on start)."""
    client = connect(settings)
    try:
        for table, rows, columns in (
            ("metrics", [heartbeat_row(AGENT, 90), heartbeat_row(AGENT, 60)], METRIC_COLUMNS),
            ("baselines", [baseline_row(AGENT, 60, 40, True)], BASELINE_COLUMNS),
            ("anomalies", [anomaly_row(AGENT, 60)], ANOMALY_COLUMNS),
            ("threats", [threat_row(AGENT, 120)], THREAT_COLUMNS),
        ):
            client.insert(table, rows, column_names=columns, database=settings.clickhouse_database)
        now = time.time()
        insert_tasks(client, settings, [
            assigned(TASK, AGENT, now - 60),
            finished(TASK, "completed", 0.9, 30.0, 25.0, now - 30, agent=AGENT),
        ])  # fmt: skip
        insert_docs(client, settings, "assignment_scores", assignment_score_row,
                    [assignment_score(AGENT, now - 30, 0.7)])  # fmt: skip
    finally:
        client.close()


@pytest.mark.timeout(240)
def test_api_keeps_its_openapi_contract(served_api: str, tmp_path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(schemathesis_config())
    result = CliRunner().invoke(
        schemathesis_cli,
        [
            f"--config-file={config}",
            "run",
            f"{served_api}/openapi.json",
            "--checks=all",
            f"--max-examples={MAX_EXAMPLES}",
            "--generation-deterministic",
            "--workers=1",
            "--continue-on-failure",
            "--request-timeout=30",
            "--no-color",
            f"--report-dir={tmp_path / 'report'}",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "Tested: " in result.output, result.output
