"""The batch parser applies exactly the rules of the pydantic ``Heartbeat`` model."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.heartbeats import (
    FLOAT_FIELDS,
    INT_FIELDS,
    _parse_general,
    _typed_batch,
    _utc_iso_epoch,
    parse_heartbeats,
)
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


#: Numbers at the edges of what a double, an int64 and the fields' ranges hold.
edge_numbers = st.sampled_from(
    [0, -0.0, 1, 100, 100.0000001, 2**32 - 1, 2**32, 2**53, 2**53 + 1, 2**63 - 1, 2**63,
     2**64, 2**70, -(2**63) - 1, 1e308, 5e-324, 1_795_608_000, 1_795_608_000.5]
)  # fmt: skip


def _fields_as_json(doc: dict, duplicate: tuple[str, object] | None) -> bytes:
    """``doc`` as a JSON object, with ``duplicate`` (a field and a value) written again
    first, so the object has that field twice (JSON allows it: the last one counts)."""
    parts = [] if duplicate is None else [orjson.dumps({duplicate[0]: duplicate[1]})[1:-1]]
    parts += [orjson.dumps({k: v})[1:-1] for k, v in doc.items()]
    return b"{" + b",".join(parts) + b"}"


@settings(max_examples=400, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from([*GOOD, "status"]), st.one_of(odd_values, edge_numbers), max_size=3
    ),
    drop=st.sets(st.sampled_from(["bytes_out", "status"]), max_size=2),
    duplicate=st.none()
    | st.tuples(st.sampled_from(list(GOOD)), st.one_of(odd_values, edge_numbers)),
)
def test_the_fast_path_takes_only_what_the_general_path_takes_as_it_is(
    changes: dict, drop: set, duplicate: tuple | None
) -> None:
    """The typed decoder only picks the fast path: a batch it takes, the general path
    (each message decoded to what JSON says, each rule checked on it) takes whole, with
    the same values; and the batch's answer is the general path's either way."""
    doc = {k: v for k, v in {**GOOD, **changes}.items() if k not in drop}
    try:
        raw = _fields_as_json(doc, duplicate)
    except (TypeError, orjson.JSONEncodeError):
        return
    values = [raw, orjson.dumps(GOOD)]
    general, reasons = _parse_general(values, 64 * 1024)
    fast = _typed_batch(values, 64 * 1024)
    if fast is not None:
        assert reasons == [], (raw, reasons)
        assert fast.agent_id == general.agent_id and fast.tenant_id == general.tenant_id
        assert fast.status == general.status
        assert fast.timestamp.tolist() == general.timestamp.tolist()
        for name, column in general.metrics.items():
            assert fast.metrics[name].tolist() == column.tolist(), name
    batch, rejected = parse_heartbeats(values)
    assert (batch.index.tolist(), rejected) == (general.index.tolist(), reasons)


def _edges(low: float, high: float) -> list[object]:
    """Values at and just past a range's ends, as integers and as floats."""
    values: list[object] = [low, float(low), -1, -0.5, -(2**63) - 1, 2**64, 2**70, 1e308]
    if high != float("inf"):
        values += [high, float(high), high + 1, float(high) * (1 + 1e-15), int(high) + 1]
    return values


@pytest.mark.parametrize(
    "name", ["cpu_usage", "error_rate", "network_latency", "active_tasks", "completed_tasks"]
)
def test_the_fast_path_and_the_general_path_agree_at_every_edge_of_a_range(name: str) -> None:
    low, high = FLOAT_FIELDS.get(name) or INT_FIELDS[name]
    for value in _edges(low, high):
        values = [json.dumps({**GOOD, name: value}).encode(), orjson.dumps(GOOD)]
        general, reasons = _parse_general(values, 64 * 1024)
        fast = _typed_batch(values, 64 * 1024)
        if fast is not None:
            assert reasons == [], (name, value)
            assert fast.metrics[name].tolist() == general.metrics[name].tolist(), (name, value)
        assert parse_heartbeats(values)[1] == reasons


@pytest.mark.parametrize(
    ("name", "value"),
    [
        *[("agent_id", "a" * n) for n in (0, 1, 128, 129)],
        *[("agent_id", v) for v in ("x/y", "/", ".", "..", "...", ".a", "a.b", "..a")],
        ("tenant_id", "t/1"),  # (a tenant is never a path segment)
        *[("tenant_id", "😀" * n) for n in (1, 128, 129)],  # (characters, not bytes)
        ("tenant_id", "é" * 128),
        *[("status", s) for s in ("", "Active", "active ", None, *AGENT_STATES)],
    ],
)
def test_the_fast_path_and_the_general_path_agree_on_ids_and_states(
    name: str, value: object
) -> None:
    """The typed decoder checks the ids' lengths and the states as it reads: it takes
    exactly what the general path's rules take, and what the model takes. An agent id
    must fit a URL path: no '/', not '.' or '..' (such an agent could not be reached by
    its status, detail page or quarantine route; found by a review)."""
    values = [orjson.dumps({**GOOD, name: value}), orjson.dumps(GOOD)]
    general, reasons = _parse_general(values, 64 * 1024)
    fast = _typed_batch(values, 64 * 1024)
    assert (fast is not None) == (reasons == []), (name, value, reasons)
    assert model_accepts({**GOOD, name: value}) == (reasons == [])
    if fast is not None:
        assert getattr(fast, name) == getattr(general, name)
    assert parse_heartbeats(values)[1] == reasons


_ISO_UTC = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?Z", re.ASCII)


def _by_the_standard_library(text: str) -> float:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z`` in years 2000–2100, read by
    ``datetime``; NaN for any other text, or a date or time that does not exist."""
    match = _ISO_UTC.fullmatch(text)
    if match is None or not 2000 <= int(match.group(1)) <= 2100:
        return float("nan")
    try:
        at = datetime(*map(int, match.groups()[:6]), tzinfo=UTC)
    except ValueError:
        return float("nan")
    micros = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return (micros + int((match.group(7) or "0").ljust(6, "0"))) / 1e6


iso_texts = st.builds(
    lambda y, mo, d, h, mi, s, fraction, sep, zone: (
        f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}"
        + (f".{fraction}" if fraction else "")
        + zone
    ),
    st.sampled_from([1999, 2000, 2001, 2023, 2024, 2026, 2099, 2100, 2101]),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 24),
    st.integers(0, 60),
    st.integers(0, 60),
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=7)),
    st.sampled_from(["T", "T", "T", " ", "t"]),
    st.sampled_from(["Z", "Z", "Z", "z", "+00:00", ""]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(iso_texts, min_size=1, max_size=40))
def test_numpys_reading_of_a_timestamp_is_the_arithmetics(texts: list[str]) -> None:
    """The fast reader checks the shape itself and takes numpy's ISO-8601 parser for the
    values (the arithmetic when numpy refuses one); whatever a batch holds (invalid dates
    and times, years just outside 2000–2100, other separators and zones, 0–7 fraction
    digits), each text gets what the standard library reads in it, or NaN."""
    got = _utc_iso_epoch(texts)
    want = np.array([_by_the_standard_library(text) for text in texts])
    np.testing.assert_array_equal(got, want)
