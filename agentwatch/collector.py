"""Python's cyclic garbage collector, tuned for the two kinds of process we run.

- **Batch work** (the dataflow, the loader): :func:`tune_for_batches`. A batch keeps
  thousands of objects alive at once, so the collector's young generation is made
  larger, and what was allocated at start-up is frozen out of its view.
- **A large heap that answers requests** (the API, whose projection holds every
  agent): :class:`SurvivorFreezer`. A full collection walks every tracked object:
  with 100,000 agents that took 30–200 ms, a dozen times while they registered and
  now and then after, and a request that arrives meanwhile waits for it
  (``docs/benchmarks.md``). What survives a full collection is long-lived by
  definition, so it is frozen: later full collections walk only what became
  long-lived since the one before. Cyclic garbage among frozen objects is not
  found until the next *refresh*: every ``refresh_s`` the frozen objects are
  handed back to the collector, and the next full collection walks them all once.

>>> import gc
>>> now = [0.0]
>>> freezer = SurvivorFreezer(refresh_s=3600.0, clock=lambda: now[0])
>>> freezer.install()
>>> _ = gc.collect()  # a full collection: what it leaves alive is frozen
>>> gc.get_freeze_count() > 0, freezer.freezes
(True, 1)
>>> now[0] = 3600.0  # an hour later, a full collection hands everything back
>>> _ = gc.collect()
>>> gc.get_freeze_count(), freezer.refreshes
(0, 1)
>>> _ = gc.collect()  # and the next one freezes again
>>> gc.get_freeze_count() > 0, freezer.freezes
(True, 2)
>>> freezer.uninstall()
>>> gc.unfreeze()
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


def tune_for_batches(young_threshold: int) -> None:
    """Make the collector cheap for batch work, process-wide.

    Everything allocated so far (modules, clients, the flow) is frozen out of the
    collector's view, and generation 0 is collected every ``young_threshold``
    allocations instead of 700 (0 keeps 700): a batch keeps thousands of objects
    alive at once (Kafka messages, decoded rows), and at 700 the collector ran many
    times per batch (measured: a quarter of the loader's time).
    """
    gc.freeze()
    if young_threshold > 0:
        gc.set_threshold(young_threshold, *gc.get_threshold()[1:])


class SurvivorFreezer:
    """Freezes what each full collection leaves alive (see the module docstring);
    every ``refresh_s`` (0: never) one full collection walks the whole heap again."""

    def __init__(self, refresh_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.refresh_s = refresh_s
        self.clock = clock
        self.frozen_at = clock()
        self.freezes = 0
        self.refreshes = 0

    def install(self) -> None:
        if self._on_collect not in gc.callbacks:
            gc.callbacks.append(self._on_collect)

    def uninstall(self) -> None:
        if self._on_collect in gc.callbacks:
            gc.callbacks.remove(self._on_collect)

    def _on_collect(self, phase: str, info: dict) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        now = self.clock()
        if self.refresh_s and now - self.frozen_at >= self.refresh_s and gc.get_freeze_count():
            # The next full collection walks everything once, cycles among old objects too.
            gc.unfreeze()
            self.frozen_at = now
            self.refreshes += 1  # (no logging here: this runs inside the collector)
            return
        gc.freeze()
        self.freezes += 1
