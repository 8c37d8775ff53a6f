"""A topic reader that works in a daemon thread: start, stop, and the loop between.

The webhook deliverer and the audit writer read a few topics on consumers of
their own, beside the loader, each in its own thread. They share how that
thread lives: ``start`` once, ``poll_once`` until ``stop``, a failed poll
logged and retried after a second, the consumer and friends released once.

>>> class Counter(BackgroundReader):
...     name = "counter"
...     def __init__(self):
...         super().__init__()
...         self.polls = 0
...     def poll_once(self) -> int:
...         self.polls += 1
...         return 0
...     def _release(self) -> None:
...         print("released")
>>> counter = Counter()
>>> counter.start()
>>> counter.stop()
released
>>> counter.polls > 0
True
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer

from agentwatch.settings import Settings

log = logging.getLogger("sinks.background")

#: How long the loop waits after a poll that found nothing to do while not ready.
IDLE_WAIT_S = 0.2
#: How long the loop waits after a failed poll before it tries again.
RETRY_WAIT_S = 1.0
#: A :class:`Pacer`'s slice of work and its pause (seconds): a request that arrives
#: while a background thread works waits at most about a slice for the interpreter.
PACE_SLICE_S = 0.0005
PACE_PAUSE_S = 0.0002


def assigned_consumer(settings: Settings, name: str) -> Consumer:
    """A consumer that is assigned its partitions and keeps its offsets elsewhere (in
    ClickHouse): it never subscribes nor commits; its group id
    (``<loader_group_id>-<name>``) only names it to the broker."""
    return Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"{settings.loader_group_id}-{name}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "client.id": f"agentwatch-{name}",
        }
    )


def lower_this_thread(niceness: int) -> int | None:
    """Add ``niceness`` to the calling thread's nice value (at most 19) and return the
    thread's nice value; None where the system has none or refuses (nothing changes).

    Linux keeps a nice value per thread, and a thread inherits it from the thread that
    starts it: chDB's worker threads for a query inherit the querying thread's. So a
    background thread of the embedded API (the loader, which inserts every batch into
    chDB) gives the CPU to the requests' thread first (``docs/benchmarks.md``).

    >>> import threading
    >>> seen = []
    >>> worker = threading.Thread(target=lambda: seen.append(lower_this_thread(1)))
    >>> before = os.getpriority(os.PRIO_PROCESS, 0)
    >>> worker.start(); worker.join()
    >>> seen == [min(19, before + 1)], os.getpriority(os.PRIO_PROCESS, 0) == before
    (True, True)
    """
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        if niceness > 0 and current < 19:
            os.setpriority(os.PRIO_PROCESS, thread, min(19, current + niceness))
        return os.getpriority(os.PRIO_PROCESS, thread)
    except (AttributeError, OSError) as exc:  # not a Unix, or refused: run as it is
        log.info("thread_priority_unchanged reason=%r", str(exc))
        return None


class BackgroundReader:
    """Base of a reader run by :meth:`start` in a daemon thread until :meth:`stop`.

    Subclasses set :attr:`name` and implement :meth:`poll_once` (one cycle; tests
    drive it directly) and :meth:`_release`; they may override :meth:`_ready`
    (false: nothing to read yet, so the loop waits) and :meth:`_recover` (after a
    failed poll).
    """

    name = "reader"
    #: Added to the thread's nice value when it starts (:func:`lower_this_thread`).
    niceness = 0

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Since when its polls fail (time.time()) and the last error: exported on the
        #: loader's /metrics (an audit writer that fails while the changes it records go
        #: on is a gap in the trail; found by a review).
        self.failing_since: float | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        """Poll in a daemon background thread until :meth:`stop`."""
        if self._thread is not None:
            raise RuntimeError(f"the {self.name} is already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        log.info("%s_started", self.name)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the loop to stop, wait for it, and release what the reader holds."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("%s_stop_timeout waited_s=%g", self.name, timeout_s)
                return
        self._close()

    def poll_once(self) -> int:
        """One read-and-work cycle; how much was done."""
        raise NotImplementedError

    def _ready(self) -> bool:
        return True

    def _recover(self) -> None:
        """After a failed poll (logged): put the reader back in a state to go on."""

    def _release(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        lower_this_thread(self.niceness)
        while not self._stopping.is_set():
            try:
                done = self.poll_once()
                self.failing_since = None
                if not done and not self._ready():
                    self._stopping.wait(IDLE_WAIT_S)
            except Exception as exc:
                log.exception("%s_loop_error action=retrying in %g s", self.name, RETRY_WAIT_S)
                self.failing_since = self.failing_since or time.time()
                self.last_error = " ".join(str(exc).split())[:300] or type(exc).__name__
                self._recover()
                self._stopping.wait(RETRY_WAIT_S)
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()


class Pacer:
    """Lets the other threads of this process have the interpreter during a long loop
    of Python work in a background thread: :meth:`due` after ``slice_s`` of work,
    then :meth:`pause` sleeps ``pause_s``.

    Why: a thread waiting for the interpreter lock gets it only when the holder lets
    go, at the latest after ``sys.getswitchinterval()`` (5 ms). A request that arrives
    while the API's projection folds a batch of a thousand messages (~5 ms of Python)
    waited for that, which was most of the API's p99 (``docs/benchmarks.md``). A pause
    lets a waiting thread in within ``slice_s`` (not a zero sleep: the sleeper may take
    the lock back before the waiter has woken up).

    >>> now = [0.0]
    >>> pacer = Pacer(slice_s=0.5, pause_s=0.1, clock=lambda: now[0], sleep=now.append)
    >>> pacer.due()
    False
    >>> now[0] = 0.6
    >>> pacer.due()
    True
    >>> pacer.pause()  # sleeps 0.1 and starts a new slice
    >>> now[-1], pacer.due(), pacer.pauses
    (0.1, False, 1)
    """

    def __init__(
        self,
        slice_s: float = PACE_SLICE_S,
        pause_s: float = PACE_PAUSE_S,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.slice_s = slice_s
        self.pause_s = pause_s
        self._clock = clock
        self._sleep = sleep
        self._until = clock() + slice_s
        self.pauses = 0

    def restart(self) -> None:
        """Start a new slice (e.g. after a wait that let others run anyway)."""
        self._until = self._clock() + self.slice_s

    def due(self) -> bool:
        """Whether this slice of work is used up."""
        return self._clock() > self._until

    def pause(self) -> None:
        """Sleep ``pause_s``, then start a new slice."""
        self._sleep(self.pause_s)
        self.pauses += 1
        self._until = self._clock() + self.slice_s
