"""Routes that read orchestration from ClickHouse: a task, the tasks, an agent's
assignment scores, and the outcome models' accuracy.

What they read is what the loader stored (``tasks``, ``assignment_scores``,
``agent_events``): a task the API assigned a moment ago is there once the loader has
read its ``task_assigned`` (``loader_batch_age_s``). Assigning is not here (the
in-memory fleet answers it, without a ClickHouse query).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from agentwatch.identity import Principal
from api import queries
from api.errors import error_responses
from api.identity import tenant_filter
from api.params import AgentId, Limit, TenantFilter, TimeRangeDep
from api.responses import (
    AssignmentScoreList,
    OrchestrationModels,
    TaskList,
    TaskStatusName,
    TaskView,
)
from api.runtime import API_PREFIX, Reader, Runtime, RuntimeDep
from api.scope import agent_rows, own_tenant

router = APIRouter(tags=["tasks"])

TaskId = Annotated[
    str, Path(min_length=1, max_length=128, description="The task's id (1-128 characters).")
]
StatusFilter = Annotated[
    list[TaskStatusName] | None,
    Query(description="Keep only tasks now in these statuses (repeat for several)."),
]
AgentFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=128, description="Keep only the tasks of this agent."),
]


@router.get(
    f"{API_PREFIX}/tasks/{{task_id}}",
    response_model=TaskView,
    responses=error_responses(404, 422, 503),
)
def get_task(task_id: TaskId, runtime: RuntimeDep, caller: Reader) -> TaskView:
    """A task in its latest status: the agent it went to, the score and components it was
    chosen with, the predictions, and what became of it. A task of another tenant than the
    caller's key is a 404, exactly like a task that does not exist."""
    with runtime.clients.client() as client:
        found = queries.task(
            client, runtime.settings.clickhouse_database, task_id, tenant_id=own_tenant(caller)
        )
    if found is None:
        found = not_loaded_yet(runtime, caller, task_id)
    if found is None:
        raise HTTPException(404, detail=unknown_task(task_id))
    return found


def not_loaded_yet(runtime: Runtime, caller: Principal, task_id: str) -> TaskView | None:
    """A task this process assigned whose ``task_assigned`` the loader has not stored yet,
    from the assignment's own memory (:meth:`api.assign.Assigner.pending_task`), scoped to
    the caller's tenant like the query; None when this process did not place it."""
    if runtime.assigner is None:
        return None
    record = runtime.assigner.pending_task(task_id)
    tenant = own_tenant(caller)
    if record is None or (tenant is not None and record.tenant_id != tenant):
        return None
    fields = record.model_dump()
    for name in ("deadline", "assigned_at", "accepted_at", "finished_at", "updated_at"):
        if fields[name] is not None:
            fields[name] = datetime.fromtimestamp(fields[name], UTC)
    return TaskView(**fields)


def unknown_task(task_id: str) -> str:
    return (
        f"task {task_id!r} is unknown: no assignment of it is stored for your tenant "
        "(a task assigned a moment ago shows once the loader has read it)"
    )


@router.get(
    f"{API_PREFIX}/tasks",
    response_model=TaskList,
    responses=error_responses(403, 422, 503),
)
def list_tasks(
    runtime: RuntimeDep,
    caller: Reader,
    agent_id: AgentFilter = None,
    status: StatusFilter = None,
    tenant: TenantFilter = None,
    limit: Limit = 100,
) -> TaskList:
    """Tasks in their latest status, newest assignment first; the filters apply to the
    latest status (and agent: a moved task is its new agent's). A key of one tenant lists
    its own tenant's (403 for another's ``tenant``)."""
    tenant = tenant_filter(caller, tenant)
    with runtime.clients.client() as client:
        found = queries.tasks(
            client, runtime.settings.clickhouse_database, limit, agent_id, status,
            tenant_id=tenant,
        )  # fmt: skip
    return TaskList(count=len(found), tasks=found)


@router.get(
    f"{API_PREFIX}/agents/{{agent_id}}/assignment-scores",
    response_model=AssignmentScoreList,
    responses=error_responses(404, 422, 503),
    tags=["agents"],
)
def agent_assignment_scores(
    agent_id: AgentId, runtime: RuntimeDep, span: TimeRangeDep, caller: Reader
) -> AssignmentScoreList:
    """The agent's assignment scores in a time range, newest first: the score, its
    components and weights, and what the models predicted per task type."""
    database = runtime.settings.clickhouse_database
    with runtime.clients.client() as client:
        read = partial(
            queries.assignment_scores_between,
            client,
            database,
            agent_id,
            span.since,
            span.until,
            span.limit,
        )
        found = agent_rows(client, database, caller, agent_id, read)
    return AssignmentScoreList(
        agent_id=agent_id,
        since=span.since,
        until=span.until,
        limit=span.limit,
        count=len(found),
        scores=found,
    )


@router.get(
    f"{API_PREFIX}/orchestration/models",
    response_model=OrchestrationModels,
    responses=error_responses(403, 422, 503),
    tags=["orchestration"],
)
def orchestration_models(
    runtime: RuntimeDep, caller: Reader, tenant: TenantFilter = None
) -> OrchestrationModels:
    """How well the outcome models predict: over the latest
    ``AGENTWATCH_ORCHESTRATION_ACCURACY_TASKS`` finished tasks that had predictions (of the
    caller's tenant, or of ``tenant``, or of every tenant for a key of every tenant), the
    success accuracy (p_success >= 0.5 against completed), the Brier score, and the
    completion time's MAE and MAPE, computed in ClickHouse; and each shard's latest
    report of its own rolling figures (fleet-wide)."""
    tenant = tenant_filter(caller, tenant)
    database = runtime.settings.clickhouse_database
    with runtime.clients.client() as client:
        rolling = queries.rolling_accuracy(
            client, database, runtime.settings.orchestration_accuracy_tasks, tenant_id=tenant
        )
        shards = queries.shard_models(client, database)
    return OrchestrationModels(tenant_id=tenant, rolling=rolling, shards=shards)
