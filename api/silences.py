"""Silences at runtime: create, list, expire (``/api/v1/silences``).

A new silence gets an id, is published on ``agents.control`` as a
``silence_created`` command (for every shard: agent ``*``; of the silence's tenant) and
recorded in the ClickHouse table ``silences``, the API's view. Expiring one early
publishes ``silence_expired`` and records the silence as deleted. The
dataflow's alert book (:meth:`agentwatch.alerts.AlertBook.apply_silence` and
``expire``) applies them: alerts a silence matches are marked ``silenced``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client
from pydantic import ConfigDict, Field, create_model

from agentwatch.settings import Settings
from api.publisher import EventPublisher
from schemas.events import FLEET, SILENCE_CREATED, SILENCE_EXPIRED
from schemas.models import EpochSeconds, Identifier, LifecycleEvent, Silence

#: ``type`` of the events this module publishes.

_COLUMNS = tuple(Silence.model_fields)

#: The body of ``POST /api/v1/silences``: a :class:`Silence` without its id (assigned),
#: starting now unless ``starts_at`` is given, created by the caller unless ``created_by`` is.
NewSilence = create_model(
    "NewSilence",
    __config__=ConfigDict(extra="forbid"),
    **{
        name: (field.annotation, field)
        for name, field in Silence.model_fields.items()
        if name not in ("id", "starts_at", "created_by")
    },
    starts_at=(EpochSeconds | None, Field(None, description="Default: now.")),
    created_by=(Identifier | None, Field(None, description="Default: X-Agentwatch-Actor.")),
)


class StoredSilence(Silence):
    """A silence as the API lists it: with whether it mutes alerts right now."""

    active: bool = Field(description="starts_at <= now < ends_at.")


class SilenceNotFound(LookupError):
    """No silence with that id (or it was expired already)."""


class SilenceBook:
    """The API's side of silences: reads the ``silences`` table, publishes changes."""

    def __init__(self, settings: Settings, publisher: EventPublisher) -> None:
        self.settings = settings
        self.publisher = publisher
        self._lock = threading.Lock()

    def create(self, client: Client, silence: Silence, actor: str) -> None:
        """Publish and record a silence (raises ``PublishError``, leaving nothing behind)."""
        with self._lock:
            now = time.time()
            event = self._event(SILENCE_CREATED, silence.model_dump(), actor, silence.tenant_id)
            self.publisher.publish(event, FLEET)
            self._record(client, silence, deleted=False, version=now, actor=actor)

    def expire(
        self,
        client: Client,
        silence_id: str,
        actor: str,
        allowed: Callable[[Silence], None] | None = None,
    ) -> Silence:
        """Expire a silence now; raises :class:`SilenceNotFound` for an unknown id.
        ``allowed`` is called with the silence first and may raise to refuse."""
        with self._lock:
            found = self._read(client, silence_id)
            if not found:
                raise SilenceNotFound(f"no silence {silence_id!r}; GET /api/v1/silences lists them")
            silence = found[0]
            if allowed is not None:
                allowed(silence)
            event = self._event(SILENCE_EXPIRED, {"id": silence.id}, actor, silence.tenant_id)
            self.publisher.publish(event, FLEET)
            self._record(client, silence, deleted=True, version=time.time(), actor=actor)
            return silence

    def list(self, client: Client, include_expired: bool = False) -> list[StoredSilence]:
        """The silences not deleted, newest first; those that ended only if asked."""
        now = time.time()
        stored = [
            StoredSilence(**s.model_dump(), active=s.starts_at <= now < s.ends_at)
            for s in self._read(client)
        ]
        if not include_expired:
            stored = [s for s in stored if s.ends_at > now]
        return sorted(stored, key=lambda s: s.starts_at, reverse=True)

    @staticmethod
    def new_id() -> str:
        """A fresh silence id."""
        return uuid.uuid4().hex

    def _read(self, client: Client, silence_id: str | None = None) -> list[Silence]:
        """Silences not deleted (``FINAL`` keeps each id's newest row), by id."""
        where, parameters = "", {}
        if silence_id is not None:
            where, parameters = "WHERE id = {id:String}", {"id": silence_id}
        columns = ", ".join(
            f"toFloat64({c})" if c in ("starts_at", "ends_at") else c for c in _COLUMNS
        )
        result = client.query(
            f"SELECT {columns}, deleted FROM {self.settings.clickhouse_database}.silences "
            f"FINAL {where} ORDER BY id",
            parameters=parameters,
        )
        return [
            Silence.model_validate(dict(zip(_COLUMNS, row[:-1], strict=True)))
            for row in result.result_rows
            if not row[-1]
        ]

    def _record(
        self, client: Client, silence: Silence, deleted: bool, version: float, actor: str
    ) -> None:
        values = silence.model_dump()
        for name in ("starts_at", "ends_at"):
            values[name] = datetime.fromtimestamp(values[name], UTC)
        client.insert(
            "silences",
            [(*(values[c] for c in _COLUMNS), deleted, version, actor)],
            column_names=(*_COLUMNS, "deleted", "version", "updated_by"),
            database=self.settings.clickhouse_database,
        )

    def _event(self, kind: str, payload: dict, actor: str, tenant_id: str) -> dict:
        """The command for every shard (agent ``*``), of the silence's tenant (``*``: of
        every tenant), whose audit row that tenant then reads."""
        return LifecycleEvent(
            type=kind, agent_id=FLEET, tenant_id=tenant_id or FLEET, actor=actor,
            timestamp=time.time(), payload=payload,
        ).model_dump(mode="json")  # fmt: skip
