"""A simulated fleet of agents that beat in the contract's heartbeat format.

Every agent has a personality drawn once from the seed: a tenant, a load
level, how noisy it is, a daily cycle (amplitude and hour of peak), how much
it sends, how fast it works and how often it fails. Time is simulated event
time: tick ``i`` covers ``[i * interval, (i + 1) * interval)`` seconds after
``start`` and every agent beats once in it, at its own fixed offset, so the
heartbeats of one tick come out in time order. A tick is computed for all
agents at once with numpy and serialised with orjson, so a million
heartbeats take seconds.

Normal behaviour stays below the seed's threat thresholds (CPU and memory
≤ 90 %, error rate ≤ 15 %, < 0.5 GB sent per hour), so every threat in the
output is one that an :class:`Incident` put there, and the ground truth
(:func:`ground_truth_records`, :func:`write_ground_truth`) names them all.
Incidents change only their own agent's heartbeats inside their own window:
a run with incidents equals the run without them everywhere else.

>>> fleet = FleetSimulator(agents=3, seed=7, start="2026-01-01T00:00:00Z")
>>> beats = fleet.heartbeats(max_heartbeats=6)
>>> [(b["agent_id"], b["timestamp"]) for b in beats[:3]]  # doctest: +NORMALIZE_WHITESPACE
[('agent-000000', '2026-01-01T00:00:06.756Z'), ('agent-000001', '2026-01-01T00:00:09.005Z'),
 ('agent-000002', '2026-01-01T00:00:26.207Z')]
>>> beats[3]["timestamp"]  # the next tick, 30 s later
'2026-01-01T00:00:36.756Z'
>>> sorted(beats[0]) == sorted(HEARTBEAT_FIELDS)
True
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson

from agentwatch.taskworld import TaskWorld, daily_load

#: Field order of a simulated heartbeat (the contract's fields, ``status`` last).
HEARTBEAT_FIELDS = (
    "agent_id",
    "tenant_id",
    "timestamp",
    "cpu_usage",
    "memory_usage",
    "disk_usage",
    "network_latency",
    "active_tasks",
    "completed_tasks",
    "failed_tasks",
    "error_rate",
    "response_time_avg",
    "uptime_seconds",
    "bytes_out",
    "status",
)
#: Metric columns of a :class:`HeartbeatColumns` (everything but ids, time and status).
METRIC_FIELDS = HEARTBEAT_FIELDS[3:-1]
#: Decimals kept per float metric (short JSON numbers).
_DECIMALS = {
    "cpu_usage": 2,
    "memory_usage": 2,
    "disk_usage": 2,
    "network_latency": 2,
    "error_rate": 4,
    "response_time_avg": 1,
    "uptime_seconds": 3,
}
_INT_FIELDS = ("active_tasks", "completed_tasks", "failed_tasks", "bytes_out")

#: Ceilings of normal behaviour, below the seed's threat thresholds.
NORMAL_MAX_PERCENT = 90.0
NORMAL_MAX_ERROR_RATE = 0.15
NORMAL_MAX_BYTES_PER_HOUR = 0.5e9

#: Status of a healthy agent, and the cycle a flapping agent runs through.
NORMAL_STATUS = "active"
FLAPPING_STATES = ("degraded", "offline", "active", "busy")  # all in AGENT_STATES

#: The default start of simulated time.
DEFAULT_START = "2026-01-01T00:00:00Z"
_DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class IncidentKind:
    """What an incident kind does, and how long it lasts unless told otherwise."""

    name: str
    default_duration_s: float
    description: str


#: The injectable incidents, by name.
INCIDENT_KINDS: dict[str, IncidentKind] = {
    kind.name: kind
    for kind in (
        IncidentKind("cpu_spike", 90.0, "CPU jumps to 90–100 % for a short while"),
        IncidentKind(
            "saturation", 900.0, "CPU and memory stay above 95 % (seed: >95 % for 10+ minutes)"
        ),
        IncidentKind("error_burst", 300.0, "error_rate rises above 0.25 (seed: >20 % errors)"),
        IncidentKind("memory_leak", 1800.0, "memory climbs steadily towards 99 %"),
        IncidentKind(
            "exfiltration", 600.0, "intensity × 1.5 GB extra bytes_out in the window (>1 GB/h)"
        ),
        IncidentKind(
            "flapping",
            300.0,
            "status changes at every beat, 2 × intensity beats per interval "
            "(seed: >10 status changes in 5 minutes)",
        ),
        IncidentKind("silence", 300.0, "the agent sends no heartbeats (heartbeat timeout)"),
    )
}

#: Bytes an exfiltration of intensity 1 sends on top of normal traffic.
EXFILTRATION_BYTES = 1.5e9


@dataclass(frozen=True, slots=True)
class Incident:
    """One injected incident: what, to which agent, when (simulated seconds), how hard.

    ``start_s`` counts simulated seconds from the simulation's start; the
    incident covers heartbeats with ``start_s <= t < start_s + duration_s``.

    >>> Incident.parse("cpu_spike:agent-000003:10m:300:1.5")  # doctest: +NORMALIZE_WHITESPACE
    Incident(kind='cpu_spike', agent_id='agent-000003', start_s=600.0, duration_s=300.0,
             intensity=1.5)
    >>> Incident.parse("saturation:agent-000001:1h").duration_s  # the kind's default
    900.0
    """

    kind: str
    agent_id: str
    start_s: float
    duration_s: float
    intensity: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in INCIDENT_KINDS:
            raise ValueError(
                f"unknown incident kind {self.kind!r}; use one of {', '.join(INCIDENT_KINDS)}"
            )
        if self.start_s < 0 or self.duration_s <= 0 or self.intensity <= 0:
            raise ValueError(
                f"incident {self.kind} on {self.agent_id}: start must be ≥ 0, "
                f"duration and intensity > 0 (got {self.start_s}, {self.duration_s}, "
                f"{self.intensity})"
            )

    @property
    def end_s(self) -> float:
        """First simulated second after the incident."""
        return self.start_s + self.duration_s

    @classmethod
    def parse(cls, spec: str) -> Incident:
        """``kind:agent_id:start[:duration[:intensity]]``; times in seconds or 90s/10m/2h/1d."""
        parts = spec.split(":")
        if not 3 <= len(parts) <= 5:
            raise ValueError(
                f"incident {spec!r} is not kind:agent_id:start[:duration[:intensity]] "
                "(e.g. cpu_spike:agent-000003:600:300)"
            )
        kind, agent_id, start = parts[:3]
        if kind not in INCIDENT_KINDS:
            raise ValueError(
                f"unknown incident kind {kind!r} in {spec!r}; "
                f"use one of {', '.join(INCIDENT_KINDS)}"
            )
        duration = (
            parse_duration_s(parts[3])
            if len(parts) > 3
            else INCIDENT_KINDS[kind].default_duration_s
        )
        try:
            intensity = float(parts[4]) if len(parts) > 4 else 1.0
        except ValueError:
            raise ValueError(f"intensity {parts[4]!r} in {spec!r} is not a number") from None
        return cls(kind, agent_id, parse_duration_s(start), duration, intensity)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": _DAY_S, None: 1.0}


def parse_duration_s(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"10m"``, ``"2h"`` or ``"1.5d"``.

    >>> parse_duration_s("10m"), parse_duration_s("1.5h"), parse_duration_s("45")
    (600.0, 5400.0, 45.0)
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; write e.g. 90, 90s, 10m, 2h or 1d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def to_epoch_s(moment: datetime | float | str) -> float:
    """Epoch seconds of a datetime (with zone), ISO-8601 text, or a number.

    >>> to_epoch_s("2026-01-01T00:00:00Z")
    1767225600.0
    """
    if isinstance(moment, int | float):
        return float(moment)
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"start time {moment.isoformat()} has no time zone; add Z or +00:00")
    return moment.timestamp()


def iso_ms(epoch_s: float | np.ndarray) -> str | list[str]:
    """ISO-8601 UTC text with milliseconds and ``Z`` (vectorised for arrays).

    >>> iso_ms(1767225600.5)
    '2026-01-01T00:00:00.500Z'
    """
    millis = np.rint(np.asarray(epoch_s, dtype=np.float64) * 1000.0).astype("datetime64[ms]")
    text = np.datetime_as_string(millis, unit="ms", timezone="UTC")
    return str(text) if text.ndim == 0 else text.tolist()


@dataclass(slots=True)
class HeartbeatColumns:
    """The heartbeats of one tick as columns (one row per heartbeat).

    ``agent`` holds each row's agent index, ``time_s`` its simulated second
    since the start; ``metrics`` holds rounded values, ready to serialise.
    """

    agent: np.ndarray
    time_s: np.ndarray
    agent_id: list[str]
    tenant_id: list[str]
    timestamp: list[str]
    metrics: dict[str, np.ndarray]
    status: list[str]

    def __len__(self) -> int:
        return len(self.agent_id)

    def take(self, rows: np.ndarray) -> HeartbeatColumns:
        """The rows at the given positions (or boolean mask)."""
        positions = np.arange(len(self))[rows]
        return HeartbeatColumns(
            agent=self.agent[positions],
            time_s=self.time_s[positions],
            agent_id=[self.agent_id[i] for i in positions],
            tenant_id=[self.tenant_id[i] for i in positions],
            timestamp=[self.timestamp[i] for i in positions],
            metrics={name: col[positions] for name, col in self.metrics.items()},
            status=[self.status[i] for i in positions],
        )

    def _rows(self, chunk_rows: int = 4096) -> Iterator[tuple]:
        """Row tuples in :data:`HEARTBEAT_FIELDS` order.

        Columns become Python lists a chunk at a time: small lists stay in the
        CPU cache, which makes big ticks (100k agents) three times faster.
        """
        metrics = [self.metrics[name] for name in METRIC_FIELDS]
        for lo in range(0, len(self), chunk_rows):
            hi = lo + chunk_rows
            yield from zip(
                self.agent_id[lo:hi],
                self.tenant_id[lo:hi],
                self.timestamp[lo:hi],
                *(col[lo:hi].tolist() for col in metrics),
                self.status[lo:hi],
                strict=True,
            )

    def to_dicts(self) -> list[dict]:
        """One dict per heartbeat, in :data:`HEARTBEAT_FIELDS` order."""
        return [dict(zip(HEARTBEAT_FIELDS, row, strict=True)) for row in self._rows()]

    def serialize(self) -> tuple[list[bytes], list[bytes]]:
        """Kafka keys (agent ids) and JSON values, one of each per heartbeat."""
        keys: list[bytes] = []
        values: list[bytes] = []
        for chunk_keys, chunk_values in self.serialized_chunks():
            keys += chunk_keys
            values += chunk_values
        return keys, values

    def serialized_chunks(
        self, chunk_rows: int = 4096
    ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Keys and JSON values a chunk of rows at a time.

        Handing each chunk on before making the next keeps memory small and
        warm: serialising a 100k-agent tick in one piece is several times
        slower, because the allocator keeps fetching fresh pages.
        """
        dumps, fields = orjson.dumps, HEARTBEAT_FIELDS
        rows = self._rows(chunk_rows)
        for lo in range(0, len(self), chunk_rows):
            chunk = islice(rows, chunk_rows)
            values = [dumps(dict(zip(fields, row))) for row in chunk]  # noqa: B905
            keys = [agent_id.encode() for agent_id in self.agent_id[lo : lo + chunk_rows]]
            yield keys, values


class FleetSimulator:
    """N agents with personalities, beating every ``heartbeat_interval_s`` of simulated time.

    Deterministic for a seed: the same arguments give the same heartbeats,
    byte for byte. Call :meth:`next_tick` (or iterate :meth:`batches`) to
    advance simulated time one heartbeat interval at a time.

    >>> fleet = FleetSimulator(agents=100, seed=1, incidents=[
    ...     Incident("saturation", "agent-000042", start_s=600, duration_s=900)])
    >>> fleet.tenant_of("agent-000042")
    'tenant-000'
    >>> window = [b for b in fleet.heartbeats(max_heartbeats=100 * 60)
    ...           if b["agent_id"] == "agent-000042"][20:50]  # 600 s … 1500 s
    >>> min(b["cpu_usage"] for b in window) > 95
    True
    """

    def __init__(
        self,
        agents: int,
        *,
        seed: int = 0,
        start: datetime | float | str = DEFAULT_START,
        heartbeat_interval_s: float = 30.0,
        tenants: int | None = None,
        incidents: Iterable[Incident] = (),
    ) -> None:
        if agents < 1:
            raise ValueError(f"a fleet needs at least one agent (got {agents})")
        if heartbeat_interval_s <= 0:
            raise ValueError(f"heartbeat_interval_s must be > 0 (got {heartbeat_interval_s})")
        self.agents = agents
        self.seed = seed
        self.start_epoch_s = to_epoch_s(start)
        self.heartbeat_interval_s = float(heartbeat_interval_s)
        self.tenants = tenants or max(1, math.ceil(agents / 250))
        width = max(6, len(str(agents - 1)))
        self.agent_ids = [f"agent-{i:0{width}d}" for i in range(agents)]
        self._index = {agent_id: i for i, agent_id in enumerate(self.agent_ids)}
        self._rng = np.random.default_rng(seed)
        self._draw_personalities()
        self.tick = 0
        self.world: TaskWorld | None = None  # see attach_tasks
        self.live_active_tasks: np.ndarray | None = None
        self.incidents: list[Incident] = []
        self._effects: list[_Effect] = []
        for incident in incidents:
            self.add_incident(incident)

    # --- who the agents are ----------------------------------------------------
    def _draw_personalities(self) -> None:
        """Draw each agent's fixed traits (vectors of length ``agents``)."""
        rng, n, interval = self._rng, self.agents, self.heartbeat_interval_s
        # Tenants of uneven size (a few big customers, many small ones).
        weights = 1.0 / np.arange(1, self.tenants + 1) ** 0.8
        tenant = rng.choice(self.tenants, size=n, p=weights / weights.sum())
        tenant[: self.tenants] = np.arange(min(n, self.tenants))  # every tenant has an agent
        tenant_names = [f"tenant-{t:03d}" for t in range(self.tenants)]
        self.tenant_ids = [tenant_names[t] for t in tenant]
        # Beat offsets inside the interval, sorted so a tick comes out in time order.
        self.offset_s = np.sort(rng.uniform(0.0, interval, n))
        self.load = rng.beta(2.0, 4.0, n)  # share of capacity in use, on average
        self.cpu_base = 5.0 + 55.0 * self.load
        self.cpu_noise = rng.uniform(0.5, 4.0, n)  # std of CPU points
        self.daily_amplitude = rng.uniform(0.0, 15.0, n)  # CPU points, peak vs. mean
        self.daily_phase = rng.uniform(0.0, 2 * np.pi, n)
        self.memory_base = rng.uniform(20.0, 65.0, n)
        self.disk_base = rng.uniform(10.0, 80.0, n)
        self.latency_base_ms = np.clip(rng.lognormal(np.log(15.0), 0.6, n), 1.0, 200.0)
        self.capacity = rng.integers(2, 12, n)  # tasks an agent can hold at once
        self.tasks_per_s = self.capacity * rng.uniform(0.005, 0.05, n)
        self.error_base = np.clip(rng.beta(1.2, 60.0, n), 0.0, 0.08)
        self.response_base_ms = np.clip(rng.lognormal(np.log(200.0), 0.5, n), 20.0, 2000.0)
        self.bytes_per_s = np.clip(rng.lognormal(np.log(20_000.0), 0.8, n), 1_000.0, 100_000.0)
        uptime = rng.uniform(0.0, 30 * _DAY_S, n)
        self.uptime_at_start_s = np.round(uptime)
        done = rng.poisson(self.tasks_per_s * uptime)
        self.failed_tasks = np.floor(done * self.error_base).astype(np.int64)
        self.completed_tasks = (done - self.failed_tasks).astype(np.int64)

    def tenant_of(self, agent_id: str) -> str:
        """The tenant an agent belongs to."""
        return self.tenant_ids[self.agent_index(agent_id)]

    def agent_index(self, agent_id: str) -> int:
        """Position of an agent in the fleet; a clear error for unknown ids."""
        try:
            return self._index[agent_id]
        except KeyError:
            raise ValueError(
                f"agent {agent_id!r} is not in the fleet "
                f"({self.agent_ids[0]} … {self.agent_ids[-1]})"
            ) from None

    # --- a task world ----------------------------------------------------------
    def attach_tasks(self, world: TaskWorld, utilisation: float) -> None:
        """Let a task world (:mod:`agentwatch.taskworld`, the same agents) drive each
        heartbeat's cpu_usage, memory_usage, response_time_avg, error_rate and active_tasks:
        they then follow the agent's load and hidden traits.

        The load is ``live_active_tasks`` (the tasks each agent runs now) once the task
        stream sets it; before that (history), a draw about ``utilisation`` of the agent's
        capacity, shaped by the daily load, so live load looks like the history did. The
        world's randomness is its own: the fleet's other metrics stay as they were.

        >>> fleet = FleetSimulator(agents=20, seed=1)
        >>> fleet.attach_tasks(TaskWorld(20, seed=1, agent_ids=fleet.agent_ids), 0.5)
        >>> fleet.live_active_tasks = fleet.world.capacity.copy()  # every agent full
        >>> busy = fleet.heartbeats(max_heartbeats=20 * 10)
        >>> [b["active_tasks"] for b in busy[:20]] == fleet.world.capacity.tolist()
        True
        >>> fleet.live_active_tasks[:] = 0  # every agent idle
        >>> idle = fleet.heartbeats(max_heartbeats=20 * 10)
        >>> sum(b["cpu_usage"] for b in busy) > sum(b["cpu_usage"] for b in idle)
        True
        """
        if world.agents[-1].agent_id != self.agent_ids[-1] or len(world.agents) != self.agents:
            raise ValueError("the task world must describe the fleet's own agents (same ids)")
        self.world = world
        self.expected_utilisation = utilisation
        self._world_rng = np.random.default_rng([self.seed, 5])

    def _task_metrics(self, epoch: np.ndarray) -> dict[str, np.ndarray]:
        """The world's metrics of this tick (see :meth:`attach_tasks`)."""
        world = self.world
        if self.live_active_tasks is not None:
            active = np.array(self.live_active_tasks, dtype=np.int64)
        else:
            mean = world.capacity * self.expected_utilisation * daily_load(epoch)
            active = np.minimum(self._world_rng.poisson(mean), world.capacity)
        return world.heartbeat_metrics(active, self._world_rng)

    # --- incidents -------------------------------------------------------------
    def add_incident(self, incident: Incident) -> None:
        """Inject an incident (its window may not have started yet)."""
        agent = self.agent_index(incident.agent_id)
        beats = self.beats_in_window(agent, incident.start_s, incident.end_s)
        per_interval = max(2, round(2 * incident.intensity)) if incident.kind == "flapping" else 1
        extra_bytes = 0
        if incident.kind == "exfiltration" and beats:
            extra_bytes = int(EXFILTRATION_BYTES * incident.intensity / beats)
        self.incidents.append(incident)
        self._effects.append(_Effect(incident, agent, beats, per_interval, extra_bytes))

    def beats_in_window(self, agent: int, start_s: float, end_s: float) -> int:
        """How many regular heartbeats of an agent fall in ``[start_s, end_s)``."""
        offset, interval = float(self.offset_s[agent]), self.heartbeat_interval_s
        first = max(0, math.ceil((start_s - offset) / interval))
        after = max(0, math.ceil((end_s - offset) / interval))
        return max(0, after - first)

    def _heartbeats_in_window(self, effect: _Effect) -> int:
        """Heartbeats the agent sends in the window (flapping adds sub-interval beats)."""
        incident, interval = effect.incident, self.heartbeat_interval_s
        if incident.kind == "silence":
            return 0
        if effect.per_interval == 1:
            return effect.beats
        offset = float(self.offset_s[effect.agent])
        first = max(0, math.ceil((incident.start_s - offset) / interval))
        beat_times = (offset + (first + j) * interval for j in range(effect.beats))
        k = effect.per_interval
        return sum(
            1 + sum(1 for m in range(1, k) if t + m * interval / k < incident.end_s)
            for t in beat_times
        )

    def incident_parameters(self, incident: Incident) -> dict[str, object]:
        """What an incident does, in numbers (for the ground truth)."""
        effect = next(e for e in self._effects if e.incident is incident)
        parameters: dict[str, object] = {
            "intensity": incident.intensity,
            "heartbeats_in_window": self._heartbeats_in_window(effect),
            "description": INCIDENT_KINDS[incident.kind].description,
        }
        if incident.kind == "exfiltration":
            parameters["extra_bytes_out"] = effect.extra_bytes * effect.beats
        elif incident.kind == "flapping":
            parameters["heartbeats_per_interval"] = effect.per_interval
            parameters["states"] = list(FLAPPING_STATES)
        elif incident.kind == "silence":
            parameters["heartbeats_missing"] = effect.beats
        return parameters

    # --- time --------------------------------------------------------------------
    @property
    def now_s(self) -> float:
        """Simulated seconds since the start at which the next tick begins."""
        return self.tick * self.heartbeat_interval_s

    def next_tick(self) -> HeartbeatColumns:
        """Every agent's heartbeat for the next interval, as columns."""
        n, interval = self.agents, self.heartbeat_interval_s
        tick_start = self.tick * interval
        self.tick += 1
        time_s = tick_start + self.offset_s
        epoch = self.start_epoch_s + time_s
        # A fixed amount of randomness per tick, drawn before incidents touch
        # anything: an incident never shifts the random stream of other agents.
        z = self._rng.standard_normal((8, n))
        u = self._rng.random((2, n))
        active = self._rng.poisson(self.capacity * self.load)

        day = 2 * np.pi * (epoch % _DAY_S) / _DAY_S + self.daily_phase
        cpu = self.cpu_base + self.daily_amplitude * np.sin(day) + self.cpu_noise * z[0]
        cpu = np.clip(cpu, 0.5, NORMAL_MAX_PERCENT)
        busy = cpu / 100.0
        memory = self.memory_base + 0.15 * (cpu - self.cpu_base) + 0.3 * self.cpu_noise * z[1]
        memory = np.clip(memory, 1.0, NORMAL_MAX_PERCENT)
        disk = np.clip(self.disk_base + 0.1 * z[2], 0.0, NORMAL_MAX_PERCENT)
        latency = self.latency_base_ms * np.exp(0.15 * z[3]) * (1.0 + 0.5 * busy**2)
        error_rate = np.clip(self.error_base * np.exp(0.3 * z[4]), 0.0, NORMAL_MAX_ERROR_RATE)
        response = self.response_base_ms * (1.0 + 2.0 * busy**3) * np.exp(0.1 * z[5])
        attempts = np.floor(
            self.tasks_per_s * interval * (0.5 + busy) * np.exp(0.3 * z[6]) + u[0]
        ).astype(np.int64)
        bytes_cap = NORMAL_MAX_BYTES_PER_HOUR / 3600.0 * interval
        bytes_out = np.minimum(self.bytes_per_s * interval * np.exp(0.3 * z[7]), bytes_cap)
        bytes_out = bytes_out.astype(np.int64)

        columns = {
            "cpu_usage": cpu,
            "memory_usage": memory,
            "disk_usage": disk,
            "network_latency": latency,
            "error_rate": error_rate,
            "response_time_avg": response,
            "bytes_out": bytes_out,
            "active_tasks": active,
        }
        if self.world is not None:
            columns.update(self._task_metrics(epoch))
        status = np.full(n, NORMAL_STATUS, dtype=object)
        keep = np.ones(n, dtype=bool)
        flapping: list[tuple[_Effect, int]] = []
        for effect in self._effects:
            incident, agent = effect.incident, effect.agent
            t = time_s[agent]
            if not incident.start_s <= t < incident.end_s:
                continue
            beat = int((t - incident.start_s) // interval)  # 0, 1, … within the window
            _apply(effect, columns, z[:, agent], (t - incident.start_s) / incident.duration_s)
            if incident.kind == "silence":
                keep[agent] = False
            elif incident.kind == "flapping":
                status[agent] = FLAPPING_STATES[(beat * effect.per_interval) % len(FLAPPING_STATES)]
                flapping.append((effect, beat))

        failed = np.floor(attempts * columns["error_rate"] + u[1]).astype(np.int64)
        failed = np.minimum(failed, attempts)
        self.failed_tasks += failed
        self.completed_tasks += attempts - failed
        columns["completed_tasks"] = self.completed_tasks.copy()
        columns["failed_tasks"] = self.failed_tasks.copy()
        columns["uptime_seconds"] = self.uptime_at_start_s + time_s

        metrics = {
            name: np.round(columns[name], _DECIMALS[name])
            if name in _DECIMALS
            else columns[name].astype(np.int64)
            for name in METRIC_FIELDS
        }
        batch = HeartbeatColumns(
            agent=np.arange(n),
            time_s=time_s,
            agent_id=self.agent_ids,
            tenant_id=self.tenant_ids,
            timestamp=iso_ms(epoch),
            metrics=metrics,
            status=status.tolist(),
        )
        if flapping:
            batch = self._add_flapping_beats(batch, flapping)
        if not keep.all():
            batch = batch.take(np.concatenate([keep, np.ones(len(batch) - n, dtype=bool)]))
        return batch

    def _add_flapping_beats(
        self, batch: HeartbeatColumns, flapping: list[tuple[_Effect, int]]
    ) -> HeartbeatColumns:
        """Extra heartbeats of flapping agents inside the interval, each with a new status.

        The agent's bytes of the interval are split over its beats. The extra
        rows come after the tick's regular rows; per agent they stay in order.
        """
        rows, times, statuses, shares = [], [], [], []
        interval = self.heartbeat_interval_s
        for effect, beat in flapping:
            agent, k = effect.agent, effect.per_interval
            t0 = float(batch.time_s[agent])
            sub_times = [t0 + m * interval / k for m in range(1, k)]
            sub_times = [t for t in sub_times if t < effect.incident.end_s]
            total = int(batch.metrics["bytes_out"][agent])
            share = total // k
            batch.metrics["bytes_out"][agent] = total - share * len(sub_times)
            for m, t in enumerate(sub_times, start=1):
                rows.append(agent)
                times.append(t)
                statuses.append(FLAPPING_STATES[(beat * k + m) % len(FLAPPING_STATES)])
                shares.append(share)
        if not rows:
            return batch
        extra = batch.take(np.asarray(rows))
        extra.time_s = np.asarray(times)
        extra.timestamp = iso_ms(self.start_epoch_s + extra.time_s)
        extra.status = statuses
        extra.metrics["uptime_seconds"] = np.round(
            self.uptime_at_start_s[extra.agent] + extra.time_s, _DECIMALS["uptime_seconds"]
        )
        extra.metrics["bytes_out"] = np.asarray(shares, dtype=np.int64)
        return _concat(batch, extra)

    def batches(
        self, *, max_heartbeats: int | None = None, until_s: float | None = None
    ) -> Iterator[HeartbeatColumns]:
        """Ticks until ``max_heartbeats`` were produced or simulated time reached ``until_s``.

        With neither limit it runs forever. The last batch is cut to the limit.
        """
        produced = 0
        while max_heartbeats is None or produced < max_heartbeats:
            if until_s is not None and self.now_s >= until_s:
                return
            batch = self.next_tick()
            if until_s is not None and len(batch) and batch.time_s.max() >= until_s:
                batch = batch.take(batch.time_s < until_s)
            if max_heartbeats is not None and produced + len(batch) > max_heartbeats:
                batch = batch.take(np.arange(max_heartbeats - produced))
            produced += len(batch)
            if len(batch):
                yield batch

    def heartbeats(
        self, *, max_heartbeats: int | None = None, until_s: float | None = None
    ) -> list[dict]:
        """Heartbeats as dicts (convenient for tests; use :meth:`batches` for speed)."""
        if max_heartbeats is None and until_s is None:
            raise ValueError("give max_heartbeats or until_s, or iterate batches() instead")
        return [
            beat
            for batch in self.batches(max_heartbeats=max_heartbeats, until_s=until_s)
            for beat in batch.to_dicts()
        ]


@dataclass(frozen=True, slots=True)
class _Effect:
    """An incident resolved against the fleet: its agent's index and its numbers."""

    incident: Incident
    agent: int
    beats: int  # regular heartbeats of the agent inside the window
    per_interval: int  # heartbeats per interval while it lasts (flapping: ≥ 2)
    extra_bytes: int  # exfiltration: extra bytes_out per regular heartbeat


def _apply(effect: _Effect, columns: dict[str, np.ndarray], z: np.ndarray, progress: float) -> None:
    """Change one agent's metrics for one heartbeat inside an incident's window.

    ``z`` is the agent's standard-normal draws of this tick (reused so the
    incident costs no randomness); ``progress`` runs from 0 to 1 over the window.
    """
    incident, agent, intensity = effect.incident, effect.agent, effect.incident.intensity
    jitter = 1.0 / (1.0 + math.exp(-float(z[0])))  # in (0, 1), varies per beat
    if incident.kind == "cpu_spike":
        columns["cpu_usage"][agent] = min(100.0, 90.0 + 8.0 * min(intensity, 1.0) + 2.0 * jitter)
        columns["response_time_avg"][agent] *= 1.0 + 0.5 * intensity
    elif incident.kind == "saturation":
        columns["cpu_usage"][agent] = min(100.0, 96.0 + 3.0 * min(intensity, 1.3) * jitter)
        memory_jitter = 1.0 / (1.0 + math.exp(-float(z[1])))
        columns["memory_usage"][agent] = min(
            100.0, 96.0 + 3.0 * min(intensity, 1.3) * memory_jitter
        )
        columns["response_time_avg"][agent] *= 1.0 + intensity
    elif incident.kind == "error_burst":
        columns["error_rate"][agent] = min(1.0, 0.25 + 0.5 * intensity * (0.8 + 0.4 * jitter))
    elif incident.kind == "memory_leak":
        normal = columns["memory_usage"][agent]
        climb = (99.0 - normal) * progress * min(intensity, 1.0)
        columns["memory_usage"][agent] = min(99.5, normal + climb)
    elif incident.kind == "exfiltration":
        columns["bytes_out"][agent] += effect.extra_bytes


def _concat(first: HeartbeatColumns, second: HeartbeatColumns) -> HeartbeatColumns:
    """Rows of ``first`` followed by rows of ``second``."""
    return HeartbeatColumns(
        agent=np.concatenate([first.agent, second.agent]),
        time_s=np.concatenate([first.time_s, second.time_s]),
        agent_id=first.agent_id + second.agent_id,
        tenant_id=first.tenant_id + second.tenant_id,
        timestamp=first.timestamp + second.timestamp,
        metrics={
            name: np.concatenate([col, second.metrics[name]]) for name, col in first.metrics.items()
        },
        status=first.status + second.status,
    )


class IncidentWindow(NamedTuple):
    """Room for ``count`` incidents: each starts at or after ``not_before_s`` and ends by ``end_s``.

    Times are simulated seconds since the start of the simulation.
    """

    count: int
    not_before_s: float
    end_s: float


def plan_incidents(
    agent_ids: Sequence[str],
    count: int,
    span_s: float,
    *,
    seed: int = 0,
    kinds: Sequence[str] | None = None,
    not_before_s: float = 0.0,
) -> list[Incident]:
    """``count`` random incidents in simulated time ``[not_before_s, span_s)``.

    Kinds take turns (every kind appears once ``count`` ≥ the number of kinds),
    each incident gets its own agent while agents last, lasts its kind's
    default duration (shortened to fit the span) and has an intensity in
    1.0–1.5, so each crosses the seed's threshold for its kind.

    >>> plan = plan_incidents([f"agent-{i:06d}" for i in range(50)], 3, 7200, seed=1)
    >>> [(i.kind, i.agent_id, i.start_s) for i in plan]  # doctest: +NORMALIZE_WHITESPACE
    [('flapping', 'agent-000020', 3792.0), ('cpu_spike', 'agent-000041', 5357.0),
     ('saturation', 'agent-000013', 2077.0)]
    """
    window = IncidentWindow(count, not_before_s, span_s)
    return plan_incidents_in_windows(agent_ids, [window], seed=seed, kinds=kinds)


def plan_incidents_in_windows(
    agent_ids: Sequence[str],
    windows: Sequence[IncidentWindow],
    *,
    seed: int = 0,
    kinds: Sequence[str] | None = None,
) -> list[Incident]:
    """Random incidents in several windows of simulated time, e.g. some in history, some live.

    As :func:`plan_incidents` (which is this with one window): kinds take
    turns across all the windows, in window order, and every incident gets
    its own agent while agents last.

    >>> agents = [f"agent-{i:06d}" for i in range(50)]
    >>> windows = [IncidentWindow(2, 3600, 7200), IncidentWindow(1, 9000, 9600)]
    >>> [(i.kind, i.start_s) for i in plan_incidents_in_windows(agents, windows, seed=1)]
    [('flapping', 5414.0), ('cpu_spike', 6245.0), ('saturation', 9000.0)]
    """
    kinds = list(kinds or INCIDENT_KINDS)
    for kind in kinds:
        if kind not in INCIDENT_KINDS:
            raise ValueError(
                f"unknown incident kind {kind!r}; use one of {', '.join(INCIDENT_KINDS)}"
            )
    count = sum(window.count for window in windows)
    if count <= 0:
        return []
    for window in windows:
        if window.count > 0 and window.end_s <= window.not_before_s:
            raise ValueError(
                f"no room for incidents: they may start at {window.not_before_s:g} s but the "
                f"run lasts {window.end_s:g} s of simulated time"
            )
    rng = np.random.default_rng(seed)
    order = [kinds[i] for i in rng.permutation(len(kinds))]
    agents = rng.choice(len(agent_ids), size=count, replace=count > len(agent_ids))
    plan: list[Incident] = []
    for window in windows:
        room = window.end_s - window.not_before_s
        for _ in range(window.count):
            n = len(plan)
            kind = order[n % len(order)]
            duration = min(INCIDENT_KINDS[kind].default_duration_s, room)
            start = window.not_before_s + float(rng.uniform(0.0, room - duration))
            intensity = round(float(rng.uniform(1.0, 1.5)), 2)
            plan.append(
                Incident(kind, agent_ids[int(agents[n])], float(round(start)), duration, intensity)
            )
    return plan


def ground_truth_records(fleet: FleetSimulator) -> list[dict[str, object]]:
    """One record per injected incident: kind, agent, tenant, window and parameters.

    >>> fleet = FleetSimulator(5, start="2026-01-01T00:00:00Z",
    ...     incidents=[Incident("error_burst", "agent-000002", 600, 300)])
    >>> record = ground_truth_records(fleet)[0]
    >>> record["start"], record["end"], record["end_epoch"] - record["start_epoch"]
    ('2026-01-01T00:10:00.000Z', '2026-01-01T00:15:00.000Z', 300.0)
    """
    records = []
    for incident in fleet.incidents:
        start = fleet.start_epoch_s + incident.start_s
        end = fleet.start_epoch_s + incident.end_s
        records.append(
            {
                "kind": incident.kind,
                "agent_id": incident.agent_id,
                "tenant_id": fleet.tenant_of(incident.agent_id),
                "start": iso_ms(start),
                "end": iso_ms(end),
                "start_epoch": start,
                "end_epoch": end,
                "start_s": incident.start_s,
                "duration_s": incident.duration_s,
                "parameters": fleet.incident_parameters(incident),
            }
        )
    return records


def write_ground_truth(path: Path | str, fleet: FleetSimulator) -> int:
    """Write the fleet's incidents as JSON lines to ``path``; return how many."""
    records = ground_truth_records(fleet)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return len(records)
