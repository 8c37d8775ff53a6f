"""One Bytewax input over several sources (dataflows.inputs): tagged items, and the read
positions of the former separate inputs carried over from a real recovery directory."""

from __future__ import annotations

from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflows.inputs import OneInput, carried_positions


def read_all(source: OneInput, recovery: Path | None = None, workers: int = 1) -> list:
    out: list = []
    flow = Dataflow("flow")
    op.output("out", op.input("read_heartbeats", flow, source), TestingSink(out))
    config = RecoveryConfig(str(recovery)) if recovery else None
    if workers == 1:
        run_main(flow, recovery_config=config)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers, recovery_config=config)
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_every_source_is_read_through_one_input_and_tagged(workers: int) -> None:
    source = OneInput(
        {"heartbeats": TestingSource([1, 2, 3]), "events": TestingSource(["a", "b"])},
        plain="heartbeats",
    )
    assert source.list_parts() == ["iterable", "events/iterable"]
    out = read_all(source, workers=workers)
    assert sorted(out, key=str) == [
        ("events", "a"), ("events", "b"), ("heartbeats", 1), ("heartbeats", 2), ("heartbeats", 3)
    ]  # fmt: skip


def test_positions_of_the_former_inputs_are_carried_over_once(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 1)
    # the former layout: agents' events read by an input of their own
    former: list = []
    flow = Dataflow("flow")
    op.output(
        "out", op.input("read_events", flow, TestingSource(["a", "b", "c"])), TestingSink(former)
    )
    run_main(flow, recovery_config=RecoveryConfig(str(tmp_path)))
    assert former == ["a", "b", "c"]

    carried = carried_positions(tmp_path, "flow")
    assert carried == {"events/iterable": 3}  # TestingSource's position: the next item's index

    def one_input(events: list[str]) -> OneInput:
        sources = {"heartbeats": TestingSource([]), "events": TestingSource(events)}
        return OneInput(sources, "heartbeats", carried_positions(tmp_path, "flow"))

    # the one input resumes the events where the former input stopped: nothing read twice
    assert read_all(one_input(["a", "b", "c", "d", "e"]), tmp_path) == [
        ("events", "d"), ("events", "e")
    ]  # fmt: skip
    # once the one input has snapshotted its own position, that one counts, not the carried
    assert carried_positions(tmp_path, "flow") == carried  # the former rows stay, unread by Bytewax
    assert read_all(one_input(list("abcdefg")), tmp_path) == [("events", "f"), ("events", "g")]


def test_without_the_carried_positions_the_events_would_be_read_again(tmp_path: Path) -> None:
    """The check above can fail: a fresh partition starts at the beginning."""
    sources = {"heartbeats": TestingSource([]), "events": TestingSource(["a", "b"])}
    assert read_all(OneInput(sources, "heartbeats")) == [("events", "a"), ("events", "b")]


def test_an_empty_or_missing_recovery_directory_carries_nothing(tmp_path: Path) -> None:
    assert carried_positions(tmp_path / "missing", "flow") == {}
    init_db_dir(tmp_path, 2)
    assert carried_positions(tmp_path, "flow") == {}
