"""Routes of the threat rules: list, add, update, enable/disable, delete, restore the
seed's defaults. Rules apply to every tenant: changing them takes a key of every tenant."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from agentwatch.rules import DEFAULT_RULE_NAMES
from api.errors import error_responses, unprocessable
from api.identity import actor_of
from api.params import RuleName
from api.publisher import PublishError
from api.rules import RuleChangeError, RuleExists, RuleNeedsConfirmation, RuleNotFound
from api.runtime import API_PREFIX, ActorHeader, FleetOperator, Reader, Runtime, RuntimeDep
from schemas.models import RuleChange, ThreatRuleSpec

log = logging.getLogger("api.app")

router = APIRouter()


#: The name of one of the seed's default rules.
DefaultRuleName = Literal[DEFAULT_RULE_NAMES]  # type: ignore[valid-type]


class RestoreRequest(BaseModel):
    """The body of ``POST /api/v1/rules/restore`` (optional: without it, every default rule)."""

    model_config = ConfigDict(extra="forbid")

    names: list[DefaultRuleName] | None = Field(
        None, min_length=1, description="The default rules to restore (default: all of them)."
    )


class RestoredRules(BaseModel):
    """The answer to a restore: which rules changed, and the rule set now in force."""

    restored: list[str] = Field(description="Rules put back (empty: all were as shipped).")
    rules: list[ThreatRuleSpec]


Confirm = Annotated[
    bool,
    Query(
        description="Confirm a change that leaves a category of the default rules "
        "(SECURITY, PERFORMANCE) without any enabled rule."
    ),
]


def change_rules(
    runtime: Runtime, change: RuleChange, actor: str, confirm: bool = False
) -> ThreatRuleSpec | None:
    try:
        with runtime.clients.client() as client:
            return runtime.rule_book.apply(client, change, actor, confirm)
    except RuleNotFound as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except (RuleExists, RuleNeedsConfirmation) as exc:
        raise HTTPException(409, detail=str(exc)) from None
    except RuleChangeError as exc:  # fits the schema, not the rule set
        loc = ("body",) if change.rule is not None else ("path", "name")
        raise unprocessable(str(exc), *loc) from None
    except PublishError as exc:
        raise HTTPException(503, detail=str(exc)) from None


@router.get(
    f"{API_PREFIX}/rules",
    response_model=list[ThreatRuleSpec],
    responses=error_responses(503),
    tags=["rules"],
)
def list_rules(runtime: RuntimeDep, caller: Reader) -> list[ThreatRuleSpec]:
    """The threat rules in force: the seed's defaults and every change made since."""
    with runtime.clients.client() as client:
        return runtime.rule_book.rules(client)


@router.post(
    f"{API_PREFIX}/rules", response_model=ThreatRuleSpec, status_code=201, tags=["rules"],
    responses=error_responses(403, 409, 422, 503),
)  # fmt: skip
def add_rule(
    rule: ThreatRuleSpec, runtime: RuntimeDep, caller: FleetOperator, actor: ActorHeader = "api"
):
    """Add a rule; the dataflow applies it from the next heartbeat on, without a restart.
    Rules apply to every tenant: changing them takes a key of every tenant."""
    return change_rules(runtime, RuleChange(action="add", rule=rule), actor_of(caller, actor))


@router.put(
    f"{API_PREFIX}/rules/{{name}}", response_model=ThreatRuleSpec, tags=["rules"],
    responses=error_responses(403, 404, 409, 422, 503),
)  # fmt: skip
def update_rule(
    name: RuleName,
    rule: ThreatRuleSpec,
    runtime: RuntimeDep,
    caller: FleetOperator,
    actor: ActorHeader = "api",
    confirm: Confirm = False,
):
    """Replace a rule (its state starts afresh); the body names the rule of the path
    (otherwise 422)."""
    if rule.name != name:
        message = f"the body names rule {rule.name!r}, the path {name!r}"
        raise unprocessable(message, "body", "name")
    change = RuleChange(action="update", rule=rule)
    return change_rules(runtime, change, actor_of(caller, actor), confirm)


@router.post(
    f"{API_PREFIX}/rules/restore",
    response_model=RestoredRules,
    tags=["rules"],
    responses=error_responses(403, 422, 503),
)
def restore_rules(
    runtime: RuntimeDep,
    caller: FleetOperator,
    request: RestoreRequest | None = None,
    actor: ActorHeader = "api",
) -> RestoredRules:
    """Put the seed's default rules back as shipped and enabled: all of them, or those
    in ``names``. A deleted one is added again, a changed or disabled one replaced;
    rules of your own are left alone. Each restored rule is a recorded rule change."""
    names = request.names if request is not None else None
    return restore(runtime, names, actor_of(caller, actor))


@router.post(
    f"{API_PREFIX}/rules/{{name}}/restore",
    response_model=RestoredRules,
    tags=["rules"],
    responses=error_responses(403, 404, 422, 503),
)
def restore_rule(
    name: RuleName, runtime: RuntimeDep, caller: FleetOperator, actor: ActorHeader = "api"
) -> RestoredRules:
    """Put one of the seed's default rules back as shipped and enabled (404 for a name
    that is not one of them)."""
    if name not in DEFAULT_RULE_NAMES:
        raise HTTPException(
            404,
            detail=f"{name!r} is not a default rule; the default rules are: "
            f"{', '.join(DEFAULT_RULE_NAMES)}",
        )
    return restore(runtime, [name], actor_of(caller, actor))


def restore(runtime: Runtime, names: list[str] | None, actor: str) -> RestoredRules:
    try:
        with runtime.clients.client() as client:
            restored = runtime.rule_book.restore(client, actor, names)
            rules = runtime.rule_book.rules(client)
    except RuleChangeError as exc:
        raise HTTPException(422, detail=str(exc)) from None
    except PublishError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    log.info("rules_restored actor=%s restored=%s", actor, ",".join(restored) or "-")
    return RestoredRules(restored=restored, rules=rules)


@router.post(
    f"{API_PREFIX}/rules/{{name}}/{{action}}", response_model=ThreatRuleSpec, tags=["rules"],
    responses=error_responses(403, 404, 409, 422, 503),
)  # fmt: skip
def switch_rule(
    name: RuleName,
    action: Literal["enable", "disable"],
    runtime: RuntimeDep,
    caller: FleetOperator,
    actor: ActorHeader = "api",
    confirm: Confirm = False,
):
    """Enable or disable a rule (disabling the last enabled rule of a default category
    needs ``?confirm=true``)."""
    change = RuleChange(action=action, name=name)
    return change_rules(runtime, change, actor_of(caller, actor), confirm)


@router.delete(
    f"{API_PREFIX}/rules/{{name}}", status_code=204, tags=["rules"],
    responses=error_responses(403, 404, 409, 422, 503),
)  # fmt: skip
def delete_rule(
    name: RuleName,
    runtime: RuntimeDep,
    caller: FleetOperator,
    actor: ActorHeader = "api",
    confirm: Confirm = False,
) -> Response:
    """Delete a rule (deleting the last enabled rule of a default category needs
    ``?confirm=true``; ``POST /api/v1/rules/restore`` puts the default rules back)."""
    change = RuleChange(action="delete", name=name)
    change_rules(runtime, change, actor_of(caller, actor), confirm)
    return Response(status_code=204)
