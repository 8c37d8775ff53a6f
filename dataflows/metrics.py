"""``/metrics`` of a dataflow process: what it read, refused, found and how long its steps
took, in the Prometheus text format, on ``AGENTWATCH_DATAFLOW_METRICS_PORT`` (0: not served).

The steps count per step, never per heartbeat (a counter's increment takes a lock). Each
process of a Bytewax cluster serves its own (give each its own port); the counters start at
0 when the process starts, as Prometheus expects of counters.

Recovery snapshots are timed and sized where the shards' state is pickled for them
(``dataflows.shard_cell.ShardCell``): ``agentwatch_dataflow_snapshot_seconds`` (one
observation per shard snapshotted) and ``agentwatch_dataflow_state_bytes`` (the state of
every shard of the process, as of its latest snapshot). Not here: ingest lag (the API's
``/metrics`` exports ``agentwatch_dataflow_lag_messages`` from the group's committed
offsets).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Summary, start_http_server

log = logging.getLogger(__name__)


class DataflowMetrics:
    """The process's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.heartbeats = Counter(
            "agentwatch_dataflow_heartbeats",
            "Valid heartbeats the shards took (judged, learned from).",
            registry=r,
        )
        self.dead_letters = Counter(
            "agentwatch_dataflow_dead_letters",
            "Messages sent to the dead-letter topic, by the topic they were read from.",
            ["topic"],
            registry=r,
        )
        self.records = Counter(
            "agentwatch_dataflow_records",
            "Records the shards published, by kind (anomalies: heartbeats that stood out, decided "
            "anomalous or not).",
            ["kind"],
            registry=r,
        )
        self.anomalies = Counter(
            "agentwatch_dataflow_anomalies",
            "The detector's decisions that a heartbeat is anomalous.",
            registry=r,
        )
        self.failed_commands = Counter(
            "agentwatch_dataflow_failed_commands",
            "Commands (events and control messages for the shards) whose step raised: each "
            "was skipped and logged (shard_command_failed) instead of stopping the dataflow.",
            ["command"],
            registry=r,
        )
        self.threats = Counter(
            "agentwatch_dataflow_threats",
            "Threat-rule firings, by rule and severity.",
            ["rule", "severity"],
            registry=r,
        )
        self.step_seconds = Summary(
            "agentwatch_dataflow_shard_step_seconds",
            "Time of one step of a shard (a batch of heartbeats, a command or a tick).",
            registry=r,
        )

        self.snapshot_seconds = Summary(
            "agentwatch_dataflow_snapshot_seconds",
            "Time to pickle one shard's state for a recovery snapshot.",
            registry=r,
        )
        #: shard cell → bytes of its latest snapshot (the gauge is their sum)
        self._state_bytes: dict[int, int] = {}
        Gauge(
            "agentwatch_dataflow_state_bytes",
            "Bytes of the shards' state in this process, as pickled for their latest snapshots.",
            registry=r,
        ).set_function(lambda: sum(self._state_bytes.values()))

    def observe_snapshot(self, shard: int, size: int, seconds: float) -> None:
        """A shard's state was pickled for a snapshot: ``size`` bytes in ``seconds``."""
        self._state_bytes[shard] = size
        self.snapshot_seconds.observe(seconds)

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
        log.info("dataflow_metrics_serving address=%s:%d path=/metrics", host, port)


#: The metrics of this process (the steps of every worker count into them).
METRICS = DataflowMetrics()
