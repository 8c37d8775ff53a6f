"""A shard's state as the dataflow's stateful step keeps it (:class:`ShardCell`).

It lives in a module of its own, not in :mod:`dataflows.heartbeats`: that module runs as
``python -m dataflows.heartbeats``, where its classes are ``__main__``'s, and a recovery
snapshot names its classes by module. A snapshot of a class of ``__main__`` restores only
in a process started the same way (not under a profiler, ``bytewax.run`` or a console
script).
"""

from __future__ import annotations

import pickle
import time

from agentwatch.shard import ShardState
from dataflows.metrics import METRICS


class ShardCell:
    """A shard's state as the stateful step keeps it: the live :class:`ShardState`, which
    a recovery snapshot takes by pickling it once (Bytewax's ``stateful_map`` snapshots
    by ``copy.deepcopy``; pickling in C is what a deep copy would cost anyway, and the
    engine then stores the bytes as they are). Each snapshot's time and size go into the
    process's metrics (``agentwatch_dataflow_snapshot_seconds``,
    ``agentwatch_dataflow_state_bytes``).

    >>> from agentwatch.settings import Settings
    >>> cell = ShardCell(ShardState.new(Settings()))
    >>> import copy; snapshot = copy.deepcopy(cell)
    >>> snapshot.state is None and len(snapshot.pickled) > 0, type(snapshot.live()).__name__
    (True, 'ShardState')
    """

    __slots__ = ("state", "pickled")

    def __init__(self, state: ShardState | None = None, pickled: bytes | None = None) -> None:
        self.state, self.pickled = state, pickled

    def __deepcopy__(self, _memo: dict) -> ShardCell:
        if self.state is None:  # (a snapshot of a snapshot: already bytes)
            return ShardCell(None, self.pickled)
        started = time.perf_counter()
        pickled = pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)
        METRICS.observe_snapshot(id(self), len(pickled), time.perf_counter() - started)
        return ShardCell(None, pickled)

    def __getstate__(self) -> dict:
        return {"pickled": self.pickled if self.state is None else pickle.dumps(self.state)}

    def __setstate__(self, state: dict) -> None:
        self.state, self.pickled = None, state["pickled"]

    def live(self) -> ShardState | object | None:
        """The state to go on with (unpickled on first use after a restore; None for a new
        shard)."""
        if self.state is None and self.pickled is not None:
            self.state, self.pickled = pickle.loads(self.pickled), None
        return self.state
