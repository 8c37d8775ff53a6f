"""The batch parser applies exactly the rules of the pydantic ``Heartbeat`` model."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.heartbeats import parse_heartbeats
from schemas.models import AGENT_STATES, Heartbeat

GOOD = {
    "agent_id": "a1",
    "tenant_id": "t1",
    "timestamp": "2026-11-25T12:00:00.250Z",
    "cpu_usage": 45.2,
    "memory_usage": 62.1,
    "disk_usage": 35.0,
    "network_latency": 12.5,
    "active_tasks": 3,
    "completed_tasks": 150,
    "failed_tasks": 2,
    "error_rate": 0.013,
    "response_time_avg": 234.5,
    "uptime_seconds": 86400,
    "bytes_out": 1024,
}

odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=False, width=64),
    st.text(max_size=30),
    st.sampled_from(["2026-11-25T12:00:00Z", "2026-11-25T12:00:00+02:00", "2026-11-25", "x"]),
    st.sampled_from(list(AGENT_STATES)),
    st.lists(st.integers(), max_size=2),
)


def model_accepts(doc: dict) -> bool:
    try:
        Heartbeat.model_validate(doc)
    except ValidationError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from([*GOOD, "status", "extra"]), odd_values, max_size=3),
    drop=st.sets(st.sampled_from(list(GOOD)), max_size=2),
)
def test_parser_and_model_agree(changes: dict, drop: set) -> None:
    doc = {k: v for k, v in {**GOOD, **changes}.items() if k not in drop}
    try:
        raw = orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):
        return
    batch, rejected = parse_heartbeats([raw, orjson.dumps(GOOD)])
    accepted = 0 in batch.index.tolist()
    assert accepted == model_accepts(orjson.loads(raw)), (doc, rejected)
    assert 1 in batch.index.tolist(), "a bad neighbour never costs a good message"


def test_accepted_values_equal_the_models() -> None:
    docs = [GOOD, {**GOOD, "timestamp": 1_795_608_000.5, "status": "busy", "agent_id": "b"}]
    batch, rejected = parse_heartbeats([orjson.dumps(d) for d in docs])
    assert rejected == []
    for row, doc in enumerate(docs):
        model = Heartbeat.model_validate(doc)
        assert batch.timestamp[row] == pytest.approx(model.timestamp, abs=1e-6)
        assert batch.metrics["cpu_usage"][row] == model.cpu_usage
        assert batch.status[row] == model.status


@pytest.mark.parametrize("value", [None, b"", b"{", b"[]", b"x" * 70_000])
def test_unparseable_values_are_rejected_with_a_reason(value: bytes | None) -> None:
    batch, rejected = parse_heartbeats([value, orjson.dumps(GOOD)])
    assert batch.index.tolist() == [1]
    assert rejected[0][0] == 0 and rejected[0][1]


def test_broken_messages_never_join_into_valid_ones() -> None:
    """Each message is decoded on its own: an object cut across two messages, or two
    objects in one message, never pass as heartbeats, whatever their neighbours."""
    whole = orjson.dumps(GOOD)
    cut = whole.index(b',"cpu_usage"')
    head, tail = whole[:cut], whole[cut:]  # together they would make `whole` again
    two_in_one = whole + b"," + whole
    batch, rejected = parse_heartbeats([head, tail, two_in_one, whole])
    assert batch.index.tolist() == [3]
    assert [i for i, _ in rejected] == [0, 1, 2]


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=1_300),
    odd=st.dictionaries(
        st.integers(min_value=0, max_value=1_299),
        st.tuples(st.sampled_from([*GOOD, "status", "extra"]), odd_values),
        max_size=3,
    ),
    required_only=st.booleans(),
)
def test_a_batch_parses_as_its_messages_one_at_a_time(
    size: int, odd: dict, required_only: bool
) -> None:
    """Whatever path a batch takes (all messages of one shape, decoded a slice at a time
    and taken out by field, or the general one), its rows and reasons are those of its
    messages parsed one at a time; batches span several of the parser's slices."""
    base = {k: v for k, v in GOOD.items() if not (required_only and k == "bytes_out")}
    values = []
    for i in range(size):
        doc = {**base, "agent_id": f"a{i}", "cpu_usage": float(i % 100)}
        if i in odd:
            name, value = odd[i]
            doc[name] = value
        try:
            values.append(orjson.dumps(doc))
        except (TypeError, orjson.JSONEncodeError):
            values.append(orjson.dumps(base))
    batch, rejected = parse_heartbeats(values)
    rows, reasons = [], []
    for i, value in enumerate(values):
        one, why = parse_heartbeats([value])
        if len(one):
            rows.append((i, one.agent_id[0], one.timestamp[0], one.metrics["cpu_usage"][0]))
        reasons += [(i, reason) for _, reason in why]
    got = [
        (i, batch.agent_id[r], batch.timestamp[r], batch.metrics["cpu_usage"][r])
        for r, i in enumerate(batch.index.tolist())
    ]
    assert got == rows
    assert rejected == reasons
