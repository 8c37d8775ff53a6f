"""The fleet simulator: deterministic, always valid, incidents where the ground truth says."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agentwatch.simulator import (
    EXFILTRATION_BYTES,
    FLAPPING_STATES,
    INCIDENT_KINDS,
    NORMAL_MAX_BYTES_PER_HOUR,
    FleetSimulator,
    Incident,
    IncidentWindow,
    ground_truth_records,
    plan_incidents,
    plan_incidents_in_windows,
    write_ground_truth,
)
from schemas.heartbeats import parse_heartbeats
from schemas.models import AGENT_STATES, Heartbeat

START = "2026-03-01T00:00:00Z"
START_EPOCH = datetime.fromisoformat("2026-03-01T00:00:00+00:00").timestamp()
ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def epoch(beat: dict) -> float:
    return datetime.fromisoformat(beat["timestamp"].replace("Z", "+00:00")).timestamp()


def sim_time(beat: dict) -> float:
    return epoch(beat) - START_EPOCH


def by_agent(beats: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for beat in beats:
        grouped[beat["agent_id"]].append(beat)
    return {agent: sorted(rows, key=epoch) for agent, rows in grouped.items()}


def serialized(fleet: FleetSimulator, ticks: int) -> list[bytes]:
    values: list[bytes] = []
    for batch in fleet.batches(until_s=ticks * fleet.heartbeat_interval_s):
        values += batch.serialize()[1]
    return values


# --- determinism -------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    def fleet(seed: int) -> FleetSimulator:
        agents = [f"agent-{i:06d}" for i in range(200)]
        return FleetSimulator(
            200, seed=seed, start=START, incidents=plan_incidents(agents, 7, 1800, seed=seed)
        )

    first, again, other = (
        serialized(fleet(5), 60),
        serialized(fleet(5), 60),
        serialized(fleet(6), 60),
    )
    assert first == again
    assert len(first) >= 200 * 60 - 200  # silence removes a few
    assert first != other


def test_batches_stop_at_the_count_or_the_simulated_time() -> None:
    fleet = FleetSimulator(100, seed=1, start=START)
    assert sum(len(b) for b in fleet.batches(max_heartbeats=1234)) == 1234
    fleet = FleetSimulator(100, seed=1, start=START)
    times = np.concatenate([b.time_s for b in fleet.batches(until_s=95.0)])
    assert times.max() < 95.0
    assert len(times) == sum(fleet.beats_in_window(a, 0.0, 95.0) for a in range(100))


# --- every heartbeat is valid --------------------------------------------------------------


def test_every_heartbeat_passes_the_contract_even_during_incidents() -> None:
    agents = [f"agent-{i:06d}" for i in range(150)]
    incidents = plan_incidents(agents, 2 * len(INCIDENT_KINDS), 3 * 3600, seed=3)
    fleet = FleetSimulator(150, seed=3, start=START, incidents=incidents)
    values = serialized(fleet, 360)
    for lo in range(0, len(values), 20_000):
        batch, rejected = parse_heartbeats(values[lo : lo + 20_000])
        assert rejected == []
        assert len(batch) == len(values[lo : lo + 20_000])
    beats = [orjson.loads(v) for v in values]
    for beat in beats[:: len(beats) // 500]:
        Heartbeat.model_validate(beat)
        assert ISO_MS_Z.match(beat["timestamp"])
    for rows in by_agent(beats).values():
        for field in ("completed_tasks", "failed_tasks", "uptime_seconds"):
            series = [row[field] for row in rows]
            assert series == sorted(series), f"{field} must never decrease"
        assert all(row["status"] in AGENT_STATES for row in rows)


@settings(max_examples=25, deadline=None)
@example(seed=0, agents=1, interval=1.0, kind="silence", intensity=1.0)  # a tick with no beats
@given(
    seed=st.integers(0, 2**32 - 1),
    agents=st.integers(1, 40),
    interval=st.floats(1.0, 300.0),
    kind=st.sampled_from(sorted(INCIDENT_KINDS)),
    intensity=st.floats(0.05, 20.0),
)
def test_any_fleet_and_incident_give_valid_heartbeats(
    seed: int, agents: int, interval: float, kind: str, intensity: float
) -> None:
    incident = Incident(kind, "agent-000000", interval, 4 * interval, intensity)
    fleet = FleetSimulator(
        agents, seed=seed, start=START, heartbeat_interval_s=interval, incidents=[incident]
    )
    values = serialized(fleet, 8)
    _, rejected = parse_heartbeats(values)
    assert rejected == []


def test_normal_behaviour_stays_below_the_seeds_thresholds_and_follows_a_daily_cycle() -> None:
    fleet = FleetSimulator(100, seed=11, start=START)
    cpu, memory, errors, sent, hours = [], [], [], [], []
    for batch in fleet.batches(until_s=86_400.0):
        cpu.append(batch.metrics["cpu_usage"])
        memory.append(batch.metrics["memory_usage"])
        errors.append(batch.metrics["error_rate"])
        sent.append(batch.metrics["bytes_out"])
        hours.append(batch.time_s // 3600)
        assert set(batch.status) == {"active"}
    cpu, memory, errors = np.array(cpu), np.array(memory), np.array(errors)
    assert cpu.max() <= 90 and memory.max() <= 90 and errors.max() <= 0.15
    hourly_bytes = np.array(sent).reshape(24, -1, 100).sum(axis=1)  # 120 beats an hour
    assert hourly_bytes.max() <= NORMAL_MAX_BYTES_PER_HOUR
    # The agent with the widest daily cycle: its hourly means swing by about twice its amplitude.
    agent = int(np.argmax(fleet.daily_amplitude))
    hourly_cpu = cpu[:, agent].reshape(24, -1).mean(axis=1)
    assert np.ptp(hourly_cpu) > fleet.daily_amplitude[agent]
    # Personalities differ: mean CPU per agent spreads widely.
    assert np.ptp(cpu.mean(axis=0)) > 20


# --- incidents ---------------------------------------------------------------------------

AGENT = "agent-000007"
WINDOW_START = 1800.0


def run_with_and_without(
    kind: str, intensity: float = 1.0
) -> tuple[list[dict], list[dict], Incident]:
    duration = INCIDENT_KINDS[kind].default_duration_s
    incident = Incident(kind, AGENT, WINDOW_START, duration, intensity)
    until = WINDOW_START + duration + 1800.0
    plain = FleetSimulator(50, seed=9, start=START).heartbeats(until_s=until)
    injected = FleetSimulator(50, seed=9, start=START, incidents=[incident])
    return plain, injected.heartbeats(until_s=until), incident


def inside(beat: dict, incident: Incident) -> bool:
    return (
        beat["agent_id"] == incident.agent_id
        and incident.start_s <= sim_time(beat) < incident.end_s
    )


@pytest.mark.parametrize("kind", sorted(INCIDENT_KINDS))
def test_an_incident_changes_nothing_outside_its_agent_and_window(kind: str) -> None:
    plain, injected, incident = run_with_and_without(kind)
    key = lambda beat: (beat["agent_id"], beat["timestamp"])  # noqa: E731
    plain_outside = {key(b): b for b in plain if not inside(b, incident)}
    injected_outside = {key(b): b for b in injected if not inside(b, incident)}
    assert plain_outside.keys() == injected_outside.keys()
    for k, beat in plain_outside.items():
        other = dict(injected_outside[k])
        if kind == "error_burst" and k[0] == AGENT:  # more failures stay counted afterwards
            for counter in ("completed_tasks", "failed_tasks"):
                other[counter] = beat[counter]
        assert other == beat, k


def window_of(beats: list[dict], incident: Incident) -> list[dict]:
    return sorted((b for b in beats if inside(b, incident)), key=epoch)


def test_cpu_spike_raises_cpu_for_a_short_while() -> None:
    plain, injected, incident = run_with_and_without("cpu_spike")
    during, before = window_of(injected, incident), window_of(plain, incident)
    assert len(during) == 3
    assert min(b["cpu_usage"] for b in during) >= 90 > max(b["cpu_usage"] for b in before)


def test_saturation_keeps_cpu_and_memory_above_95_for_over_ten_minutes() -> None:
    _, injected, incident = run_with_and_without("saturation")
    during = window_of(injected, incident)
    assert sim_time(during[-1]) - sim_time(during[0]) >= 600
    assert min(min(b["cpu_usage"], b["memory_usage"]) for b in during) > 95


def test_error_burst_raises_the_error_rate_and_the_failures() -> None:
    plain, injected, incident = run_with_and_without("error_burst")
    during, before = window_of(injected, incident), window_of(plain, incident)
    assert min(b["error_rate"] for b in during) > 0.2
    failed = lambda rows: rows[-1]["failed_tasks"] - rows[0]["failed_tasks"]  # noqa: E731
    assert failed(during) > failed(before)


def test_memory_leak_climbs_steadily() -> None:
    _, injected, incident = run_with_and_without("memory_leak")
    during = window_of(injected, incident)
    memory = np.array([b["memory_usage"] for b in during])
    assert memory[-1] - memory[0] > 20
    assert np.corrcoef(np.arange(len(memory)), memory)[0, 1] > 0.95


def test_exfiltration_sends_more_than_a_gigabyte_within_the_hour() -> None:
    plain, injected, incident = run_with_and_without("exfiltration", intensity=1.2)
    extra = sum(b["bytes_out"] for b in window_of(injected, incident)) - sum(
        b["bytes_out"] for b in window_of(plain, incident)
    )
    assert incident.duration_s <= 3600
    assert extra == pytest.approx(EXFILTRATION_BYTES * 1.2, rel=1e-6)
    assert extra > 1e9


def test_flapping_changes_status_at_every_beat_more_than_ten_times_in_five_minutes() -> None:
    _, injected, incident = run_with_and_without("flapping")
    during = window_of(injected, incident)
    statuses = [b["status"] for b in during]
    assert all(a != b for a, b in zip(statuses, statuses[1:], strict=False))
    assert set(statuses) <= set(FLAPPING_STATES) <= set(AGENT_STATES)
    first_five_minutes = [b for b in during if sim_time(b) < incident.start_s + 300]
    assert len(first_five_minutes) - 1 > 10
    times = [epoch(b) for b in by_agent(injected)[AGENT]]
    assert times == sorted(times)


def test_silence_sends_nothing_in_its_window() -> None:
    plain, injected, incident = run_with_and_without("silence")
    assert window_of(injected, incident) == []
    assert len(window_of(plain, incident)) == incident.duration_s // 30


# --- the ground truth and the incident plan ----------------------------------------------


def test_ground_truth_names_every_incident_with_its_window_and_parameters(tmp_path) -> None:
    incidents = [
        Incident("exfiltration", "agent-000003", 600, 600, 2.0),
        Incident("flapping", "agent-000004", 900, 300),
        Incident("saturation", "agent-000005", 60, 900),
    ]
    fleet = FleetSimulator(20, seed=2, start=START, incidents=incidents)
    path = tmp_path / "truth" / "ground_truth.jsonl"
    assert write_ground_truth(path, fleet) == 3
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert records == orjson.loads(orjson.dumps(ground_truth_records(fleet)))
    beats = fleet.heartbeats(until_s=2400)
    for record, incident in zip(records, incidents, strict=True):
        assert record["kind"] == incident.kind and record["agent_id"] == incident.agent_id
        assert record["tenant_id"] == fleet.tenant_of(incident.agent_id)
        assert record["start_epoch"] == START_EPOCH + incident.start_s
        assert record["end_epoch"] == START_EPOCH + incident.end_s
        assert datetime.fromisoformat(record["start"]).timestamp() == record["start_epoch"]
        assert datetime.fromisoformat(record["end"]).timestamp() == record["end_epoch"]
        assert ISO_MS_Z.match(record["start"]) and ISO_MS_Z.match(record["end"])
        in_window = [b for b in beats if inside(b, incident)]
        assert record["parameters"]["heartbeats_in_window"] == len(in_window)
        assert record["parameters"]["intensity"] == incident.intensity
    assert records[0]["parameters"]["extra_bytes_out"] == pytest.approx(3e9, rel=1e-6)
    assert records[1]["parameters"]["heartbeats_per_interval"] == 2
    assert records[2]["parameters"]["heartbeats_in_window"] == 30


def test_planned_incidents_cover_every_kind_on_distinct_agents_inside_the_span() -> None:
    agents = [f"agent-{i:06d}" for i in range(100)]
    plan = plan_incidents(agents, 14, 6 * 3600, seed=4, not_before_s=3600)
    assert plan == plan_incidents(agents, 14, 6 * 3600, seed=4, not_before_s=3600)
    assert sorted(i.kind for i in plan) == sorted(list(INCIDENT_KINDS) * 2)
    assert len({i.agent_id for i in plan}) == 14
    assert all(i.start_s >= 3600 and i.end_s <= 6 * 3600 for i in plan)
    short = plan_incidents(agents, 3, 600, kinds=["memory_leak"], seed=1)
    assert all(i.end_s <= 600 for i in short)
    with pytest.raises(ValueError, match="no room"):
        plan_incidents(agents, 1, 600, not_before_s=600)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cpu_spike:agent-000001", "kind:agent_id:start"),
        ("meltdown:agent-000001:60", "unknown incident kind 'meltdown'"),
        ("cpu_spike:agent-000001:soon", "'soon' is not a duration"),
        ("cpu_spike:agent-000001:60:30:lots", "intensity 'lots'"),
        ("cpu_spike:agent-000001:60:0", "duration and intensity > 0"),
    ],
)
def test_bad_incident_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Incident.parse(spec)


def test_an_incident_for_an_unknown_agent_names_the_fleets_range() -> None:
    with pytest.raises(ValueError, match="agent-000000 … agent-000009"):
        FleetSimulator(10, incidents=[Incident("cpu_spike", "agent-999999", 0, 60)])


def test_incidents_planned_in_windows_stay_inside_them_on_distinct_agents() -> None:
    agents = [f"agent-{i:06d}" for i in range(500)]
    windows = [IncidentWindow(4, 86_400, 90_000), IncidentWindow(3, 90_180, 90_900)]
    plan = plan_incidents_in_windows(agents, windows, seed=1)
    assert plan == plan_incidents_in_windows(agents, windows, seed=1)  # deterministic
    assert sorted(i.kind for i in plan) == sorted(INCIDENT_KINDS)  # every kind once
    assert len({i.agent_id for i in plan}) == 7
    history, live = plan[:4], plan[4:]
    assert all(86_400 <= i.start_s < i.end_s <= 90_000.5 for i in history)
    assert all(90_180 <= i.start_s < i.end_s <= 90_900.5 for i in live)
    # One window is plan_incidents itself.
    assert plan_incidents(agents, 3, 7200, seed=2, not_before_s=600) == plan_incidents_in_windows(
        agents, [IncidentWindow(3, 600, 7200)], seed=2
    )


def test_a_backfilled_fleet_starts_that_long_ago_with_the_same_incidents_for_a_seed() -> None:
    from agentwatch.settings import Settings as AgentwatchSettings
    from infra.simulate import SimulationOptions, build_fleet

    options = SimulationOptions(agents=500, seed=3, random_incidents=7, backfill_s=25 * 3600)
    first = build_fleet(AgentwatchSettings(), options)
    again = build_fleet(AgentwatchSettings(), options)
    assert abs(first.start_epoch_s - (datetime.now().timestamp() - 25 * 3600)) < 2
    assert first.incidents == again.incidents
    assert sum(i.start_s < 25 * 3600 for i in first.incidents) == 4
