"""The audit trail: every change, chained per tenant so that tampering shows.

Every operator's command (``agents.control``) and every fact the dataflow
derives (``agents.state``) becomes one :class:`AuditEntry`: who (the actor),
what (the event type and its target), when, from where (the API caller's
address, for commands), before → after, and which message of the log it was
read from. Entries are written from the log, never beside it, so the trail
says what the system was told, in the order it was told.

Each tenant's entries form a hash chain (:class:`AuditChain`): entry ``n``
carries its sequence number, the hash of entry ``n-1`` and its own hash, a
SHA-256 over the previous hash and every field of the entry. :func:`verify`
walks a tenant's rows in order and reports an edited row (its hash no longer
matches its fields), a deleted row (a gap in the sequence, and the next row's
``prev_hash`` no longer matches), an inserted row (a sequence number twice, or
a ``prev_hash`` that matches nothing before it). Fleet-wide events (rules,
silences: tenant ``*``) have a chain of their own.

>>> chain = AuditChain()
>>> first = chain.append(AuditEntry(tenant_id="t1", at=1.8e9, actor="ops", action="released",
...     target="a1", after='{"reason":"fixed"}'))
>>> second = chain.append(AuditEntry(tenant_id="t1", at=1.8e9 + 1, actor="system",
...     action="status_changed", target="a1", before='{"status":"quarantined"}',
...     after='{"status":"active"}'))
>>> (first.seq, second.seq, second.prev_hash == first.hash)
(1, 2, True)
>>> verify([first, second])
[]
>>> from dataclasses import replace
>>> edited = replace(first, actor="someone-else")
>>> verify([edited, second])[0]
"tenant 't1' row 1 (released a1 by someone-else): edited: its hash does not match its fields"
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from schemas.models import TIMESTAMP_RANGE

#: The hash a tenant's first entry points back to.
GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change, before it takes its place in a chain.

    ``before`` and ``after`` are JSON texts (empty when unknown); ``source``
    names the log message it was read from (``cluster/topic/partition/offset``).
    """

    tenant_id: str
    at: float
    actor: str
    action: str
    target: str
    origin: str = ""
    before: str = ""
    after: str = ""
    reason: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class AuditRow:
    """An entry in its chain: its tenant's sequence number and the hashes."""

    tenant_id: str
    seq: int
    at: float
    actor: str
    action: str
    target: str
    origin: str
    before: str
    after: str
    reason: str
    source: str
    prev_hash: str
    hash: str = field(default="")

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The fields in table order.

        >>> AuditRow.columns()[:3], AuditRow.columns()[-1]
        (('tenant_id', 'seq', 'at'), 'hash')
        """
        return tuple(cls.__dataclass_fields__)


#: The fields an entry's hash covers, in table order (all of the row's but ``hash``).
_HASHED = AuditRow.columns()[:-1]
_AT = _HASHED.index("at")
_ENTRY_FIELDS = tuple(AuditEntry.__dataclass_fields__)


def entry_hash(row: AuditRow) -> str:
    """SHA-256 (hex) of the previous hash and every field of the row but its own hash.

    The fields are serialized as one JSON array in table order, with ``at`` in
    whole milliseconds (as the table stores it), so a row read back hashes alike.
    """
    return _digest([getattr(row, name) for name in _HASHED])  # (flat fields: no deep copy)


def _digest(values: list) -> str:
    """:func:`entry_hash` of a row's values in ``_HASHED`` order (``at`` in seconds)."""
    values[_AT] = round(values[_AT] * 1000)
    return hashlib.sha256(orjson.dumps(values)).hexdigest()


class AuditChain:
    """The heads of every tenant's chain; appends entries to them.

    Start it from the last stored row of each tenant (:meth:`resume`) so a
    restarted writer goes on where the table ends.
    """

    def __init__(self) -> None:
        self.heads: dict[str, tuple[int, str]] = {}

    def resume(self, last_rows: Iterable[AuditRow]) -> None:
        """Continue each tenant's chain after its stored last row."""
        for row in last_rows:
            self.heads[row.tenant_id] = (row.seq, row.hash)

    def append(self, entry: AuditEntry) -> AuditRow:
        """The entry as the next row of its tenant's chain."""
        seq, prev_hash = self.heads.get(entry.tenant_id, (0, GENESIS_HASH))
        fields = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
        fields["seq"], fields["prev_hash"] = seq + 1, prev_hash
        digest = _digest([fields[name] for name in _HASHED])  # (the row made once, hashed)
        self.heads[entry.tenant_id] = (seq + 1, digest)
        return AuditRow(**fields, hash=digest)


def verify(rows: Iterable[AuditRow]) -> list[str]:
    """What is wrong with the chains of ``rows`` (any tenants, any order): one sentence a
    problem, empty when every chain is whole.

    >>> chain = AuditChain()
    >>> rows = [chain.append(AuditEntry("t1", 1.8e9 + i, "ops", "released", f"a{i}"))
    ...         for i in range(3)]
    >>> verify([rows[0], rows[2]])  # the middle row deleted
    ["tenant 't1' row 3 (released a2 by ops): deleted: rows 2..2 are missing"]
    >>> from dataclasses import replace
    >>> forged = replace(rows[1], actor="x")
    >>> any("inserted" in problem for problem in verify(rows + [forged]))
    True
    >>> rewritten = replace(forged, hash=entry_hash(forged))  # fields and hash redone
    >>> verify([rows[0], rewritten, rows[2]])
    ["tenant 't1' row 3 (released a2 by ops): does not point back to the row before it: \
that row was rewritten (hash and all), or rows were replaced"]
    """
    problems: list[str] = []
    by_tenant: dict[str, list[AuditRow]] = {}
    for row in rows:
        by_tenant.setdefault(row.tenant_id, []).append(row)
    for tenant, chain in sorted(by_tenant.items()):
        chain.sort(key=lambda row: (row.seq, row.hash))
        expected_seq, prev_hash = 1, GENESIS_HASH
        for row in chain:
            name = f"tenant {tenant!r} row {row.seq} ({row.action} {row.target} by {row.actor})"
            if row.seq < expected_seq:
                problems.append(f"{name}: inserted: a second row with this sequence number")
                continue
            if entry_hash(row) != row.hash:
                problems.append(f"{name}: edited: its hash does not match its fields")
            elif row.seq > expected_seq:
                problems.append(f"{name}: deleted: rows {expected_seq}..{row.seq - 1} are missing")
            elif row.prev_hash != prev_hash:
                problems.append(
                    f"{name}: does not point back to the row before it: that row was rewritten "
                    "(hash and all), or rows were replaced"
                )
            expected_seq, prev_hash = row.seq + 1, row.hash
    return problems


def entry_of(event: dict, source: str, origin: str = "") -> AuditEntry:
    """The audit entry of one lifecycle event (a ``LifecycleEvent`` as a dict): the
    target is the rule, the silence, the key or the agent it is about; ``before``/``after``
    what the event says of them.

    >>> entry = entry_of({"type": "status_changed", "agent_id": "a1", "tenant_id": "t1",
    ...     "actor": "system", "timestamp": 1.8e9,
    ...     "payload": {"from": "active", "to": "quarantined", "reason": "score 10 < 20"}},
    ...     source="c/agents.state/0/7")
    >>> entry.target, entry.before, entry.after, entry.reason
    ('a1', '{"status":"active"}', '{"status":"quarantined"}', 'score 10 < 20')
    >>> entry_of({"type": "rule_changed", "agent_id": "*", "tenant_id": "*", "actor": "ops",
    ...     "timestamp": 1.8e9, "payload": {"action": "delete", "name": "rapid_changes"}},
    ...     source="").target
    'rapid_changes'
    >>> entry_of({"type": "key_revoked", "agent_id": "a1", "tenant_id": "t1", "actor": "ops",
    ...     "timestamp": 1.8e9, "payload": {"key_id": "0c8a1b2c3d4e", "role": "agent"}},
    ...     source="").target  # (the key; its agent is in ``after``)
    'key:0c8a1b2c3d4e'
    """
    payload = dict(event.get("payload") or {})
    kind = event["type"]
    target = event["agent_id"]
    before = after = ""
    reason = str(payload.pop("reason", "") or "")
    if kind == "status_changed":
        before, after = {"status": payload.get("from")}, {"status": payload.get("to")}
        number = transition_number(event)
        if number is not None:  # (the lifecycle table's count: the chain shows a gap)
            before["transitions"], after["transitions"] = number - 1, number
        before, after = _json(before), _json(after)
    elif kind == "rule_changed":
        rule = payload.get("rule") or {}
        target = str(payload.get("name") or rule.get("name") or target)
        after = _json(payload)
    elif kind in ("silence_created", "silence_expired"):
        target = str(payload.get("id") or target)
        after = _json(payload)
    elif kind in ("key_created", "key_revoked", "key_expiry_changed"):
        # (the key is what changed; its agent, if any, stays in ``after``: a review found
        # ?target=<key id> finding nothing when the target was the agent or *)
        target = f"key:{payload.get('key_id')}" if payload.get("key_id") else target
        after = _json(payload)
    elif payload:
        after = _json(payload)
    at = float(event["timestamp"])
    if not TIMESTAMP_RANGE[0] <= at <= TIMESTAMP_RANGE[1]:  # (NaN too: it could not be stored)
        raise ValueError(f"timestamp {at!r} is outside years 2000–2100")
    return AuditEntry(
        tenant_id=event["tenant_id"],
        at=at,
        actor=event["actor"],
        action=kind,
        target=target,
        origin=origin or str(event.get("origin") or ""),
        before=before,
        after=after,
        reason=reason,
        source=source,
    )


def transition_number(event: dict) -> int | None:
    """The agent's transition count a ``status_changed`` event carries (the lifecycle
    table numbers each agent's changes 1, 2, ...: payload ``transitions``); None for
    another event, or one without it.

    >>> transition_number({"type": "status_changed", "payload": {"transitions": 3}})
    3
    >>> transition_number({"type": "rule_changed", "payload": {"transitions": 3}}) is None
    True
    """
    if event.get("type") != "status_changed":
        return None
    number = (event.get("payload") or {}).get("transitions")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        return None
    return number


class Replays:
    """The last transition number audited of each agent, so that a status change
    published again is audited once. The dataflow replays its input since its last
    recovery snapshot after a restart and publishes what it finds again: the same
    ``status_changed`` events, with the same numbers (:func:`transition_number`), at new
    offsets of ``agents.state``. A change numbered at or below its agent's last one is
    such a replay. Keeps the ``limit`` agents changed last (a replay goes back seconds).

    >>> replays = Replays(limit=2)
    >>> def change(agent, n):
    ...     return {"type": "status_changed", "agent_id": agent, "tenant_id": "t1",
    ...             "payload": {"transitions": n}}
    >>> [replays.replayed(change("a1", n)) for n in (1, 2, 1, 2, 3)]
    [False, False, True, True, False]
    >>> replays.replayed({"type": "status_changed", "agent_id": "a1", "tenant_id": "t1"})
    False
    >>> replays.resume([("t1", "a2", 7)]); replays.replayed(change("a2", 7))
    True
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: (an OrderedDict: a plain dict's first key after many deletions at its front
        #: takes a scan of the deleted slots, ~3 µs an event at 10,000 agents)
        self.last: OrderedDict[tuple[str, str], int] = OrderedDict()

    def resume(self, last: Iterable[tuple[str, str, int]]) -> None:
        """Start from the stored trail: ``(tenant, agent, last transition number)``,
        least recent first."""
        for tenant, agent, number in last:
            self._keep((tenant, agent), int(number))

    def replayed(self, event: dict) -> bool:
        """Whether ``event`` is a status change already audited (else it is noted as
        audited: call it once per event, just before it goes into the trail)."""
        number = transition_number(event)
        if number is None:
            return False
        key = (str(event["tenant_id"]), str(event["agent_id"]))
        if number <= self.last.get(key, 0):
            return True
        self._keep(key, number)
        return False

    def _keep(self, key: tuple[str, str], number: int) -> None:
        self.last[key] = number
        self.last.move_to_end(key)  # (the most recent last)
        if len(self.last) > self.limit:
            self.last.popitem(last=False)


def _json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
