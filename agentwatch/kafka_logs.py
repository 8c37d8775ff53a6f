"""librdkafka's own log lines, through Python logging.

A Kafka client given no ``logger`` has librdkafka write its log lines (a refused
connection, a broker gone) straight to the process's stderr: outside the services'
structured logs, outside pytest's capture, and several times a second while a broker is
down. Every client agentwatch makes starts from ``Settings.kafka_config()``, which gives
it :data:`LIBRDKAFKA_LOG`: the lines reach Python logging (served by the client's
``poll``, on the polling thread), and a line that repeats is let through once per
:data:`REPEAT_INTERVAL_S` for each kind (:class:`RepeatFilter`).

>>> import logging
>>> record = lambda text: logging.LogRecord("k", logging.ERROR, "", 0, text, None, None)
>>> only_once = RepeatFilter(interval_s=60.0)
>>> [only_once.filter(record(f"Connect to 127.0.0.1:{port} failed")) for port in (9092, 9093)]
[True, False]
>>> only_once.filter(record("Broker transport failure"))
True
"""

from __future__ import annotations

import logging
import re
import time

#: A kind of line (its digits aside) is let through at most this often (seconds).
REPEAT_INTERVAL_S = 10.0


class RepeatFilter(logging.Filter):
    """Lets a log line through once per ``interval_s`` for each kind of message: the
    message with its numbers masked (ports, counts, milliseconds), its first 120
    characters. librdkafka repeats "Connect to ... failed" several times a second while
    the broker is down; one line every ``interval_s`` says the same."""

    def __init__(self, interval_s: float = REPEAT_INTERVAL_S) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._next: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = re.sub(r"\d+", "#", record.getMessage())[:120]
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            return False
        self._next[kind] = now + self._interval_s
        return True


#: The logger every agentwatch Kafka client hands librdkafka's lines to.
LIBRDKAFKA_LOG = logging.getLogger("agentwatch.librdkafka")
LIBRDKAFKA_LOG.addFilter(RepeatFilter())
