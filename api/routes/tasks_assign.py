"""Task assignment over HTTP: ``POST /api/v1/tasks/assign`` and the weights of the
assignment score, ``GET``/``PUT /api/v1/orchestration/weights``.

Answered from the API's in-memory fleet (:mod:`api.assign`), never a ClickHouse query
per request. An assignment is an operator's act on a tenant's agents: operators and
admins may assign tasks of their tenant (the task's tenant defaults to the caller's;
another tenant's is a 403), readers and agents may not. The weights are every tenant's:
any reader sees them, an operator of every tenant changes them (``weights_changed`` on
``agents.control``, audited; this process uses them at once, the others and the
dataflow when they read the event).
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agentwatch.assignment import NoFit
from agentwatch.identity import Permission, Principal, authorize
from api.assign import Assigner, DuplicateTask
from api.errors import ERROR_STATUSES, error_responses, unprocessable
from api.identity import actor_of
from api.publisher import PublishError
from api.runtime import API_PREFIX, ActorHeader, FleetOperator, Operator, Reader, RuntimeDep
from api.scope import own_tenant
from schemas.models import ScoreComponents, ScoringWeights, TaskRequest

log = logging.getLogger("api.routes.tasks_assign")

router = APIRouter(tags=["tasks"])


class Assignment(BaseModel):
    """The chosen agent and why."""

    agent_id: str
    score: float = Field(description="Σ weight × component / Σ weights, 0…1.")
    components: ScoreComponents
    weights: ScoringWeights
    confidence: float = Field(
        description="0…1: how much the score rests on measurements (an agent not scored yet "
        "has neutral components) and how unlikely the agent is to fail soon (1 − p_fail)."
    )
    reason: str = Field(description="Why this agent, in words.")
    p_success: float | None = Field(description="Predicted success on this task type, if known.")
    expected_duration_s: float | None = Field(description="Predicted duration, if known.")


class Candidate(BaseModel):
    """One of the next best agents."""

    agent_id: str
    score: float
    components: ScoreComponents


class AssignedTask(BaseModel):
    """The answer of ``POST /api/v1/tasks/assign``: the task is published to its agent
    (``task_assigned``); the agent's shard accepts or refuses it (a refused task is placed
    again by this API process)."""

    task_id: str
    status: Literal["assigned"] = "assigned"
    assignment: Assignment
    candidates: list[Candidate] = Field(description="The next best agents, best first.")
    considered: int = Field(description="Agents of the task's tenant.")
    eligible: int = Field(description="Agents that passed every filter.")


class NoAgentFits(BaseModel):
    """A 409: no agent fits (per reason, how many agents failed on it, each counted under
    the first filter it fails), or the task id was placed already."""

    detail: str = Field(description="e.g. '0/812 agents fit: 500 lack capability gpu, …'")
    unfit: dict[str, int] = Field(default_factory=dict)
    considered: int = 0


class WeightsChange(ScoringWeights):
    """The body of ``PUT /api/v1/orchestration/weights``: the weights, as numbers (JSON
    ``true``/``false`` or strings are refused, not read as 1/0)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _assigner(runtime: object) -> Assigner:
    assigner: Assigner | None = runtime.assigner
    if assigner is None or not assigner.wait_ready(runtime.settings.api_projection_ready_timeout_s):
        raise HTTPException(
            503,
            detail="the fleet is still being read from the topics (or the broker does not "
            "answer: check AGENTWATCH_BOOTSTRAP_SERVERS); retry in a few seconds",
            headers={"Retry-After": "2"},
        )
    return assigner


@router.post(
    f"{API_PREFIX}/tasks/assign",
    response_model=AssignedTask,
    responses={
        **error_responses(403, 422, 503),
        409: {"model": NoAgentFits, "description": "No agent fits (the body says why), or the "
              "task id was placed already. " + ERROR_STATUSES[409]},
    },
)  # fmt: skip
async def assign_task(
    body: TaskRequest, runtime: RuntimeDep, caller: Operator, actor: ActorHeader = "api"
) -> AssignedTask | JSONResponse:
    """Place a task on the best agent of its tenant: filters (tenant, state active or idle,
    capabilities, resources, free capacity, security score ≥
    AGENTWATCH_ORCHESTRATION_MIN_SECURITY_SCORE, not quarantined), then the score with the
    current weights. Answers the chosen agent with its score broken down and the next
    best; 409 with a summary ("0/812 agents fit: …") when none fits."""
    # On the event loop when nothing in it can block (the fleet is read, the answer does
    # not wait for the broker): the choice takes under a millisecond, and a hop to a worker
    # thread waited for a turn of the interpreter behind the loader's and the
    # projection's threads. Otherwise in a worker thread.
    assigner = runtime.assigner
    if (
        assigner is None
        or not assigner.wait_ready(0)
        or runtime.settings.orchestration_assign_awaits_broker
    ):
        return await run_in_threadpool(_assign_task, body, runtime, caller, actor)
    return _assign_task(body, runtime, caller, actor)


def _assign_task(
    body: TaskRequest, runtime: object, caller: Principal, actor: str
) -> AssignedTask | JSONResponse:
    tenant = body.tenant_id or own_tenant(caller)
    if tenant is None:
        raise unprocessable(
            "tenant_id: a key of every tenant must name the task's tenant", "body", "tenant_id"
        )
    reason = authorize(caller, Permission.OPERATE, tenant, caller.agent_id)
    if reason is not None:
        raise HTTPException(403, detail=reason)
    assigner = _assigner(runtime)
    try:
        placed = assigner.assign(body, tenant, actor_of(caller, actor))
    except DuplicateTask as exc:
        return JSONResponse(NoAgentFits(detail=str(exc)).model_dump(), status_code=409)
    except PublishError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    if isinstance(placed, NoFit):
        answer = NoAgentFits(
            detail=placed.summary, unfit=placed.unfit, considered=placed.considered
        )
        return JSONResponse(answer.model_dump(), status_code=409)
    choice, decision = placed.choice, placed.decision
    chosen = choice.chosen
    log.info(
        "task_assigned task_id=%s agent_id=%s tenant_id=%s score=%.3f eligible=%d",
        decision.task_id, chosen.agent_id, tenant, chosen.score, choice.eligible,
    )  # fmt: skip
    return AssignedTask(
        task_id=decision.task_id,
        assignment=Assignment(
            agent_id=chosen.agent_id,
            score=chosen.score,
            components=ScoreComponents(**chosen.components),
            weights=decision.assignment.weights,
            confidence=chosen.confidence,
            reason=choice.reason,
            p_success=chosen.p_success,
            expected_duration_s=chosen.expected_duration_s,
        ),
        candidates=[
            Candidate(
                agent_id=c.agent_id, score=c.score, components=ScoreComponents(**c.components)
            )
            for c in choice.candidates
        ],
        considered=choice.considered,
        eligible=choice.eligible,
    )


@router.get(
    f"{API_PREFIX}/orchestration/weights",
    response_model=ScoringWeights,
    responses=error_responses(503),
)
def get_weights(runtime: RuntimeDep, caller: Reader) -> ScoringWeights:
    """The weights of the assignment score's components now (the seed's 40/30/20/10 until
    changed)."""
    if runtime.assigner is None:
        return ScoringWeights(**runtime.settings.scoring_weights())
    return runtime.assigner.weights


@router.put(
    f"{API_PREFIX}/orchestration/weights",
    response_model=ScoringWeights,
    responses=error_responses(403, 422, 503),
)
def put_weights(
    body: WeightsChange, runtime: RuntimeDep, caller: FleetOperator, actor: ActorHeader = "api"
) -> ScoringWeights:
    """Change the weights (every tenant's): publishes ``weights_changed`` (audited); the
    next assignment of this process uses them, the other API processes and the dataflow
    when they read the event. They need not sum to 1 (the score divides by their sum)."""
    if runtime.assigner is None:
        raise HTTPException(503, detail="task assignment is not running in this process; retry")
    weights = ScoringWeights(**body.model_dump())
    try:
        runtime.assigner.set_weights(weights, actor_of(caller, actor))
    except PublishError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    log.info("weights_changed weights=%s", weights.model_dump())
    return weights
