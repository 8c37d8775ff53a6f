"""Which worker of a Bytewax cluster holds a state key, and shard keys that spread evenly.

Bytewax (0.21, pinned) sends every key of a stateful step to one worker: the key's
string is hashed with Rust's ``DefaultHasher`` (SipHash-1-3, keys 0 and 0; a ``str``
hashes its bytes and then the byte ``0xff``) and the hash, modulo the number of workers,
picks the worker. The keys ``"0"`` … ``"3"`` all hash to worker 1 of 2, so a flow keyed
by four shards named that way leaves a second worker with nothing to do.

:func:`spread_keys` names shard *i* so that its hash is *i* modulo :data:`SPREAD`: shard
*i* then lands on worker *i mod W* for every worker count *W* that divides
:data:`SPREAD` (1–8, 10, 12, 14, 15, 20, 21, 24, … 840), which is an even spread whenever
the shard count is a multiple of *W*. The names are found once (about 840 hashes a
shard) and recorded with the state (``layout.json`` in the recovery directory), so a
restart keys the same state the same way.

``tests/test_routing.py`` runs a real multi-worker Bytewax flow and checks that every
key lands where :func:`worker_of` says: a Bytewax upgrade that changes the routing
fails there, not silently in production.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: Shard keys are spread evenly over every worker count dividing this (lcm of 1..8).
SPREAD = 840


def key_hash(key: str) -> int:
    """The hash Bytewax routes a state key by (Rust's ``Hash`` of a ``str``)."""
    return int(key_hashes([key])[0])


def worker_of(key: str, workers: int) -> int:
    """The worker (0 … ``workers`` − 1) of a Bytewax cluster that holds ``key``'s state.

    >>> [worker_of(str(shard), 2) for shard in range(4)]
    [1, 1, 1, 1]
    """
    return key_hash(key) % workers


@lru_cache(maxsize=16)
def spread_keys(shard_count: int) -> tuple[str, ...]:
    """Names for ``shard_count`` shards, shard *i* on worker *i mod W* for every *W*
    dividing :data:`SPREAD`: ``"i"`` itself when it hashes right, else the first
    ``"i-n"`` that does (about :data:`SPREAD` names tried a shard, hashed
    :data:`_CANDIDATES` at a time: 256 shards take 0.16 s, not the 1.26 s of one hash a
    name in Python).

    >>> keys = spread_keys(4)
    >>> [worker_of(key, 2) for key in keys], [worker_of(key, 4) for key in keys]
    ([0, 1, 0, 1], [0, 1, 2, 3])
    """
    return tuple(_spread_key(shard) for shard in range(shard_count))


#: How many names :func:`spread_keys` hashes at once.
_CANDIDATES = 2048


def _spread_key(shard: int) -> str:
    want = shard % SPREAD
    if key_hash(str(shard)) % SPREAD == want:
        return str(shard)
    start = 1
    while True:
        # a block of names of one length (n of one number of digits): one array each
        end = min(start + _CANDIDATES, 10 ** len(str(start)))
        names = [f"{shard}-{n}" for n in range(start, end)]
        hits = np.flatnonzero(key_hashes(names) % SPREAD == want)
        if hits.size:
            return names[hits[0]]
        start = end


def key_hashes(names: list[str]) -> np.ndarray:
    """The routing hash of each of ``names``, all of one length in UTF-8, at once:
    SipHash-1-3 with keys 0 and 0 of the name's bytes and ``0xff``, on arrays of words
    (numpy's ``uint64`` arithmetic wraps as Rust's does). ``tests/test_routing.py``
    holds it equal to a plain one-word-at-a-time SipHash at every length.

    >>> [hex(h) for h in key_hashes(["0-1", "é-"])]  # (3 bytes each)
    ['0x59a69355ba16fa6f', '0xb5aa6040a7305fae']
    """
    data = np.frombuffer(b"".join(name.encode() + b"\xff" for name in names), np.uint8)
    data = data.reshape(len(names), -1)
    length = data.shape[1]
    whole = length - length % 8
    padded = np.zeros((len(names), whole + 8), np.uint8)
    padded[:, :length] = data
    padded[:, -1] = length & 0xFF  # the last word: the tail's bytes, the length on top
    words = padded.view("<u8")
    v0 = np.full(len(names), 0x736F6D6570736575, np.uint64)
    v1 = np.full(len(names), 0x646F72616E646F6D, np.uint64)
    v2 = np.full(len(names), 0x6C7967656E657261, np.uint64)
    v3 = np.full(len(names), 0x7465646279746573, np.uint64)

    def rotl(x: np.ndarray, bits: int) -> np.ndarray:
        return (x << np.uint64(bits)) | (x >> np.uint64(64 - bits))

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = v0 + v1
        v1 = rotl(v1, 13) ^ v0
        v0 = rotl(v0, 32)
        v2 = v2 + v3
        v3 = rotl(v3, 16) ^ v2
        v0 = v0 + v3
        v3 = rotl(v3, 21) ^ v0
        v2 = v2 + v1
        v1 = rotl(v1, 17) ^ v2
        v2 = rotl(v2, 32)

    for column in range(words.shape[1]):
        word = words[:, column]
        v3 = v3 ^ word
        sip_round()
        v0 = v0 ^ word
    v2 = v2 ^ np.uint64(0xFF)
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def plain_keys(shard_count: int) -> tuple[str, ...]:
    """The names of state made before :func:`spread_keys`: ``"0"``, ``"1"``, …"""
    return tuple(str(shard) for shard in range(shard_count))
