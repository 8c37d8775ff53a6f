"""The shard keys' routing, checked against a real multi-worker Bytewax run: every key's
state is on the worker :func:`dataflows.routing.worker_of` names, and the spread keys put
the shards evenly on the workers (what the dataflow's scale-out rests on)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.testing import TestingSink, TestingSource, cluster_main

from dataflows.routing import SPREAD, key_hashes, plain_keys, spread_keys, worker_of

_MASK = (1 << 64) - 1


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def siphash13(data: bytes) -> int:
    """SipHash-1-3 of ``data`` with keys 0 and 0 (Rust's ``DefaultHasher``), one word at a
    time: the reference :func:`dataflows.routing.key_hashes` is held to."""
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    whole = len(data) - len(data) % 8
    for start in range(0, whole, 8):
        word = int.from_bytes(data[start : start + 8], "little")
        v3 ^= word
        sip_round()
        v0 ^= word
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def reference_hash(name: str) -> int:
    return siphash13(name.encode() + b"\xff")


class _WhoAmI(StatelessSourcePartition):
    """Each worker says, once, which thread it runs on."""

    def __init__(self, worker_index: int):
        self._said = False
        self._worker = worker_index

    def next_batch(self) -> list:
        if self._said:
            raise StopIteration
        self._said = True
        return [(self._worker, threading.get_ident())]

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC)


class WhoAmI(DynamicSource):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WhoAmI:
        return _WhoAmI(worker_index)


def workers_holding(keys: list[str], workers: int) -> dict[str, int]:
    """Run a flow of ``workers`` workers with a stateful step keyed by ``keys``: the
    worker each key's state was kept on."""
    flow = Dataflow("routing_probe")
    keyed = op.input("keys", flow, TestingSource([(key, None) for key in keys]))
    held = op.stateful_map("held", keyed, lambda state, _: (state, threading.get_ident()))
    on_thread: list = []
    op.output("held_out", held, TestingSink(on_thread))
    threads: list = []
    op.output("threads", op.input("whoami", flow, WhoAmI()), TestingSink(threads))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    worker_on = {thread: worker for worker, thread in threads}
    assert len(worker_on) == workers, threads
    return {key: worker_on[thread] for key, thread in on_thread}


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_every_key_is_held_by_the_worker_the_routing_names(workers):
    keys = list(plain_keys(16)) + list(spread_keys(12)) + ["*", "tenant-007", "é-ü"]
    held = workers_holding(keys, workers)
    assert held == {key: worker_of(key, workers) for key in keys}


def test_spread_keys_spread_evenly_where_plain_keys_do_not():
    # the default four shards, plainly named, all land on one of two workers
    assert Counter(worker_of(key, 2) for key in plain_keys(4)) == {1: 4}
    for workers in (1, 2, 3, 4, 6, 8, 12):
        shards = 24
        counts = Counter(worker_of(key, workers) for key in spread_keys(shards))
        assert counts == dict.fromkeys(range(workers), shards // workers), workers
    assert SPREAD % 8 == 0 and SPREAD % 7 == 0


def test_spread_keys_are_stable_and_distinct():
    keys = spread_keys(64)
    assert len(set(keys)) == 64
    assert keys[:4] == spread_keys(4)  # a shard's name does not depend on the count
    assert all(key == str(i) or key.startswith(f"{i}-") for i, key in enumerate(keys))


def test_the_vectorised_hash_is_the_routing_hash_at_every_length():
    # every tail length (0-7 bytes past whole words) and several whole words, with
    # multi-byte characters
    for length in range(1, 26):
        names = [(f"k{i}-" + "é" * length)[:length] for i in range(50)]
        names = [name for name in names if len(name.encode()) == len(names[0].encode())]
        assert key_hashes(names).tolist() == [reference_hash(name) for name in names], length


def test_spread_keys_are_the_first_names_that_hash_right():
    # the search one name at a time, as the keys were first found (state is keyed by them)
    def first_name(shard: int) -> str:
        name, n = str(shard), 0
        while reference_hash(name) % SPREAD != shard % SPREAD:
            n += 1
            name = f"{shard}-{n}"
        return name

    assert spread_keys(4) == ("0-1410", "1-825", "2-2834", "3-1177")
    assert list(spread_keys(24)) == [first_name(shard) for shard in range(24)]
