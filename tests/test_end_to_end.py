"""The whole stack like a user drives it: `agentwatch up`, a simulated fleet with an
incident, the anomaly through the API — and after a restart the history is still there."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until

# the fixtures `run_up` and `stack_env` come from the CLI tests
from tests.test_cli import FULL_STACK, agentwatch, assert_all_gone, run_up, stack_env  # noqa: F401

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not FULL_STACK, reason="dataflows.heartbeats or api is missing"),
]

START = "now-1h"  # inside the tables' TTL, and not in the future
SPIKE_AGENT = "agent-000007"


def test_injected_cpu_spike_shows_in_the_api_and_survives_a_restart(
    run_up, stack_env: dict[str, str], tmp_path: Path
) -> None:
    stack_env.update(
        AGENTWATCH_BASELINE_WARMUP_S="0",
        AGENTWATCH_BASELINE_WARMUP_HEARTBEATS="20",
        AGENTWATCH_SNAPSHOT_INTERVAL_S="1",
    )
    api = f"http://127.0.0.1:{stack_env['AGENTWATCH_API_PORT']}/api/v1"
    up = run_up()
    state = up.wait_ready(timeout_s=90)
    simulate = agentwatch(
        "simulate",
        *("--agents", "30", "--duration", "40m", "--rate", "0", "--quiet"),
        *("-i", f"cpu_spike:{SPIKE_AGENT}:25m:60", "--start", START),
        *("--ground-truth", str(tmp_path / "truth.jsonl")),
        *("--bootstrap-servers", state["broker"]["bootstrap_servers"]),
        env=stack_env,
        cwd=tmp_path,
        timeout=120,
    )
    assert simulate.returncode == 0, simulate.stdout + simulate.stderr

    def spike_found() -> list[dict]:
        response = httpx.get(f"{api}/agents/{SPIKE_AGENT}/anomalies", timeout=5)
        if response.status_code != 200:
            return []
        return [a for a in response.json()["anomalies"] if a["is_anomaly"]]

    found = wait_until(spike_found, 90, "the injected CPU spike in the API")
    assert found[0]["reasons"][0]["feature"] == "cpu_usage"
    status = httpx.get(f"{api}/agents/{SPIKE_AGENT}/status", timeout=5).json()
    assert status["latest_anomaly"]["is_anomaly"] is True
    assert status["baseline"]["warmed_up"] is True

    assert up.interrupt() < 10
    assert_all_gone(state)

    again = run_up()
    again.wait_ready(timeout_s=90)
    assert spike_found() == found, "the ClickHouse history survives a restart"
    assert again.interrupt() < 10
