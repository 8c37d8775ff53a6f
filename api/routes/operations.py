"""Planning routes: load balancing (``POST /api/v1/operations/optimize-load``), the
maintenance schedule (``GET``/``POST /api/v1/maintenance/schedule``) and the capacity
forecast (``GET /api/v1/capacity/forecast``). docs/orchestration-plan.md.

Each reads the fleet from ClickHouse (:mod:`api.plan_queries`), plans with a pure domain
module (:mod:`agentwatch.planning`, :mod:`agentwatch.maintenance`,
:mod:`agentwatch.forecast`) and, when asked to apply, publishes the plan's commands on
``agents.control`` in one batch. A key of one tenant plans for its tenant only (naming
another: 403); a key of every tenant plans for every tenant unless it names one, and
tasks never cross tenants either way.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from agentwatch import forecast as forecasting
from agentwatch.lifecycle import State
from agentwatch.maintenance import (
    HourlyLoad,
    MaintenanceCandidate,
    hourly_profile,
    schedule_maintenance,
)
from agentwatch.planning import AgentLoad, TargetScore, move_commands, plan_moves
from api import plan_queries
from api.errors import error_responses
from api.identity import actor_of, tenant_filter
from api.params import TenantFilter
from api.routes.agents import lifecycle_refusal
from api.runtime import API_PREFIX, ActorHeader, Operator, Reader, Runtime, RuntimeDep
from schemas.events import MAINTENANCE_REQUESTED
from schemas.models import Identifier, Label, LifecycleEvent, ScoreComponents

log = logging.getLogger("api.operations")

router = APIRouter(tags=["operations"])

#: Who a move's ``task_assigned`` says decided it (``TaskAssignment.assigned_by``).
PLANNER = "optimize-load"
#: States whose agents count in their group's capacity (unknown: counted, as active).
IN_SERVICE = frozenset({State.ACTIVE, State.IDLE, State.BUSY, State.DEGRADED})


def _in_service(state: str | None) -> bool:
    return state is None or state in IN_SERVICE


def _publish(runtime: Runtime, events: list[tuple[dict, str]]) -> list[str | None]:
    """Publish ``events`` as one batch; 503 when the broker took none of them."""
    if not events:
        return []
    outcome = runtime.publisher.publish_many(events)
    if all(reason is not None for reason in outcome):
        raise HTTPException(
            503,
            detail=f"nothing was published to agents.control ({outcome[0]}); check that the "
            "broker runs (AGENTWATCH_BOOTSTRAP_SERVERS) and retry",
        )
    return outcome


# --- load balancing ------------------------------------------------------------------


class OptimizeLoadRequest(BaseModel):
    """What to balance, and whether to carry it out."""

    model_config = ConfigDict(extra="forbid")

    dry_run: StrictBool = Field(
        True, description="True (the default): only the plan. False: publish its commands."
    )
    tenant_id: Identifier | None = Field(
        None,
        description="The tenant to balance; a tenant key's own when absent, every "
        "tenant for a key of every tenant.",
    )


class PlannedMove(BaseModel):
    task_id: str
    tenant_id: str
    source: str = Field(description="The overloaded agent the task leaves.")
    target: str = Field(description="The underloaded agent that takes it.")
    reason: str
    source_load_before: float
    source_load_after: float
    target_load_before: float
    target_load_after: float
    published: bool | None = Field(
        None, description="Applied only: both commands are in the log (None on a dry run)."
    )
    error: str | None = Field(None, description="Applied only: why not (published false).")


class StuckTask(BaseModel):
    task_id: str
    agent_id: str
    reason: str = Field(description="Why no agent can take it.")


class LoadThresholds(BaseModel):
    overloaded_above: float
    underloaded_below: float


class OptimizeLoadResult(BaseModel):
    """The plan (and, when applied, what was published)."""

    dry_run: bool
    tenant_id: str | None = Field(description="The tenant planned for (None: every tenant).")
    thresholds: LoadThresholds
    agents: int = Field(description="Agents considered.")
    open_tasks: int = Field(description="Accepted, unfinished tasks considered.")
    overloaded: list[str] = Field(description="Agents above the threshold, most loaded first.")
    underloaded: int = Field(description="Running agents below the lower threshold.")
    moves: list[PlannedMove]
    stuck: list[StuckTask] = Field(description="Tasks of overloaded agents that stay, and why.")
    loads_before: dict[str, float] = Field(description="Load of each agent a move touches.")
    loads_after: dict[str, float]
    note: str


DRY_RUN_NOTE = 'dry run: nothing was published; post {"dry_run": false} to apply these moves'
APPLIED_NOTE = (
    "applied: per move a task_released (to the source) and a task_assigned (to the target, "
    "attempt + 1, moved_from) are on agents.control; the target's shard accepts or refuses "
    "the task (a refusal is not retried: see GET /api/v1/tasks/{id})"
)


@router.post(
    f"{API_PREFIX}/operations/optimize-load",
    response_model=OptimizeLoadResult,
    responses=error_responses(403, 422, 503),
)
def optimize_load(
    runtime: RuntimeDep,
    caller: Operator,
    request: OptimizeLoadRequest | None = None,
    actor: ActorHeader = "api",
) -> OptimizeLoadResult:
    """Plan moves of open tasks from overloaded agents (open tasks / capacity above
    ``AGENTWATCH_LOAD_OVERLOADED_ABOVE``) to underloaded ones (below
    ``AGENTWATCH_LOAD_UNDERLOADED_BELOW``) of the same tenant that have the task's
    capabilities and a free slot, never making a target overloaded; each move says why.
    Open tasks: the ``tasks`` table's accepted ones, or the shard's count in the agent's
    latest assignment score if higher; capacity: the score's, else the registration's (an
    agent with neither is left out).

    **Dry run by default** (no body, or ``{"dry_run": true}``). With ``{"dry_run": false}``
    the moves are published as commands in one batch: per move a ``task_released`` keyed
    by the source and a ``task_assigned`` keyed by the target (``attempt`` + 1,
    ``moved_from``); each move then says whether it was published. 503 when the broker
    took none.
    """
    request = request or OptimizeLoadRequest()
    settings = runtime.settings
    tenant = tenant_filter(caller, request.tenant_id)
    database = settings.clickhouse_database
    with runtime.clients.client() as client:
        fleet = plan_queries.fleet(client, database, tenant_id=tenant)
        tasks = plan_queries.open_tasks(client, database, tenant_id=tenant)
    counted: dict[str, int] = {}
    for task in tasks:
        counted[task.agent_id] = counted.get(task.agent_id, 0) + 1
    loads = [
        AgentLoad(
            agent_id=a.agent_id,
            tenant_id=a.tenant_id,
            agent_type=a.agent_type,
            capabilities=a.capabilities,
            capacity=a.capacity,
            # the larger of the two counts: the table's open tasks and the shard's own
            open_tasks=max(counted.get(a.agent_id, 0), a.active_tasks),
            state=a.state or "active",
            score=a.score or 0.0,
        )
        for a in fleet.values()
        if a.capacity > 0  # no capacity known (nor declared): no load to speak of
    ]
    planned = {a.agent_id for a in loads}
    tasks = [t for t in tasks if t.agent_id in planned]
    plan = plan_moves(
        loads,
        tasks,
        overloaded_above=settings.load_overloaded_above,
        underloaded_below=settings.load_underloaded_below,
    )
    outcome: list[str | None] = []
    if not request.dry_run and plan.moves:
        scores = {
            a.agent_id: TargetScore(
                a.score or 0.0,
                ScoreComponents(**a.components)
                if a.components
                else ScoreComponents(performance=0, cost=0, availability=0, sla=0),
                a.weights,
            )
            for a in fleet.values()
        }
        events = move_commands(
            plan,
            tasks,
            scores,
            actor=actor_of(caller, actor),
            assigned_by=PLANNER,
            now=time.time(),
        )
        outcome = _publish(runtime, events)
    moves = []
    for index, move in enumerate(plan.moves):
        published = error = None
        if outcome:
            released, assigned = outcome[2 * index], outcome[2 * index + 1]
            published = released is None and assigned is None
            if not published:
                error = (
                    f"task_released: {released or 'published'}; task_assigned: "
                    f"{assigned or 'published'}; check GET /api/v1/tasks/{move.task_id} and "
                    "place it again if it was released but not assigned"
                )
        moves.append(
            PlannedMove(
                task_id=move.task_id,
                tenant_id=move.tenant_id,
                source=move.source,
                target=move.target,
                reason=move.reason,
                source_load_before=move.source_load[0],
                source_load_after=move.source_load[1],
                target_load_before=move.target_load[0],
                target_load_after=move.target_load[1],
                published=published,
                error=error,
            )
        )
    owner = {t.task_id: t.agent_id for t in tasks}
    touched = set(plan.loads_after)
    log.info(
        "optimize_load tenant=%s dry_run=%s agents=%d open_tasks=%d overloaded=%d moves=%d "
        "stuck=%d",
        tenant,
        request.dry_run,
        len(loads),
        len(tasks),
        len(plan.overloaded),
        len(moves),
        len(plan.stuck),
    )
    return OptimizeLoadResult(
        dry_run=request.dry_run,
        tenant_id=tenant,
        thresholds=LoadThresholds(
            overloaded_above=settings.load_overloaded_above,
            underloaded_below=settings.load_underloaded_below,
        ),
        agents=len(loads),
        open_tasks=len(tasks),
        overloaded=plan.overloaded,
        underloaded=len(plan.underloaded),
        moves=moves,
        stuck=[
            StuckTask(task_id=task_id, agent_id=owner[task_id], reason=reason)
            for task_id, reason in plan.stuck.items()
        ],
        loads_before={a: v for a, v in plan.loads_before.items() if a in touched},
        loads_after=plan.loads_after,
        note=DRY_RUN_NOTE if request.dry_run else APPLIED_NOTE,
    )


# --- maintenance ---------------------------------------------------------------------


class MaintenanceRequest(BaseModel):
    """Which agents to schedule, and whether to start the windows that start now."""

    model_config = ConfigDict(extra="forbid")

    apply: StrictBool = Field(
        False,
        description="Publish maintenance_requested for the windows that start now "
        "(the others stay a plan).",
    )
    tenant_id: Identifier | None = Field(
        None, description="A tenant key's own when absent; every tenant for a fleet key."
    )
    agent_type: Label | None = Field(None, description="Only agents of this type.")
    agent_ids: list[Identifier] | None = Field(
        None,
        max_length=10_000,
        description="Only these agents (others of their group still count in its capacity).",
    )


class MaintenanceWindow(BaseModel):
    agent_id: str
    tenant_id: str
    agent_type: str
    start: datetime
    end: datetime
    starts_now: bool = Field(description="Applied with apply=true; later windows are a plan.")
    expected_load: float = Field(description="The group's mean demand over the window's hours.")
    peak_demand: float = Field(description="The group's peak demand in those hours.")
    capacity_left: int = Field(description="Slots in service left in the tightest hour.")
    p_fail: float | None
    health: float | None
    reason: str
    published: bool | None = Field(None, description="apply=true and starts now: published?")


class UnscheduledAgent(BaseModel):
    agent_id: str
    tenant_id: str
    agent_type: str
    reason: str


class MaintenanceGroup(BaseModel):
    tenant_id: str
    agent_type: str
    agents: int
    capacity: int = Field(description="Slots of its agents in service.")
    profile: str = Field(description="history (hourly demand) or current load (no history).")


class MaintenanceSchedule(BaseModel):
    """The windows, the agents left out and why, and how the groups were measured."""

    generated_at: datetime
    window_hours: int
    capacity_margin: float
    horizon_hours: int
    history_days: int
    applied: bool
    windows: list[MaintenanceWindow]
    unscheduled: list[UnscheduledAgent]
    groups: list[MaintenanceGroup]
    note: str


def _schedule(runtime: Runtime, caller, request: MaintenanceRequest, said: str):
    settings = runtime.settings
    tenant = tenant_filter(caller, request.tenant_id)
    database = settings.clickhouse_database
    now = time.time()
    since = datetime.fromtimestamp(now, UTC) - timedelta(days=settings.maintenance_history_days)
    with runtime.clients.client() as client:
        fleet = plan_queries.fleet(client, database, tenant_id=tenant)
        demand = plan_queries.hourly_demand(client, database, since, tenant_id=tenant)
    history: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for tenant_id, kind, hour, value in demand:
        history.setdefault((tenant_id, kind), []).append((hour.timestamp(), value))
    wanted = set(request.agent_ids) if request.agent_ids is not None else None
    template = LifecycleEvent(
        type=MAINTENANCE_REQUESTED,
        agent_id="*",
        tenant_id="*",
        actor="planner",
        timestamp=now,
        payload={"reason": "scheduled maintenance"},
    )
    candidates: list[MaintenanceCandidate] = []
    for agent in fleet.values():
        if request.agent_type is not None and agent.agent_type != request.agent_type:
            continue
        if not _in_service(agent.state):
            blocked = f"{agent.agent_id} is {agent.state}, not in service: nothing to schedule"
        else:  # running or degraded: the lifecycle table takes maintenance_requested
            blocked = lifecycle_refusal(agent.agent_id, agent.tenant_id, agent.state, template)
        if wanted is not None and agent.agent_id not in wanted:
            blocked = "not asked for"  # counted in its group's capacity, not scheduled
        candidates.append(
            MaintenanceCandidate(
                agent_id=agent.agent_id,
                tenant_id=agent.tenant_id,
                agent_type=agent.agent_type,
                capacity=agent.capacity,
                p_fail=agent.p_fail,
                health=agent.health,
                in_service=_in_service(agent.state),
                blocked=blocked,
            )
        )
    groups: dict[tuple[str, str], MaintenanceGroup] = {}
    profiles: dict[tuple[str, str], HourlyLoad] = {}
    for candidate in candidates:
        key = (candidate.tenant_id, candidate.agent_type)
        group = groups.setdefault(
            key,
            MaintenanceGroup(tenant_id=key[0], agent_type=key[1], agents=0, capacity=0, profile=""),
        )
        group.agents += 1
        group.capacity += candidate.capacity if candidate.in_service else 0
    for key, group in groups.items():
        profile = hourly_profile(history.get(key, ()))
        if profile is None:
            current = sum(
                fleet[c.agent_id].active_tasks
                for c in candidates
                if (c.tenant_id, c.agent_type) == key
            )
            profile = HourlyLoad.flat(float(current))
            group.profile = "current load (no history)"
        else:
            group.profile = "history"
        profiles[key] = profile
    plan = schedule_maintenance(
        candidates,
        profiles,
        now=now,
        window_hours=settings.maintenance_window_hours,
        margin=settings.maintenance_capacity_margin,
        horizon_hours=settings.maintenance_horizon_hours,
    )
    published: dict[str, bool] = {}
    if request.apply:
        now_windows = [w for w in plan.windows if w.starts_now]
        who = actor_of(caller, said)
        events = [
            (
                {
                    **template.model_dump(mode="json"),
                    "agent_id": w.agent_id,
                    "tenant_id": w.tenant_id,
                    "actor": who,
                    "payload": {"reason": f"scheduled maintenance: {w.reason}"},
                },
                w.agent_id,
            )
            for w in now_windows
        ]
        outcome = _publish(runtime, events)
        published = {w.agent_id: r is None for w, r in zip(now_windows, outcome, strict=True)}
    unscheduled = [u for u in plan.unscheduled if u.reason != "not asked for"]
    log.info(
        "maintenance_schedule tenant=%s apply=%s windows=%d now=%d unscheduled=%d",
        tenant,
        request.apply,
        len(plan.windows),
        sum(w.starts_now for w in plan.windows),
        len(unscheduled),
    )
    return MaintenanceSchedule(
        generated_at=datetime.fromtimestamp(now, UTC),
        window_hours=settings.maintenance_window_hours,
        capacity_margin=settings.maintenance_capacity_margin,
        horizon_hours=settings.maintenance_horizon_hours,
        history_days=settings.maintenance_history_days,
        applied=request.apply,
        windows=[
            MaintenanceWindow(
                agent_id=w.agent_id,
                tenant_id=w.tenant_id,
                agent_type=w.agent_type,
                start=datetime.fromtimestamp(w.start, UTC),
                end=datetime.fromtimestamp(w.end, UTC),
                starts_now=w.starts_now,
                expected_load=w.expected_load,
                peak_demand=w.peak_demand,
                capacity_left=w.capacity_left,
                p_fail=w.p_fail,
                health=w.health,
                reason=w.reason,
                published=published.get(w.agent_id) if w.starts_now and request.apply else None,
            )
            for w in plan.windows
        ],
        unscheduled=[
            UnscheduledAgent(
                agent_id=u.agent_id,
                tenant_id=u.tenant_id,
                agent_type=u.agent_type,
                reason=u.reason,
            )
            for u in unscheduled
        ],
        groups=sorted(groups.values(), key=lambda g: (g.tenant_id, g.agent_type)),
        note=MAINTENANCE_APPLIED_NOTE if request.apply else MAINTENANCE_PLAN_NOTE,
    )


MAINTENANCE_PLAN_NOTE = (
    'a plan: nothing was published. POST with {"apply": true} publishes '
    "maintenance_requested for the windows that start now; later windows stay a plan (ask "
    "again when they start). Nothing ends a window by itself: end it with DELETE "
    "/api/v1/agents/{id}/maintenance"
)
MAINTENANCE_APPLIED_NOTE = (
    "applied: maintenance_requested is published for the windows that start now "
    "(published true); later windows are only a plan (ask again when they start). Nothing "
    "ends a window by itself: end it with DELETE /api/v1/agents/{id}/maintenance"
)


@router.get(
    f"{API_PREFIX}/maintenance/schedule",
    response_model=MaintenanceSchedule,
    responses=error_responses(403, 422, 503),
)
def maintenance_plan(
    runtime: RuntimeDep,
    caller: Reader,
    tenant: TenantFilter = None,
    agent_type: Annotated[Label | None, Query(description="Only agents of this type.")] = None,
) -> MaintenanceSchedule:
    """The maintenance schedule ``POST`` would apply, without applying anything: per agent
    a window of ``AGENTWATCH_MAINTENANCE_WINDOW_HOURS`` in the hours its tenant and agent
    type are least loaded (hourly profile of the last
    ``AGENTWATCH_MAINTENANCE_HISTORY_DAYS`` days), agents at risk first (``p_fail``, then
    health), keeping each group's capacity in service ≥ its peak demand ×
    ``AGENTWATCH_MAINTENANCE_CAPACITY_MARGIN`` in every hour; agents no window fits are
    listed with the reason."""
    request = MaintenanceRequest(tenant_id=tenant, agent_type=agent_type)
    return _schedule(runtime, caller, request, "api")


@router.post(
    f"{API_PREFIX}/maintenance/schedule",
    response_model=MaintenanceSchedule,
    responses=error_responses(403, 422, 503),
)
def maintenance_schedule(
    runtime: RuntimeDep,
    caller: Operator,
    request: MaintenanceRequest | None = None,
    actor: ActorHeader = "api",
) -> MaintenanceSchedule:
    """Plan maintenance windows (as ``GET``), and with ``{"apply": true}`` publish
    ``maintenance_requested`` on agents.control for the windows that start now; later
    windows are a plan (the answer's ``note`` says so). 503 when the broker took none."""
    return _schedule(runtime, caller, request or MaintenanceRequest(), actor)


# --- capacity forecast -------------------------------------------------------------------


class ForecastDay(BaseModel):
    date: date
    demand: float = Field(description="Forecast peak of tasks at once that day.")
    lower_80: float
    upper_80: float
    lower_95: float
    upper_95: float
    agents_needed: int | None = Field(
        description="ceil(demand / the group's mean capacity per agent); None without agents."
    )


class GroupForecast(BaseModel):
    tenant_id: str
    agent_type: str
    agents: int = Field(description="Agents in service now.")
    capacity: int = Field(description="Their slots (sum of max_concurrent_tasks).")
    history_days: int = Field(description="Days with data the forecast was fitted on.")
    last_demand: float | None = Field(description="The last complete day's peak demand.")
    method: str | None
    residual_std: float | None
    runs_out_on: date | None = Field(description="First day the forecast exceeds capacity.")
    may_run_out_on: date | None = Field(
        description="First day the 95 % interval's upper bound exceeds capacity."
    )
    note: str = ""
    forecast: list[ForecastDay]


class CapacityForecast(BaseModel):
    generated_at: datetime
    days: int
    history_days: int = Field(description="Lookback (AGENTWATCH_FORECAST_HISTORY_DAYS).")
    method: str
    groups: list[GroupForecast]


FORECAST_METHOD = (
    "daily demand = the day's highest hourly sum over the group's agents of each one's "
    "highest active_tasks in the hour; forecast by least squares of level + linear trend + "
    "weekly season (14 days of history or more; the mean alone below), prediction "
    "intervals from the residuals with Student t quantiles; docs/orchestration-plan.md"
)


@router.get(
    f"{API_PREFIX}/capacity/forecast",
    response_model=CapacityForecast,
    responses=error_responses(403, 422, 503),
)
def capacity_forecast(
    runtime: RuntimeDep,
    caller: Reader,
    days: Annotated[int, Query(ge=1, le=90, description="Days ahead (1 … 90).")] = 30,
    tenant: TenantFilter = None,
    agent_type: Annotated[Label | None, Query(description="Only agents of this type.")] = None,
) -> CapacityForecast:
    """Per tenant and agent type: the daily peak demand (tasks at once) forecast ``days``
    ahead with 80 % and 95 % prediction intervals, the agents needed for it, the current
    capacity, and the day capacity runs out if it does. Fitted on the last
    ``AGENTWATCH_FORECAST_HISTORY_DAYS`` complete days (today is not over, so not used).
    A group with fewer than 14 days gets the mean so far with wide intervals, and fewer
    than 3 days no forecast; its ``note`` says so."""
    settings = runtime.settings
    tenant = tenant_filter(caller, tenant)
    now = datetime.now(UTC)
    today = now.date()
    since = datetime.combine(
        today - timedelta(days=settings.forecast_history_days), datetime.min.time(), UTC
    )
    database = settings.clickhouse_database
    with runtime.clients.client() as client:
        fleet = plan_queries.fleet(client, database, tenant_id=tenant)
        demand = plan_queries.hourly_demand(client, database, since, tenant_id=tenant)
    daily: dict[tuple[str, str], dict[date, float]] = {}
    for tenant_id, kind, hour, value in demand:
        if hour.date() >= today:
            continue
        days_of = daily.setdefault((tenant_id, kind), {})
        days_of[hour.date()] = max(days_of.get(hour.date(), 0.0), value)
    in_service: dict[tuple[str, str], list[int]] = {}
    for agent in fleet.values():
        key = (agent.tenant_id, agent.agent_type)
        in_service.setdefault(key, [])
        if _in_service(agent.state):
            in_service[key].append(agent.capacity)
    groups = []
    for key in sorted(set(daily) | set(in_service)):
        if agent_type is not None and key[1] != agent_type:
            continue
        groups.append(
            _group_forecast(key, daily.get(key, {}), in_service.get(key, []), today, days)
        )
    return CapacityForecast(
        generated_at=now,
        days=days,
        history_days=settings.forecast_history_days,
        method=FORECAST_METHOD,
        groups=groups,
    )


def _group_forecast(
    key: tuple[str, str],
    history: dict[date, float],
    capacities: list[int],
    today: date,
    days: int,
) -> GroupForecast:
    capacity = sum(capacities)
    mean_capacity = capacity / len(capacities) if capacities else 0.0
    first = min(history) if history else today
    span = (today - first).days
    series = [history.get(first + timedelta(days=i), math.nan) for i in range(span)]
    base = {
        "tenant_id": key[0],
        "agent_type": key[1],
        "agents": len(capacities),
        "capacity": capacity,
        "last_demand": history.get(today - timedelta(days=1)),
    }
    try:
        result = forecasting.forecast_daily(series, days, first_weekday=first.weekday())
    except forecasting.ShortHistory as exc:
        return GroupForecast(
            **base,
            history_days=sum(1 for v in series if not math.isnan(v)),
            method=None,
            residual_std=None,
            runs_out_on=None,
            may_run_out_on=None,
            note=str(exc),
            forecast=[],
        )
    forecast_days = []
    for i, point in enumerate(result.point):
        low80, high80 = result.bounds[0.8][i]
        low95, high95 = result.bounds[0.95][i]
        forecast_days.append(
            ForecastDay(
                date=today + timedelta(days=i),
                demand=round(point, 3),
                lower_80=round(low80, 3),
                upper_80=round(high80, 3),
                lower_95=round(low95, 3),
                upper_95=round(high95, 3),
                agents_needed=math.ceil(point / mean_capacity - 1e-9) if mean_capacity else None,
            )
        )
    out = forecasting.first_day_above(result.point, capacity)
    risk = forecasting.first_day_above([high for _, high in result.bounds[0.95]], capacity)
    return GroupForecast(
        **base,
        history_days=result.history_days,
        method=result.method,
        residual_std=round(result.residual_std, 4),
        runs_out_on=today + timedelta(days=out) if out is not None else None,
        may_run_out_on=today + timedelta(days=risk) if risk is not None else None,
        note=result.note,
        forecast=forecast_days,
    )
