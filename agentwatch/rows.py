"""One row per agent: the index a shard's components share, and their growable arrays.

Every part of a shard's state (baselines, rules, trends, security scores)
keeps its per-agent numbers as rows of numpy arrays. :class:`AgentIndex` gives
each agent its row once for the whole shard, so the agent-id dictionary and the
tenant table exist once, not once per component, and a batch's rows are looked
up once (the index remembers the rows of the last id list it was given).
:class:`RowArrays` is the base of a component: named arrays, each with its
fill value, grown together when the index outgrows them.

>>> index = AgentIndex()
>>> index.rows_for(["a1", "a2", "a1"], ["t1", "t2", "t1"]).tolist()
[0, 1, 0]
>>> index.row("a2"), index.row("nobody"), index.agent(1)
(1, None, {'agent_id': 'a2', 'tenant_id': 't2'})
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np

#: A per-agent array's layout: its dtype, the value of a fresh row, the shape of one row.
ArraySpec = tuple[np.dtype, float, tuple[int, ...]]

#: Arrays grow by this share of their rows at a time (and by 64 rows at least), so at most
#: a 33rd of their rows are spare: ~25 B an agent at a million. Each growth copies the
#: arrays: at 250,000 agents a shard, ~200 MB once per ~7,800 new agents (~0.1 s).
GROWTH = 1 / 32


def grown_capacity(capacity: int, needed: int) -> int:
    """Rows to grow to from ``capacity`` so that ``needed`` rows fit.

    >>> grown_capacity(64, 65), grown_capacity(32_000, 32_001), grown_capacity(64, 1_000)
    (128, 33000, 1000)
    """
    return max(needed, capacity + max(64, int(capacity * GROWTH)))


def allocate(holder: object, arrays: dict[str, ArraySpec], capacity: int) -> None:
    """Set each array of ``arrays`` on ``holder``, ``capacity`` fresh rows long."""
    for name, (dtype, fill, shape) in arrays.items():
        setattr(holder, name, np.full((capacity, *shape), fill, dtype=dtype))


def grow(holder: object, arrays: dict[str, ArraySpec], capacity: int) -> None:
    """Lengthen each array of ``arrays`` on ``holder`` to ``capacity`` rows (new rows fresh)."""
    for name, (dtype, fill, shape) in arrays.items():
        old = getattr(holder, name)
        new = np.full((capacity, *shape), fill, dtype=dtype)
        new[: len(old)] = old
        setattr(holder, name, new)


def trimmed(holder: object, arrays: Iterable[str], count: int) -> dict:
    """``holder``'s attributes for a pickle, each array of ``arrays`` cut to its first
    ``count`` rows (a view: the spare rows the arrays keep to grow are not pickled; they
    grow again when the index outgrows them).

    >>> holder = type("Holder", (), {})()
    >>> holder.seen = np.zeros(80)
    >>> len(trimmed(holder, ["seen"], 50)["seen"])
    50
    """
    state = vars(holder).copy()
    for name in arrays:
        array = state[name]
        if len(array) > count:
            state[name] = array[:count]
    return state


#: The row numbers as int objects, shared by every index of the process: each of an index's
#: rows is an entry of its ``row_of`` whose value is an int of 28 bytes, and shards number
#: their rows from 0 alike, so one object per number serves them all (a fleet in 4 shards
#: keeps ~7 bytes an agent for these instead of 28).
_ROW_NUMBERS: list[int] = []


def row_number(row: int) -> int:
    """The process's shared int object for ``row``.

    >>> row_number(70_000) is row_number(69_999 + 1)
    True
    """
    numbers = _ROW_NUMBERS
    if row >= len(numbers):
        numbers.extend(range(len(numbers), (row // 1024 + 1) * 1024))
    return numbers[row]


def bytes_per_row(arrays: dict[str, ArraySpec]) -> int:
    """Bytes one row of ``arrays`` takes."""
    return sum(dtype.itemsize * int(np.prod(shape)) for dtype, _, shape in arrays.values())


def passes(rows: np.ndarray) -> list[np.ndarray]:
    """Positions of a batch split into passes in which no agent row repeats.

    Pass ``k`` holds the ``k``-th heartbeat of every agent, in batch order.

    >>> [p.tolist() for p in passes(np.array([7, 3, 7, 7, 3]))]
    [[0, 1], [2, 4], [3]]
    """
    n = len(rows)
    order = np.argsort(rows, kind="stable")
    ranked = rows[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    occurrence = np.empty(n, dtype=np.int64)
    occurrence[order] = np.arange(n) - group_start
    if occurrence.max() == 0:
        return [np.arange(n)]
    return [np.flatnonzero(occurrence == k) for k in range(occurrence.max() + 1)]


class AgentIndex:
    """The rows of a shard's agents and the tenant of each."""

    def __init__(self, capacity: int = 64):
        self.row_of: dict[str, int] = {}
        self.agent_ids: list[str] = []
        self.tenant_names: list[str] = []
        self._tenant_code: dict[str, int] = {}
        self.tenant = np.zeros(capacity, dtype=np.int32)
        self._last_ids: Sequence[str] | None = None
        self._last_rows = np.empty(0, dtype=np.int64)
        self._last_passes: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.agent_ids)

    def __getstate__(self) -> dict:
        """The agents' ids, the tenant names and each row's tenant code: ``row_of`` is
        made again from the ids on load (pickling a million-entry dict costs more than
        making it), and the tenant codes' spare rows are left out."""
        count = len(self.agent_ids)
        return {
            "agent_ids": self.agent_ids,
            "tenant_names": self.tenant_names,
            "tenant": self.tenant[:count],
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "row_of" not in state:  # (each id's row is its place in the list)
            count = len(self.agent_ids)
            row_number(count)
            self.row_of = dict(zip(self.agent_ids, _ROW_NUMBERS[:count], strict=True))
        if "_tenant_code" not in state:
            self._tenant_code = {name: code for code, name in enumerate(self.tenant_names)}
        self.forget()

    def rows_for(self, agent_ids: Sequence[str], tenant_ids: Sequence[str]) -> np.ndarray:
        """Row of each agent (read-only), adding rows for agents seen for the first time.

        Asked again for the same list object (the next component looking at the
        same batch), it answers from memory, until :meth:`forget`.
        """
        if agent_ids is self._last_ids and len(self._last_rows) == len(agent_ids):
            return self._last_rows
        row_of = self.row_of
        rows = np.fromiter(map(row_of.get, agent_ids, repeat(-1)), np.int64, len(agent_ids))
        for i in np.flatnonzero(rows < 0).tolist():
            row = row_of.get(agent_ids[i])
            rows[i] = self._add(agent_ids[i], tenant_ids[i]) if row is None else row
        rows.flags.writeable = False
        self._last_ids, self._last_rows, self._last_passes = agent_ids, rows, None
        return rows

    def passes_of(self, rows: np.ndarray) -> list[np.ndarray]:
        """:func:`passes` of ``rows``, worked out once for the rows :meth:`rows_for` gave
        last (every component of a shard looks at the same batch)."""
        if rows is not self._last_rows:
            return passes(rows)
        if self._last_passes is None:
            self._last_passes = passes(rows)
        return self._last_passes

    def known_rows(self, agent_ids: Sequence[str]) -> np.ndarray:
        """Row of each agent, -1 for an agent the index does not know (none is added).
        When every agent is known, the rows are remembered as :meth:`rows_for`'s.

        >>> index = AgentIndex()
        >>> _ = index.rows_for(["a1"], ["t1"])
        >>> index.known_rows(["a1", "a9"]).tolist()
        [0, -1]
        """
        if agent_ids is self._last_ids and len(self._last_rows) == len(agent_ids):
            return self._last_rows
        rows = np.fromiter(map(self.row_of.get, agent_ids, repeat(-1)), np.int64, len(agent_ids))
        if len(rows) and rows.min() >= 0:
            rows.flags.writeable = False
            self._last_ids, self._last_rows, self._last_passes = agent_ids, rows, None
        return rows

    def tenant_codes(self, tenant_ids: Sequence[str]) -> np.ndarray:
        """The index's code of each tenant id (what :attr:`tenant` holds), -1 for a tenant
        it does not know.

        >>> index = AgentIndex()
        >>> _ = index.rows_for(["a1", "a2"], ["t1", "t2"])
        >>> index.tenant_codes(["t2", "t1", "t3"]).tolist()
        [1, 0, -1]
        """
        codes = self._tenant_code
        return np.fromiter(map(codes.get, tenant_ids, repeat(-1)), np.int32, len(tenant_ids))

    def assign_tenant(self, row: int, tenant_id: str) -> None:
        """Make ``tenant_id`` the tenant of a row's agent (a registration says so)."""
        code = self._tenant_code.get(tenant_id)
        if code is None:
            code = self._tenant_code[tenant_id] = len(self.tenant_names)
            self.tenant_names.append(tenant_id)
        self.tenant[row] = code

    def forget(self) -> None:
        """Let go of the last id list (a batch's worth of strings) and its rows."""
        self._last_ids, self._last_rows = None, np.empty(0, dtype=np.int64)
        self._last_passes = None

    def row(self, agent_id: str) -> int | None:
        """The agent's row, None if it was never seen."""
        return self.row_of.get(agent_id)

    def agent(self, row: int) -> dict[str, str]:
        """``{"agent_id": …, "tenant_id": …}`` of a row (the start of every record about it)."""
        return {"agent_id": self.agent_ids[row], "tenant_id": self.tenant_names[self.tenant[row]]}

    def tenant_of(self, row: int) -> str:
        """The tenant id of a row's agent."""
        return self.tenant_names[self.tenant[row]]

    def _add(self, agent_id: str, tenant_id: str) -> int:
        row = len(self.agent_ids)
        if row == len(self.tenant):
            tenant = np.zeros(grown_capacity(row, row + 1), dtype=np.int32)
            tenant[:row] = self.tenant
            self.tenant = tenant
        code = self._tenant_code.get(tenant_id)
        if code is None:
            code = self._tenant_code[tenant_id] = len(self.tenant_names)
            self.tenant_names.append(tenant_id)
        self.row_of[agent_id] = row_number(row)
        self.agent_ids.append(agent_id)
        self.tenant[row] = code
        return row

    @classmethod
    def adopt(cls, holder: object) -> AgentIndex:
        """The index of a component pickled before indexes were shared (it kept its
        own ``row_of``, ``agent_ids``, ``tenant_names`` and ``tenant``)."""
        index = cls()
        index.row_of = holder.row_of
        index.agent_ids = holder.agent_ids
        index.tenant_names = holder.tenant_names
        index._tenant_code = {name: code for code, name in enumerate(holder.tenant_names)}
        index.tenant = np.asarray(holder.tenant, dtype=np.int32).copy()
        return index


class RowArrays:
    """Base of a shard component keeping per-agent numbers as rows of named arrays.

    A subclass declares its arrays (:data:`ArraySpec` by name) and calls
    :meth:`_rows` to find a batch's rows: the arrays grow with the index.

    >>> class Counts(RowArrays):
    ...     def __init__(self):
    ...         self._setup({"seen": (np.dtype(np.uint32), 0, ())}, AgentIndex(), capacity=2)
    >>> counts = Counts()
    >>> rows = counts._rows(["a", "b", "c"], ["t", "t", "t"])
    >>> counts.seen[rows] += 1
    >>> len(counts.seen), counts.bytes_per_agent()
    (66, 4)
    """

    index: AgentIndex
    _arrays: dict[str, ArraySpec]

    def _setup(self, arrays: dict[str, ArraySpec], index: AgentIndex | None, capacity: int) -> None:
        self.index = AgentIndex() if index is None else index
        self._arrays = arrays
        allocate(self, arrays, capacity)

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        """What a snapshot keeps: the arrays' rows of the index's agents (not the spare
        rows kept to grow into: see :data:`GROWTH`)."""
        if "_arrays" not in vars(self) or "index" not in vars(self):  # (an older layout's)
            return vars(self).copy()
        return trimmed(self, self._arrays, len(self.index))

    @property
    def capacity(self) -> int:
        """Rows the arrays have room for."""
        return len(getattr(self, next(iter(self._arrays))))

    def _rows(self, agent_ids: Sequence[str], tenant_ids: Sequence[str]) -> np.ndarray:
        """Each agent's row, with room in the arrays for agents new to the index."""
        rows = self.index.rows_for(agent_ids, tenant_ids)
        self._fit()
        return rows

    def _fit(self) -> None:
        """Grow the arrays until every agent of the index has a row, by :data:`GROWTH`
        of their rows at a time (doubling would leave up to half of them spare)."""
        needed = len(self.index)
        if needed > self.capacity:
            self._grow(grown_capacity(self.capacity, needed))

    def _grow(self, capacity: int) -> None:
        grow(self, self._arrays, capacity)

    def _relayout(self, arrays: dict[str, ArraySpec], fresh: Iterable[str] = ()) -> None:
        """Take a new layout of the arrays (settings changed): an array whose dtype or
        row shape changed, or that ``fresh`` names, starts over with fresh rows; the
        others keep their values (a new fill value applies to new rows)."""
        old, capacity = self._arrays, self.capacity
        redo = {
            name: spec
            for name, spec in arrays.items()
            if name in fresh or name not in old or old[name][::2] != spec[::2]
        }
        self._arrays = arrays
        allocate(self, redo, capacity)

    def bytes_per_agent(self) -> int:
        """Bytes of numeric state per agent (the shared index not counted)."""
        return bytes_per_row(self._arrays)
