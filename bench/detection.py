"""Detection on the fleet simulator: recall per incident kind and false alerts per 100 agent-days.

    .venv/bin/python bench/detection.py --agents 1000 --hours 6 --incidents 60

Runs the dataflow's per-shard domain code (:class:`agentwatch.shard.ShardState`:
rules, trends, baselines and detector, security scores, alerts) in process over
a simulated fleet: 24 h of warm-up history (the seed's learning period), then
``--hours`` of watched time with ``--incidents`` planned incidents (kinds take
turns; ``silence`` is left out: heartbeat timeouts are not built yet).

An incident counts as detected when an alert fires for its agent between its
start and its end plus ``--grace`` (default: the longest rule duration, 10 min,
plus two heartbeats). Every other firing alert in the watched time is a false
alert; the rate is per 100 agent-days of watched time. Detector anomalies
(``is_anomaly``) are counted beside, as they do not page anyone by themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentwatch.settings import Settings  # noqa: E402
from agentwatch.shard import ShardState  # noqa: E402
from agentwatch.simulator import FleetSimulator, plan_incidents  # noqa: E402
from schemas.heartbeats import parse_heartbeats  # noqa: E402

KINDS = ("cpu_spike", "saturation", "error_burst", "memory_leak", "exfiltration", "flapping")
WARMUP_S = 24 * 3600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=6.0, help="watched time after warm-up")
    parser.add_argument("--incidents", type=int, default=60)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--grace", type=float, default=660.0, help="seconds after an incident")
    parser.add_argument("--out", type=Path, default=None, help="write the summary as JSON")
    args = parser.parse_args()

    settings = Settings()
    span_s = WARMUP_S + args.hours * 3600
    agent_ids = [f"agent-{i:06d}" for i in range(args.agents)]
    incidents = plan_incidents(
        agent_ids, args.incidents, span_s, seed=args.seed, kinds=KINDS, not_before_s=WARMUP_S
    )
    fleet = FleetSimulator(
        agents=args.agents, seed=args.seed, start=time.time() - span_s, incidents=incidents
    )
    shard = ShardState.new(settings)
    watched_from = fleet.start_epoch_s + WARMUP_S
    firing: list[dict] = []
    anomalies = 0
    beats = 0
    next_report_h = 2.0
    started = time.perf_counter()
    for batch in fleet.batches(until_s=span_s):
        _, values = batch.serialize()
        heartbeats, rejected = parse_heartbeats(values)
        assert not rejected, rejected[:3]
        out = shard.observe(heartbeats)
        beats += len(heartbeats)
        firing += [
            a for a in out.alerts if a["state"] == "firing" and a["fired_at"] >= watched_from
        ]
        anomalies += sum(
            1 for a in out.anomalies if a["is_anomaly"] and a["timestamp"] >= watched_from
        )
        hours = (float(heartbeats.timestamp.max()) - fleet.start_epoch_s) / 3600
        if hours >= next_report_h:
            print(f"  {hours:5.1f} h simulated, {beats:,} heartbeats", flush=True)
            next_report_h += 2
    seconds = time.perf_counter() - started

    matched: set[int] = set()
    detected = Counter()
    for incident in incidents:
        start = fleet.start_epoch_s + incident.start_s
        end = start + incident.duration_s + args.grace
        hits = [
            i
            for i, alert in enumerate(firing)
            if alert["agent_id"] == incident.agent_id and start <= alert["fired_at"] <= end
        ]
        matched.update(hits)
        if hits:
            detected[incident.kind] += 1
    planned = Counter(incident.kind for incident in incidents)
    false_alerts = [alert for i, alert in enumerate(firing) if i not in matched]
    agent_days = args.agents * args.hours / 24
    summary = {
        "agents": args.agents,
        "watched_hours": args.hours,
        "heartbeats": beats,
        "seconds": round(seconds, 1),
        "per_kind": {
            kind: {
                "incidents": planned[kind],
                "detected": detected[kind],
                "recall": round(detected[kind] / planned[kind], 3) if planned[kind] else None,
            }
            for kind in KINDS
        },  # fmt: skip
        "firing_alerts": len(firing),
        "false_alerts": len(false_alerts),
        "false_alerts_per_100_agent_days": round(100 * len(false_alerts) / agent_days, 2),
        "false_alerts_by_rule": dict(Counter(a["rule"] for a in false_alerts)),
        "detector_anomalies_in_watched_time": anomalies,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
