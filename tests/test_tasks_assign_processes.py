"""No over-commit with two API processes (``python -m api`` twice) and the dataflow
(``python -m dataflows.heartbeats``) on one broker, while heartbeats stream.

What each API process guarantees on its own — it never places more tasks on an agent
than the agent's free slots as it knows them (its reservations, the shard's counts) —
is asserted always. Between processes the agent's shard is the authority: it accepts
a ``task_assigned`` only into a free slot and refuses the rest (``task_changed``), and
the process that placed a refused task places it again. That half is asserted when the
dataflow decides on tasks (:data:`SHARD_DECIDES`: the shard's orchestration module is
present); until then the test says it did not check it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from agentwatch.settings import Settings
from infra.broker import ensure_topics, free_port
from tests.conftest import wait_until
from tests.test_dataflow import heartbeat
from tests.test_dataflow_kafka import DataflowProcess, TopicReader
from tests.test_tasks_assign import lifecycle

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # starts the APIs and the dataflow

#: Whether the dataflow on this branch accepts or refuses tasks (the shard's part of
#: issue 10, agentwatch/orchestration.py). Without it no ``task_changed`` comes, and
#: the verdict half of the test is not checked (it says so).
SHARD_DECIDES = importlib.util.find_spec("agentwatch.orchestration") is not None
AGENTS = [f"agent-{i:04d}" for i in range(8)]
CAPACITY = 2
TENANT = "t1"


class ApiProcess:
    """``python -m api`` on a free port with its own chDB directory and no loader (one
    process may open a chDB directory; the loader is the first API's job, not needed
    here)."""

    def __init__(self, settings: Settings, name: str, tmp_path: Path) -> None:
        self.port = free_port()
        self.log_path = tmp_path / f"{name}.log"
        env = {
            **os.environ,
            **settings.as_env(),
            "AGENTWATCH_API_PORT": str(self.port),
            "AGENTWATCH_CLICKHOUSE_DSN": f"chdb://{tmp_path / f'{name}-chdb'}",
            "AGENTWATCH_API_RUN_LOADER": "false",
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api"], env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def answers(self) -> bool:
        try:
            return self.http.get("/api/v1/orchestration/weights").status_code == 200
        except httpx.TransportError:
            assert self.process.poll() is None, self.log_path.read_text()
            return False

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def stack(make_settings, broker, tmp_path: Path) -> Iterator[tuple[Settings, list[ApiProcess]]]:
    settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=f"chdb://{tmp_path / 'unused-chdb'}",
        agents_auto_register=False,
    )
    ensure_topics(settings)
    flow = DataflowProcess(settings, tmp_path / "dataflow.log")
    flow.start()
    apis: list[ApiProcess] = []
    try:
        apis = [ApiProcess(settings, name, tmp_path) for name in ("api-a", "api-b")]
        for api in apis:
            wait_until(api.answers, 90, f"python -m api on {api.port}")
        yield settings, apis
    finally:
        for api in apis:
            api.stop()
        flow.stop()


class Heartbeats:
    """Every agent beats each second (event time = now) until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        producer = Producer(self.settings.kafka_config())
        step = 0
        while not self.stopping.is_set():
            for i, agent in enumerate(AGENTS):
                beat = heartbeat(i, step, timestamp=time.time(), tenant_id=TENANT)
                producer.produce(self.settings.topic("metrics"), key=agent.encode(),
                                 value=orjson.dumps(beat))  # fmt: skip
            producer.flush(5)
            step += 1
            self.stopping.wait(1.0)

    def __enter__(self) -> Heartbeats:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)


@pytest.mark.timeout(300)
def test_two_api_processes_never_put_an_agent_past_its_capacity(stack, tmp_path: Path):
    settings, apis = stack
    producer = Producer(settings.kafka_config())
    for agent in AGENTS:
        card = {"name": agent, "agent_type": "bot", "owner": "ops", "capabilities": ["chat"],
                "max_concurrent_tasks": CAPACITY}  # fmt: skip
        event = lifecycle("registered", agent, TENANT, card, at=time.time() - 5)
        producer.produce(settings.topic("control"), key=agent.encode(), value=orjson.dumps(event))
    assert producer.flush(10) == 0
    with Heartbeats(settings):

        def all_active(api: ApiProcess) -> bool:
            for agent in AGENTS:
                status = api.http.get(f"/api/v1/agents/{agent}/status")
                if status.status_code != 200 or status.json()["lifecycle_state"] != "active":
                    return False
            return True

        for api in apis:
            wait_until(lambda api=api: all_active(api), 90, f"the agents active on {api.port}")

        # a weight change through one process reaches the other without a restart
        frugal = {"performance": 0.3, "cost": 0.5, "availability": 0.2, "sla": 0.0}
        assert apis[0].http.put("/api/v1/orchestration/weights", json=frugal).status_code == 200
        wait_until(
            lambda: apis[1].http.get("/api/v1/orchestration/weights").json() == frugal,
            30, "the weights on the second process",
        )  # fmt: skip

        requests = 3 * len(AGENTS) * CAPACITY  # 48 requests for 16 slots, half to each

        def assign(i: int) -> tuple[int, int, dict]:
            api = apis[i % 2]
            answer = api.http.post("/api/v1/tasks/assign",
                                   json={"tenant_id": TENANT, "task_id": f"race-{i}"})  # fmt: skip
            return i % 2, answer.status_code, answer.json()

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(assign, range(requests)))

        # each process alone: never more placed on an agent than its capacity
        slots = len(AGENTS) * CAPACITY
        for process in (0, 1):
            mine = [body for p, status, body in answers if p == process and status == 200]
            per_agent = Counter(body["assignment"]["agent_id"] for body in mine)
            assert max(per_agent.values()) <= CAPACITY, per_agent
            assert len(mine) <= slots
            if not SHARD_DECIDES:  # no verdict comes: each fills exactly the slots it knows
                assert len(mine) == slots, per_agent
            refused = [b for p, s, b in answers if p == process and s == 409]
            assert all("at capacity" in b["detail"] for b in refused), refused[:3]
        assert {status for _, status, _ in answers} <= {200, 409}

        if not SHARD_DECIDES:
            # The dataflow on this branch does not decide on tasks yet: together the two
            # processes may have placed up to 2 x 16; the shard must refuse the excess.
            # The lead enables the check below by merging the shard's part (it turns on
            # by itself once agentwatch/orchestration.py exists).
            pytest.skip(
                "API-side guarantees checked; the shard's verdicts (accepted <= capacity "
                "per agent) are not on this branch"
            )
        placements = sum(status == 200 for _, status, _ in answers)
        verdicts = TopicReader(settings, ["state", "control"])
        latest: dict[str, dict] = {}

        def settled() -> bool:
            """Every placement (task, attempt) has its verdict, and none is pending."""
            placed, decided = set(), {}
            seen = verdicts.poll()
            for record in seen[settings.topic("control")]:
                if record["type"] == "task_assigned":
                    placed.add((record["payload"]["task_id"], record["payload"]["attempt"]))
            for record in seen[settings.topic("state")]:
                if record["type"] == "task_changed":
                    task = record["payload"]
                    decided[(task["task_id"], task["attempt"])] = task
                    latest[task["task_id"]] = task
            # (agents.control is read apart from agents.state: until every placement the
            # processes answered 200 is read, "all decided" would hold for a part of them)
            return len(placed) >= placements and placed <= set(decided)

        try:
            wait_until(settled, 90, "the shard's verdict on every placement")
        finally:
            verdicts.close()
        accepted = Counter(t["agent_id"] for t in latest.values() if t["status"] == "accepted")
        assert accepted and max(accepted.values()) <= CAPACITY, accepted
        assert sum(accepted.values()) <= slots
        for task in latest.values():
            assert task["agent_active_tasks"] <= CAPACITY, task
