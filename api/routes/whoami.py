"""``GET /api/v1/whoami``: the caller's key as the API sees it: its role, its tenant and
what it may do (the console asks, to offer only what the key may do)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field

from agentwatch.identity import ALL_TENANTS, ROLE_PERMISSIONS, Permission, Principal, Role
from api.identity import needs_any
from api.runtime import API_PREFIX

router = APIRouter()

#: Any key that passes the door: every role may ask who it is.
AnyCaller = Annotated[Principal, needs_any(*Permission)]


class Caller(BaseModel):
    """Who a key is and what it may do."""

    key_id: str = Field(description="The key's public id ('loopback': no key, the demo).")
    role: Role
    tenant_id: str = Field(description=f"The tenant it acts for ({ALL_TENANTS!r}: every one).")
    agent_id: str | None = Field(description="An agent's key: its agent.")
    permissions: list[Permission] = Field(description="What its role may do.")


@router.get(f"{API_PREFIX}/whoami", response_model=Caller, tags=["keys"])
def whoami(caller: AnyCaller) -> Caller:
    """The caller's key: its role, its tenant, and the permissions of its role (read,
    operate, query sql, report self, manage keys). Never the secret."""
    return Caller(
        key_id=caller.key_id,
        role=caller.role,
        tenant_id=caller.tenant_id,
        agent_id=caller.agent_id,
        permissions=sorted(ROLE_PERMISSIONS[caller.role], key=list(Permission).index),
    )
