"""A small synchronous client for an agent: register it, then send its heartbeats,
conversations and task outcomes with its own credential, over the API's REST bridge
or straight to Kafka. It lives beside the API it talks to (not in the domain package
``agentwatch``, which imports neither Kafka nor Bytewax), and imports no server code.

::

    from api.client import AgentClient

    agent = AgentClient.register(
        "http://127.0.0.1:8000", admin_key,  # an admin's or an operator's key
        {"name": "summariser-1", "agent_type": "llm_worker", "owner": "team-ml"},
        tenant_id="acme",
    )
    agent.heartbeat(cpu_usage=41.0, memory_usage=60.2, disk_usage=30.0, network_latency=12.0,
                    active_tasks=2, completed_tasks=10, failed_tasks=0, error_rate=0.0,
                    response_time_avg=230.0, uptime_seconds=3600)
    agent.conversation(counterpart="agent-7", text="Here is the summary you asked for.")
    agent.task_completed(task_id="t-42")
    agent.rotate()  # before agent.expires_at: a new key; the old one lives the overlap window

``transport="bridge"`` (default) posts to ``/api/v1/agents/{id}/metrics`` and
``/events`` with the agent's key; ``transport="kafka"`` writes ``agents.metrics`` and
``agents.events`` itself (``bootstrap_servers``, ``topic_prefix``, and ``kafka_options``
for librdkafka, e.g. the SASL login of the cluster profile's ``agent`` principal;
confluent-kafka is imported only then). Either way each message is checked against the contract
(:class:`schemas.models.Heartbeat`, the channel allowlist) before it leaves, and a
refusal (:class:`AgentClientError`) says why. Save ``agent.agent_id`` and
``agent.token`` (a secret) to reconnect later with ``AgentClient(...)``.

>>> agent = AgentClient("http://127.0.0.1:8000", "a1", "t1", token="aw_…")
>>> beat = agent.heartbeat_message(timestamp=1.8e9, cpu_usage=1, memory_usage=2, disk_usage=3,
...     network_latency=4, active_tasks=0, completed_tasks=0, failed_tasks=0, error_rate=0,
...     response_time_avg=5, uptime_seconds=6)
>>> beat["agent_id"], beat["tenant_id"], beat["cpu_usage"]
('a1', 't1', 1.0)
>>> agent
AgentClient(agent_id='a1', tenant_id='t1', transport='bridge', token='***')
"""

from __future__ import annotations

import time
from typing import Any, Literal

import httpx
import orjson
from pydantic import ValidationError

from schemas.events import AGENT_CHANNEL, CONVERSATION, TASK_COMPLETED, TASK_FAILED, refusal
from schemas.models import Heartbeat, LifecycleEvent, Registration

Transport = Literal["bridge", "kafka"]


class AgentClientError(RuntimeError):
    """The API or the contract refused something; the message says why (``status``: the
    HTTP status, 0 when refused before sending)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AgentClient:
    """One agent's connection to agentwatch (not thread-safe: one per thread)."""

    def __init__(
        self,
        api_url: str,
        agent_id: str,
        tenant_id: str,
        token: str,
        *,
        transport: Transport = "bridge",
        bootstrap_servers: str | None = None,
        topic_prefix: str = "",
        kafka_options: dict[str, object] | None = None,
        expires_at: float | None = None,
        http: httpx.Client | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if transport not in ("bridge", "kafka"):
            raise ValueError(f"transport is 'bridge' or 'kafka', not {transport!r}")
        if transport == "kafka" and not bootstrap_servers:
            raise ValueError("transport='kafka' needs bootstrap_servers ('host:port,…')")
        self.api_url = api_url.rstrip("/")
        self.agent_id = agent_id
        self.tenant_id = tenant_id
        self.token = token
        self.transport = transport
        self.expires_at = expires_at
        self.bootstrap_servers = bootstrap_servers
        self.topic_prefix = topic_prefix
        self.kafka_options = dict(kafka_options or {})
        self.timeout_s = timeout_s
        self._http = http
        self._own_http = http is None
        self._producer: Any = None

    def __repr__(self) -> str:  # the token is a secret: never in a repr
        return (
            f"AgentClient(agent_id={self.agent_id!r}, tenant_id={self.tenant_id!r}, "
            f"transport={self.transport!r}, token='***')"
        )

    # --- registration and credentials ------------------------------------------------
    @classmethod
    def register(
        cls,
        api_url: str,
        key: str,
        registration: Registration | dict,
        tenant_id: str,
        *,
        agent_id: str | None = None,
        http: httpx.Client | None = None,
        timeout_s: float = 10.0,
        **options: Any,
    ) -> AgentClient:
        """Register an agent (``POST /api/v1/agents/register`` with an admin's or an
        operator's ``key``) and return its client, holding its id and first credential.
        ``options`` go to :class:`AgentClient` (``transport``, ``bootstrap_servers``, …)."""
        if isinstance(registration, dict):
            registration = _valid(Registration, registration, "registration")
        body: dict[str, Any] = registration.model_dump(mode="json") | {"tenant_id": tenant_id}
        if agent_id is not None:
            body["agent_id"] = agent_id
        client = http or httpx.Client(timeout=timeout_s)
        try:
            answer = _call(client, "POST", f"{api_url.rstrip('/')}/api/v1/agents/register",
                           key, body)  # fmt: skip
        finally:
            if http is None:
                client.close()
        credential = answer["credential"]
        return cls(
            api_url, answer["agent_id"], answer["tenant_id"], credential["token"],
            expires_at=credential.get("expires_at"), http=http, timeout_s=timeout_s, **options,
        )  # fmt: skip

    def rotate(self) -> str:
        """A new credential for this agent (``POST /api/v1/agents/{id}/credentials`` with
        the current one, which then lives only the overlap window); the client uses it from
        now on. Returns the new key's id."""
        answer = self._api("POST", f"/api/v1/agents/{self.agent_id}/credentials")
        self.token, self.expires_at = answer["token"], answer.get("expires_at")
        return answer["key_id"]

    def credentials(self) -> list[dict]:
        """This agent's keys (ids, expiries, revocations; never a secret)."""
        return self._api("GET", f"/api/v1/agents/{self.agent_id}/credentials")

    # --- what an agent says ----------------------------------------------------------
    def heartbeat_message(self, **metrics: Any) -> dict:
        """The heartbeat of ``metrics`` (the fields of :class:`schemas.models.Heartbeat`;
        ``timestamp`` defaults to now), checked against the contract."""
        values = {"agent_id": self.agent_id, "tenant_id": self.tenant_id, "timestamp": time.time()}
        beat = _valid(Heartbeat, values | metrics, "heartbeat")
        return beat.model_dump(mode="json", exclude_none=True)

    def heartbeat(self, **metrics: Any) -> None:
        """Send one heartbeat (see :meth:`heartbeat_message`)."""
        message = self.heartbeat_message(**metrics)
        if self.transport == "kafka":
            self._produce("metrics", message)
        else:
            self._api("POST", f"/api/v1/agents/{self.agent_id}/metrics", message)

    def conversation(
        self, counterpart: str, text: str = "", summary: str = "", **fields: Any
    ) -> None:
        """Report an exchange with ``counterpart`` (``schemas.models.ConversationPayload``:
        ``direction``, ``tokens_in``, ``tokens_out``, … as ``fields``)."""
        payload = {"counterpart": counterpart, "text": text, "summary": summary} | fields
        self.event(CONVERSATION, payload)

    def task_completed(self, task_id: str | None = None, **payload: Any) -> None:
        """Report a finished task."""
        self.event(TASK_COMPLETED, _with_task(task_id, payload))

    def task_failed(self, task_id: str | None = None, reason: str = "", **payload: Any) -> None:
        """Report a task that failed, and why."""
        self.event(
            TASK_FAILED, _with_task(task_id, payload | ({"reason": reason} if reason else {}))
        )

    def event(self, kind: str, payload: dict, timestamp: float | None = None) -> None:
        """Send one of the agent's facts (a type ``agents.events`` accepts)."""
        reason = refusal(AGENT_CHANNEL, kind)
        if reason is not None:
            raise AgentClientError(reason)
        timestamp = time.time() if timestamp is None else timestamp
        if self.transport == "kafka":
            event = _valid(LifecycleEvent, {
                "type": kind, "agent_id": self.agent_id, "tenant_id": self.tenant_id,
                "actor": self.agent_id, "timestamp": timestamp, "payload": payload,
            }, "event")  # fmt: skip
            self._produce(AGENT_CHANNEL, event.model_dump(mode="json"))
        else:
            body = {"type": kind, "payload": payload, "timestamp": timestamp}
            self._api("POST", f"/api/v1/agents/{self.agent_id}/events", body)

    def flush(self) -> None:
        """Wait until Kafka has every message sent so far (the bridge answers only then)."""
        if self._producer is not None:
            left = self._producer.flush(self.timeout_s)
            if left:
                raise AgentClientError(f"{left} messages not delivered to {self.bootstrap_servers}")

    def close(self) -> None:
        """Deliver what is pending and let go of the connections."""
        self.flush()
        if self._http is not None and self._own_http:
            self._http.close()
            self._http = None

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------
    def _api(self, method: str, path: str, body: object = None) -> Any:
        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout_s)
            self._own_http = True
        return _call(self._http, method, f"{self.api_url}{path}", self.token, body)

    def _produce(self, channel: str, message: dict) -> None:
        if self._producer is None:
            from confluent_kafka import Producer  # only agents that write Kafka need it

            config = {"bootstrap.servers": self.bootstrap_servers, **self.kafka_options}
            self._producer = Producer(config)
        self._producer.produce(
            f"{self.topic_prefix}agents.{channel}", key=self.agent_id.encode(),
            value=orjson.dumps(message),
        )  # fmt: skip
        self._producer.poll(0)


def _call(client: httpx.Client, method: str, url: str, key: str, body: object) -> Any:
    try:
        answer = client.request(method, url, json=body, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        raise AgentClientError(f"{method} {url}: {exc}; is the API running?") from None
    if answer.is_success:
        return answer.json() if answer.content else None
    try:
        said = answer.json()
        detail = said.get("message") or said.get("detail")
    except ValueError:
        detail = answer.text[:500]
    raise AgentClientError(f"{method} {url} -> {answer.status_code}: {detail}", answer.status_code)


def _valid(model: type, values: dict, what: str) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or what
        raise AgentClientError(f"{what}: {where}: {error['msg']}") from None


def _with_task(task_id: str | None, payload: dict) -> dict:
    return payload | ({"task_id": task_id} if task_id is not None else {})
