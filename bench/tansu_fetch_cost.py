"""What a consumer at the head of a partition costs the embedded broker, against the number
of record batches the partition holds.

    .venv/bin/python bench/tansu_fetch_cost.py
    .venv/bin/python bench/tansu_fetch_cost.py --held 0 10000 40000 --seconds 10

Why: Tansu 0.6.0's memory storage (the embedded profile's broker) keeps every batch it was
sent as an object of its own, has no retention (its ``delete_records`` is not implemented),
and answers each fetch by listing every batch object of the partition before it picks the
ones after the fetch offset. So a consumer that keeps up with a live partition costs the
broker more CPU the more batches that partition holds, whatever their size.

What it does: a Tansu broker on a free port, one topic of one partition. For each figure of
``--held`` it fills the partition up to that many batches (one message each: a flush after
every produce), then a consumer configured as the dataflow's and the loader's are
(``fetch.wait.max.ms`` 100, ``fetch.min.bytes`` 1 MB) tails the partition from its end while
a producer adds one message every 100 ms (a live tail) for ``--seconds``; the broker's CPU
over that time is the figure. Printed, and written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from infra.broker import free_port, start_broker  # noqa: E402

TOPIC = "fetch-cost"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def tail(bootstrap: str, stop: threading.Event, fetched: list[int]) -> None:
    """Consume from the partition's end until ``stop``, as the dataflow's source does."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "fetch-cost", "enable.auto.commit": False,
        "fetch.wait.max.ms": 100, "fetch.min.bytes": 1024 * 1024,
    })  # fmt: skip
    consumer.assign([TopicPartition(TOPIC, 0, -1)])  # -1: the end
    try:
        while not stop.is_set():
            fetched[0] += len(consumer.consume(1000, 0.2))
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held", type=int, nargs="+", default=[0, 5_000, 20_000, 50_000, 100_000])
    parser.add_argument("--seconds", type=float, default=10.0, help="tail each for this long")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/tansu_fetch_cost.json")
    options = parser.parse_args()

    broker = start_broker("127.0.0.1", free_port())
    results = []
    try:
        bootstrap = broker.bootstrap_servers
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result(10)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        held = 0
        for target in sorted(options.held):
            while held < target:  # one batch each: flushed one by one
                producer.produce(TOPIC, value=b"x" * 300)
                producer.flush(10)
                held += 1
            stop, fetched = threading.Event(), [0]
            tailing = threading.Thread(target=tail, args=(bootstrap, stop, fetched))
            tailing.start()
            time.sleep(2.0)  # assigned and fetching
            before, started = cpu_seconds(broker.process.pid), time.monotonic()
            sent = 0
            while time.monotonic() - started < options.seconds:
                producer.produce(TOPIC, value=b"y")
                producer.flush(10)
                sent += 1
                time.sleep(0.1)
            took = time.monotonic() - started
            share = (cpu_seconds(broker.process.pid) - before) / took
            stop.set()
            tailing.join(30)
            held += sent
            results.append({"batches_held": target, "broker_cpu_share": round(share, 3)})
            print(f"{target:>9,} batches held: the broker uses {100 * share:5.1f} % of a core "
                  f"for one consumer at the head", flush=True)  # fmt: skip
    finally:
        broker.stop()
    options.out.parent.mkdir(parents=True, exist_ok=True)
    dated = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results}
    options.out.write_text(json.dumps(dated, indent=1) + "\n")
    print(f"written to {options.out}")


if __name__ == "__main__":
    main()
