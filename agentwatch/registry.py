"""Which agents a shard accepts heartbeats from: one byte per agent beside its index.

A shard's :class:`~agentwatch.rows.AgentIndex` knows each agent's row and tenant;
the registry adds how the agent came to be known, its *standing*:

- ``REGISTERED``: a ``registered`` event (``POST /api/v1/agents/register``) made it
  known; the tenant of its registration is the index's, and a heartbeat that names
  another tenant is refused;
- ``AUTO``: its first heartbeat made it known, in the tenant that heartbeat named
  (``agents_auto_register``, the behaviour before registration existed; the tenant
  is not enforced);
- ``RETIRED``: it was decommissioned; its heartbeats are refused;
- ``UNKNOWN``: neither (an agent the shard has only heard of through a
  conversation or an operator's order has a row, but no standing).

:meth:`Registry.screen` judges a batch's heartbeats before any other step of the
shard sees them: with auto-registration off an agent without standing is refused;
the reasons say what to do. Refused heartbeats are dead-lettered by the dataflow.

>>> from agentwatch.rows import AgentIndex
>>> registry = Registry(AgentIndex())
>>> registry.register("a1", "t1")
>>> keep, refused = registry.screen(["a1", "a2", "a1"], ["t1", "t1", "t2"])
>>> keep.tolist()
[True, False, False]
>>> print(refused[0][1])  # doctest: +ELLIPSIS
agent a2 is not registered; register it with POST /api/v1/agents/register ...
>>> print(refused[1][1])
agent a1 is registered to tenant t1; this heartbeat says t2
>>> registry.screen(["a1"], ["t1"])
(None, [])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agentwatch.rows import AgentIndex, RowArrays

#: An agent's standing (the values of :attr:`Registry.standing`).
UNKNOWN, REGISTERED, AUTO, RETIRED = 0, 1, 2, 3
_STANDING = {"standing": (np.dtype(np.uint8), UNKNOWN, ())}


class Registry(RowArrays):
    """The standing of a shard's agents (see the module), and the screen of their
    heartbeats. ``auto_register``: a heartbeat of an agent without standing makes it
    known (``AUTO``) instead of being refused."""

    standing: np.ndarray

    def __init__(self, index: AgentIndex, auto_register: bool = False, capacity: int = 64):
        self._setup(_STANDING, index, capacity)
        self.auto_register = auto_register
        #: Agents ever registered here (0: no tenant to enforce, the screen skips it).
        self.registered = 0

    @classmethod
    def of_known(cls, index: AgentIndex, auto_register: bool = False) -> Registry:
        """The registry of a shard from before registration existed: every agent its
        index knows is treated as registered (in the tenant the index holds)."""
        registry = cls(index, auto_register, capacity=max(64, len(index)))
        registry.standing[: len(index)] = REGISTERED
        registry.registered = len(index)
        return registry

    def standing_of(self, agent_id: str) -> int:
        """The agent's standing (``UNKNOWN`` for an agent the index does not know)."""
        row = self.index.row(agent_id)
        if row is None or row >= self.capacity:
            return UNKNOWN
        return int(self.standing[row])

    def register(self, agent_id: str, tenant_id: str) -> None:
        """The agent was registered to ``tenant_id`` (the lifecycle table accepted it)."""
        known = self.index.row(agent_id)
        row = int(self.index.rows_for([agent_id], [tenant_id])[0])
        self.index.forget()
        if known is not None:
            self.index.assign_tenant(row, tenant_id)
        self._fit()
        self.standing[row] = REGISTERED
        self.registered += 1

    def retire(self, agent_id: str) -> None:
        """The agent was decommissioned: its heartbeats are refused from now on."""
        row = self.index.row(agent_id)
        if row is not None:
            self._fit()
            self.standing[row] = RETIRED

    def screen(
        self, agent_ids: Sequence[str], tenant_ids: Sequence[str]
    ) -> tuple[np.ndarray | None, list[tuple[int, str]]]:
        """Judge the heartbeats of ``agent_ids`` (with their ``tenant_ids``): a mask of
        those to keep (None: all of them, the common case) and ``(k, reason)`` for each
        refused one (``k`` its position). With auto-registration, agents without
        standing become ``AUTO``."""
        index = self.index
        if self.auto_register:
            rows = index.rows_for(agent_ids, tenant_ids)
            self._fit()
            standing = self.standing[rows]
            fresh = standing == UNKNOWN
            if fresh.any():
                self.standing[rows[fresh]] = AUTO
                standing = self.standing[rows]
        else:
            rows = index.known_rows(agent_ids)
            self._fit()
            standing = self.standing[rows]  # (row -1 reads the last row: masked below)
            if len(rows) and rows.min() < 0:
                standing = np.where(rows >= 0, standing, UNKNOWN)
        refused = (standing == UNKNOWN) | (standing == RETIRED)
        if self.registered:
            registered = standing == REGISTERED
            if registered.any():
                codes = index.tenant_codes(tenant_ids)
                refused |= registered & (index.tenant[rows] != codes)
        if not refused.any():
            return None, []
        reasons = []
        for k in np.flatnonzero(refused).tolist():
            reasons.append((k, self._why_not(agent_ids[k], tenant_ids[k], int(standing[k]))))
        return ~refused, reasons

    def _why_not(self, agent_id: str, tenant_id: str, standing: int) -> str:
        if standing == UNKNOWN:
            return (
                f"agent {agent_id} is not registered; register it with "
                "POST /api/v1/agents/register before it sends heartbeats (or, for a demo, "
                "set AGENTWATCH_AGENTS_AUTO_REGISTER=true to register agents by their first "
                "heartbeat)"
            )
        if standing == RETIRED:
            return (
                f"agent {agent_id} is decommissioned; its heartbeats are no longer accepted "
                "(register a new agent to bring it back)"
            )
        registered = self.index.tenant_of(self.index.row(agent_id))
        return (
            f"agent {agent_id} is registered to tenant {registered}; this heartbeat says "
            f"{tenant_id}"
        )
