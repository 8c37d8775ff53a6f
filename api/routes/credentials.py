"""An agent's credentials: rotate them, list them.

An agent's credential is an API key of role ``agent`` naming the agent
(:class:`api.identity.KeyBook`); registration makes the first one, with the TTL
``agent_credential_ttl_s``. Before it expires, the agent (with its current key) or an
operator of its tenant asks for a new one:

- ``POST /api/v1/agents/{agent_id}/credentials`` answers 201 with the new key (its token
  this once). Every older key of the agent now expires at the latest
  ``agent_credential_overlap_s`` from now (never later than it would have): the agent
  switches within that window, and a ``key_expiry_changed`` event on ``agents.control``
  records each change for the audit trail.
- ``GET /api/v1/agents/{agent_id}/credentials`` lists them (never a secret).

A key of an agent whose lifecycle entered quarantined, compromised, decommissioning or
decommissioned after the key was made is refused at the door (:mod:`api.revocation`): the
agent cannot rotate itself out of a quarantine; an operator issues the new credential
after the release.

Agents run on other machines: unlike other changes (loopback-only unless
``AGENTWATCH_API_ALLOW_REMOTE_MUTATIONS``, :mod:`api.access`), these routes and the REST
bridge's (:mod:`api.routes.bridge`) accept a remote caller that authenticates with an
agent key; an operator's key is still held to the loopback rule.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request

from agentwatch.identity import Permission, Principal, Role, authorize
from agentwatch.settings import Settings
from api.access import refusal
from api.errors import error_responses
from api.identity import needs_any
from api.keys import CreatedKey, KeyInfo
from api.params import AgentId
from api.publisher import PublishError
from api.runtime import API_PREFIX, RuntimeDep
from api.scope import agent_tenant

router = APIRouter(tags=["credentials"])

#: An agent's credential lives this long when ``agent_credential_ttl_s`` is not set
#: (the setting comes with registration).
DEFAULT_AGENT_CREDENTIAL_TTL_S = 30 * 24 * 3600.0

#: The agent itself (its own key), or an operator (reader) of its tenant.
AgentOrOperator = Annotated[Principal, needs_any(Permission.OPERATE, Permission.REPORT_SELF)]
AgentOrReader = Annotated[Principal, needs_any(Permission.READ, Permission.REPORT_SELF)]


def credential_ttl_s(settings: Settings) -> float | None:
    """How long an agent's new credential lives (None: until revoked)."""
    return getattr(settings, "agent_credential_ttl_s", DEFAULT_AGENT_CREDENTIAL_TTL_S) or None


def check_agent_scope(
    caller: Principal, permission: Permission, agent_id: str, tenant_id: str | None
) -> str:
    """The tenant the caller acts on for ``agent_id``: an agent key's own agent only (403
    for another agent of its tenant), an operator's (``permission``) of the agent's tenant;
    404 for an agent the caller may not see (no oracle for other tenants' agents)."""
    if caller.role is Role.AGENT:
        if tenant_id is not None and tenant_id != caller.tenant_id:
            raise HTTPException(404, detail=unknown_agent(agent_id))  # (its own id included)
        if caller.agent_id != agent_id:
            raise HTTPException(
                403, detail=authorize(caller, Permission.REPORT_SELF, caller.tenant_id, agent_id)
            )
        return caller.tenant_id
    if tenant_id is None or authorize(caller, permission, tenant_id) is not None:
        raise HTTPException(404, detail=unknown_agent(agent_id))
    return tenant_id


def remote_agents_only(request: Request, caller: Principal, settings: Settings) -> None:
    """403 for a change from another machine unless it comes with an agent key (or remote
    changes are allowed): agents post from their hosts; operators change from this one."""
    if caller.role is Role.AGENT:
        return
    host = request.client.host if request.client else None
    reason = refusal(request.method, host, settings.api_allow_remote_mutations)
    if reason is not None:
        raise HTTPException(403, detail=f"{reason} (an agent's own key may post from anywhere)")


def unknown_agent(agent_id: str) -> str:
    return (
        f"agent {agent_id!r} is unknown: no credential and no heartbeat stored for it; "
        "register it (POST /api/v1/agents/register)"
    )


@router.post(
    f"{API_PREFIX}/agents/{{agent_id}}/credentials",
    response_model=CreatedKey,
    status_code=201,
    responses=error_responses(404, 422, 503),
)
def rotate_credential(
    agent_id: AgentId, request: Request, runtime: RuntimeDep, caller: AgentOrOperator
) -> CreatedKey:
    """Issue a new credential of the agent (its token is in this answer only); its older
    keys expire within AGENTWATCH_AGENT_CREDENTIAL_OVERLAP_S. The agent itself may ask,
    with its current key, or an operator of its tenant (after a quarantine, only an
    operator can). A key the agent makes for itself counts as made when the key it asked
    with was (a quarantine revokes both, however soon after it the rotation came), and
    its other older keys end at once: it holds at most two live keys of its own making."""
    remote_agents_only(request, caller, runtime.settings)
    book = runtime.keys
    actor = f"key:{caller.key_id}"
    try:
        with runtime.clients.client() as client:
            tenant = agent_tenant(client, runtime, agent_id)
            tenant = check_agent_scope(caller, Permission.OPERATE, agent_id, tenant)
            older = [key for key in book.of_agent(client, agent_id) if key.tenant_id == tenant]
            itself = caller.role is Role.AGENT
            asking = next((k for k in older if k.key_id == caller.key_id), None)
            stored, token = book.create(
                client, Role.AGENT, tenant, actor, name=f"credential of {agent_id}",
                agent_id=agent_id, ttl_s=credential_ttl_s(runtime.settings),
                # (a millisecond after the asking key: listed after it, revoked with it)
                since=asking.created_at + 0.001 if itself and asking is not None else None,
            )  # fmt: skip
            now = book.clock()
            until = now + runtime.settings.agent_credential_overlap_s
            for key in older:
                # an agent's own rotation keeps one older key through the overlap, the one
                # it asked with: the others end now (rotating every second kept thousands)
                ends = until if not itself or key.key_id == caller.key_id else now
                if key.revoked_at is None and (key.expires_at is None or key.expires_at > ends):
                    book.expire_by(client, key, ends, actor)
    except PublishError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return CreatedKey(**KeyInfo.of(stored).model_dump(), token=token)


@router.get(
    f"{API_PREFIX}/agents/{{agent_id}}/credentials",
    response_model=list[KeyInfo],
    responses=error_responses(404, 422),
)
def list_credentials(
    agent_id: AgentId, runtime: RuntimeDep, caller: AgentOrReader
) -> list[KeyInfo]:
    """The agent's credentials, oldest first, with when each expires or was revoked (never
    a secret)."""
    with runtime.clients.client() as client:
        tenant = agent_tenant(client, runtime, agent_id)
        tenant = check_agent_scope(caller, Permission.READ, agent_id, tenant)
        keys = runtime.keys.of_agent(client, agent_id)
        return [KeyInfo.of(key) for key in keys if key.tenant_id == tenant]
