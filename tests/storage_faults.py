"""Slow and failing storage, injected at the loader's ClickHouse client boundary.

:class:`FaultyClient` wraps a real clickhouse-connect client: reads pass through
untouched, and each write (``insert``, ``insert_df``, ``insert_arrow``, ``raw_insert``)
first obeys the :class:`StorageFault` a test drives from its own thread: wait ``delay_s``, or
raise the error a ClickHouse server gives when it refuses an insert. The loader
under test is the real one; only what its client answers changes.

>>> fault = StorageFault()
>>> fault.refuse("TOO_MANY_PARTS")
>>> fault.check("metrics")
Traceback (most recent call last):
...
clickhouse_connect.driver.exceptions.OperationalError: Code: 252. TOO_MANY_PARTS (injected)
>>> fault.clear()
>>> fault.check("metrics")
>>> fault.refused, fault.writes
(1, 2)
"""

from __future__ import annotations

import threading

from clickhouse_connect.driver.exceptions import OperationalError


class StorageFault:
    """What the next writes meet: a delay, a refusal, or nothing (thread-safe).

    ``tables``: the tables it applies to (None: every table).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cleared = threading.Event()
        self._cleared.set()
        self.delay_s = 0.0
        self.error: str | None = None
        self.tables: frozenset[str] | None = None
        self.writes = 0
        self.refused = 0
        self.delayed = 0

    def slow(self, delay_s: float, tables: tuple[str, ...] | None = None) -> None:
        """Every write (to ``tables``) takes ``delay_s`` longer, until :meth:`clear`."""
        with self._lock:
            self.delay_s, self.error = delay_s, None
            self.tables = None if tables is None else frozenset(tables)
            self._cleared.clear()

    def refuse(self, error: str, tables: tuple[str, ...] | None = None) -> None:
        """Every write (to ``tables``) fails with ``error``, until :meth:`clear`."""
        with self._lock:
            self.delay_s, self.error = 0.0, error
            self.tables = None if tables is None else frozenset(tables)
            self._cleared.clear()

    def clear(self) -> None:
        """Writes go through again (a delayed write under way ends its wait now)."""
        with self._lock:
            self.delay_s, self.error, self.tables = 0.0, None, None
            self._cleared.set()

    def check(self, table: str) -> None:
        """Apply the fault to one write into ``table``."""
        with self._lock:
            self.writes += 1
            applies = self.tables is None or table in self.tables
            delay_s, error = (self.delay_s, self.error) if applies else (0.0, None)
            if error is not None:
                self.refused += 1
            elif delay_s > 0:
                self.delayed += 1
        if error is not None:
            raise OperationalError(f"Code: 252. {error} (injected)")
        if delay_s > 0:
            self._cleared.wait(delay_s)


class FaultyClient:
    """A ClickHouse client whose writes first meet ``fault``; everything else is ``client``'s."""

    def __init__(self, client: object, fault: StorageFault) -> None:
        self._client = client
        self.fault = fault

    def insert(self, table: str, *args: object, **kwargs: object) -> object:
        self.fault.check(table)
        return self._client.insert(table, *args, **kwargs)

    def insert_df(self, table: str, *args: object, **kwargs: object) -> object:
        self.fault.check(table)
        return self._client.insert_df(table, *args, **kwargs)

    def insert_arrow(self, table: str, *args: object, **kwargs: object) -> object:
        self.fault.check(table)
        return self._client.insert_arrow(table, *args, **kwargs)

    def raw_insert(self, table: str, *args: object, **kwargs: object) -> object:
        self.fault.check(table.rpartition(".")[2].strip("`"))  # (`db`.`table`)
        return self._client.raw_insert(table, *args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)
