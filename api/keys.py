"""API keys over HTTP: make and revoke them (admins only).

``POST /api/v1/keys`` answers the new key's token once; nobody can read it again.
A key of a tenant can only be made by an admin of that tenant or of every tenant.
Create the app, then call :func:`install`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from agentwatch.identity import ALL_TENANTS, Permission, Principal, Role, authorize
from api.errors import error_responses, unprocessable
from api.identity import KeyBook, StoredKey, needs
from api.publisher import PublishError
from api.scope import check_free_for
from schemas.models import AgentIdentifier, Identifier

PREFIX = "/api/v1/keys"
KeyAdmin = Annotated[Principal, needs(Permission.MANAGE_KEYS)]


#: The longest life a key may be given (100 years): an expiry must stay a date.
MAX_KEY_TTL_S = 100 * 365.25 * 86400


class NewKeyRequest(BaseModel):
    """The body of ``POST /api/v1/keys``."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    tenant_id: Identifier = Field(description=f"The tenant it acts for ({ALL_TENANTS!r}: all).")
    agent_id: AgentIdentifier | None = Field(None, description="An agent's key: its agent.")
    name: str = Field("", max_length=128, description="What it is for, in words.")
    ttl_s: float | None = Field(
        None,
        gt=0,
        le=MAX_KEY_TTL_S,
        description="Expires after this long (seconds; at most 100 years: omit it for a key "
        "that never expires).",
    )


class KeyInfo(BaseModel):
    """A key as listed: never its secret."""

    key_id: str
    role: Role
    tenant_id: str
    agent_id: str
    name: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    created_by: str

    @classmethod
    def of(cls, stored: StoredKey) -> KeyInfo:
        return cls(**{name: getattr(stored, name) for name in cls.model_fields})


class CreatedKey(KeyInfo):
    """A key just made, with its token: shown this once."""

    token: str = Field(description="Send it as 'Authorization: Bearer <token>'.")


def install(app: FastAPI) -> None:
    """Add the key routes to ``app`` (its ``state.runtime`` holds the key book)."""

    @app.post(
        PREFIX,
        response_model=CreatedKey,
        status_code=201,
        tags=["keys"],
        responses=error_responses(403, 409, 422, 503),
    )
    def create_key(body: NewKeyRequest, request: Request, caller: KeyAdmin) -> CreatedKey:
        """Make a key (its token is in this answer only). An agent's key names an agent
        of its tenant: 409 for an agent id that is another tenant's."""
        reason = authorize(caller, Permission.MANAGE_KEYS, body.tenant_id)
        if reason is not None:
            raise HTTPException(403, detail=reason)
        runtime = request.app.state.runtime
        book: KeyBook = runtime.keys
        try:
            with runtime.clients.client() as client:
                if body.agent_id is not None:
                    check_free_for(client, runtime, body.agent_id, body.tenant_id)
                stored, token = book.create(
                    client, body.role, body.tenant_id, f"key:{caller.key_id}", body.name,
                    body.agent_id, body.ttl_s,
                )  # fmt: skip
        except ValueError as exc:
            raise unprocessable(str(exc), "body") from None
        except PublishError as exc:
            raise HTTPException(503, detail=str(exc)) from None
        return CreatedKey(**KeyInfo.of(stored).model_dump(), token=token)

    @app.delete(
        f"{PREFIX}/{{key_id}}",
        status_code=204,
        tags=["keys"],
        responses=error_responses(403, 404, 422, 503),
    )
    def revoke_key(
        key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")],
        request: Request,
        caller: KeyAdmin,
    ) -> None:
        """Revoke a key now (every API process refuses it within AGENTWATCH_API_KEY_CACHE_S)."""
        runtime = request.app.state.runtime
        with runtime.clients.client() as client:
            found = runtime.keys.get(client, key_id)
            if found is None or authorize(caller, Permission.MANAGE_KEYS, found.tenant_id):
                raise HTTPException(404, detail=f"no key {key_id!r}")
            try:
                runtime.keys.revoke(client, key_id, f"key:{caller.key_id}")
            except PublishError as exc:
                raise HTTPException(503, detail=str(exc)) from None
