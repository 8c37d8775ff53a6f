"""The whole stack like a user drives it: `agentwatch up`, a simulated fleet with an
incident, the anomaly through the API — and after a restart the history is still there."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agentwatch.kafka_logs import LIBRDKAFKA_LOG
from tests.conftest import read_topic, wait_until

# the fixtures `run_up` and `stack_env` come from the CLI tests
from tests.test_cli import FULL_STACK, agentwatch, assert_all_gone, run_up, stack_env  # noqa: F401

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),  # their own deadlines add up to more than the default
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

    def status_with_baseline() -> dict | None:
        status = httpx.get(f"{api}/agents/{SPIKE_AGENT}/status", timeout=5).json()
        warm = (status.get("baseline") or {}).get("warmed_up")
        return status if status.get("latest_anomaly") and warm else None

    # the spike (agents.anomalies) and the baselines (agents.baselines) come from two
    # topics, loaded and projected apart: the anomaly may be visible before a warm baseline
    status = wait_until(status_with_baseline, 30, f"{SPIKE_AGENT}'s warm baseline in its status")
    assert status["latest_anomaly"]["is_anomaly"] is True

    assert up.interrupt() < 10
    assert_all_gone(state)

    again = run_up()
    again.wait_ready(timeout_s=90)
    assert spike_found() == found, "the ClickHouse history survives a restart"
    assert again.interrupt() < 10


def test_a_rule_added_through_the_api_fires_without_a_restart(
    run_up, stack_env: dict[str, str], tmp_path: Path
) -> None:
    import time

    import orjson
    from confluent_kafka import Producer

    api = f"http://127.0.0.1:{stack_env['AGENTWATCH_API_PORT']}/api/v1"
    up = run_up()
    state = up.wait_ready(timeout_s=90)
    bootstrap = state["broker"]["bootstrap_servers"]
    producer = Producer({"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG})
    now = time.time()

    def beat(cpu: float, at: float) -> float:
        value = {
            "agent_id": "agent-x", "tenant_id": "t1", "timestamp": at, "cpu_usage": cpu,
            "memory_usage": 40.0, "disk_usage": 20.0, "network_latency": 5.0,
            "active_tasks": 1, "completed_tasks": 1, "failed_tasks": 0, "error_rate": 0.0,
            "response_time_avg": 100.0, "uptime_seconds": 100.0, "bytes_out": 10,
        }  # fmt: skip
        producer.produce("agents.metrics", key=b"agent-x", value=orjson.dumps(value))
        producer.flush(5)
        return at

    beat(50.0, now - 60)
    # (its status may come from the API's projection first; its threats are ClickHouse's)
    wait_until(lambda: httpx.get(f"{api}/agents/agent-x/threats", timeout=5).status_code == 200,
               60, "the agent in ClickHouse")  # fmt: skip
    rule = {
        "name": "cpu_above_85",
        "condition": {"metric": "cpu_usage", "aggregate": "last", "op": ">", "value": 85},
        "for_s": 0, "category": "PERFORMANCE", "severity": "WARNING",
    }  # fmt: skip
    added = httpx.post(f"{api}/rules", json=rule, timeout=10)
    assert added.status_code == 201, added.text

    # the rule (agents.control) and the heartbeats (agents.metrics) are two topics: the
    # first matching heartbeat may be judged before the dataflow has read the rule, so a
    # second one is allowed. Each then gets the time a threat takes through the dataflow,
    # agents.threats, the loader and ClickHouse (seconds on a slow machine): a shorter
    # window would send a third heartbeat while the second's threat is on its way.
    matching: list[float] = []
    found: list = []
    deadline = time.monotonic() + 90
    while not found and time.monotonic() < deadline:
        matching.append(beat(95.0, now + len(matching)))
        found = wait_until_or_none(
            lambda: [t for t in httpx.get(f"{api}/agents/agent-x/threats", timeout=5).json()
                     ["threats"] if t["rule"] == "cpu_above_85"],
            15.0,
        )  # fmt: skip
    assert found, "the new rule never fired"
    assert len(matching) <= 2, f"fired only after {len(matching)} matching heartbeats"
    assert up.interrupt() < 10


def wait_until_or_none(predicate, timeout_s: float):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    return None


def test_auto_quarantine_end_to_end(run_up, stack_env: dict[str, str], tmp_path: Path) -> None:
    """An agent misbehaving twice: threats cost its security score until it falls under 20;
    then the API shows it quarantined and a quarantine order is on agents.commands."""
    import time

    import orjson
    from confluent_kafka import Producer

    api = f"http://127.0.0.1:{stack_env['AGENTWATCH_API_PORT']}/api/v1"
    up = run_up()
    state = up.wait_ready(timeout_s=90)
    bootstrap = state["broker"]["bootstrap_servers"]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "logger": LIBRDKAFKA_LOG})
    start = time.time() - 4 * 3600

    def beat(step: int, bad: bool) -> None:
        value = {
            "agent_id": "agent-q", "tenant_id": "t1", "timestamp": start + 30 * step,
            "cpu_usage": 99.0 if bad else 30.0, "memory_usage": 40.0, "disk_usage": 20.0,
            "network_latency": 5.0, "active_tasks": 1, "completed_tasks": step,
            "failed_tasks": 0, "error_rate": 0.5 if bad else 0.01, "response_time_avg": 100.0,
            "uptime_seconds": 30.0 * step, "bytes_out": 300_000_000 if bad else 10_000,
        }  # fmt: skip
        producer.produce("agents.metrics", key=b"agent-q", value=orjson.dumps(value))

    # normal, incident (cpu, errors, exfiltration for 12 min), normal 2 h, incident again
    for step in range(400):
        beat(step, 40 <= step < 64 or 330 <= step < 354)
    producer.flush(10)

    def quarantined() -> dict | None:
        response = httpx.get(f"{api}/agents/agent-q/security", timeout=5)
        body = response.json() if response.status_code == 200 else {}
        # the quarantine (agent_events) and the score's changes (security_scores) land
        # from two topics, so one can be visible a moment before the other: both are
        # waited for, and a quarantine with a score of 20 or more never passes
        return body if body.get("quarantined") and body.get("changes") else None

    security = wait_until(quarantined, 90, "agent-q quarantined in the API")
    if security["score"] >= 20:  # the change that crossed 20 may be a moment behind
        security = wait_until(
            lambda: (b := quarantined()) and b["score"] < 20 and b, 30, "the score under 20"
        )
    assert security["score"] < 20
    status = wait_until(
        lambda: (
            (b := httpx.get(f"{api}/agents/agent-q/status", timeout=5).json())
            and b["quarantined"]
            and b
        ),
        30,
        "agent-q quarantined in its status",
    )
    assert status["security_score"] < 20

    # the order (agents.commands) and the quarantine the API showed (agents.state, through
    # the loader) are two topics: the order is waited for, not read once
    def orders_with_quarantine() -> list[dict] | None:
        orders = [orjson.loads(m.value()) for m in read_topic(bootstrap, "agents.commands")]
        return orders if any(o["command"] == "quarantine" for o in orders) else None

    orders = wait_until(orders_with_quarantine, 30, "the quarantine order on agents.commands")
    quarantines = [o for o in orders if o["command"] == "quarantine"]
    assert [(o["agent_id"], o["command"]) for o in quarantines] == [("agent-q", "quarantine")]
    # the incidents also degraded its health: remediation orders came first (docs/health.md)
    remediation = [o["command"] for o in orders if o["command"] != "quarantine"]
    assert remediation[:3] == ["restart", "clear_cache", "reduce_load"], remediation
    assert up.interrupt() < 10
