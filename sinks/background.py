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
import threading

from confluent_kafka import Consumer

from agentwatch.settings import Settings

log = logging.getLogger("sinks.background")

#: How long the loop waits after a poll that found nothing to do while not ready.
IDLE_WAIT_S = 0.2
#: How long the loop waits after a failed poll before it tries again.
RETRY_WAIT_S = 1.0


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


class BackgroundReader:
    """Base of a reader run by :meth:`start` in a daemon thread until :meth:`stop`.

    Subclasses set :attr:`name` and implement :meth:`poll_once` (one cycle; tests
    drive it directly) and :meth:`_release`; they may override :meth:`_ready`
    (false: nothing to read yet, so the loop waits) and :meth:`_recover` (after a
    failed poll).
    """

    name = "reader"

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

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
        while not self._stopping.is_set():
            try:
                if not self.poll_once() and not self._ready():
                    self._stopping.wait(IDLE_WAIT_S)
            except Exception:
                log.exception("%s_loop_error action=retrying in %g s", self.name, RETRY_WAIT_S)
                self._recover()
                self._stopping.wait(RETRY_WAIT_S)
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()
