"""Half a minute of chaos in the suite (issue 14, Deliver 5): kill -9 of the dataflow and of
the API/loader process, in turn, while heartbeats (malformed ones among them) and
agents' conversations (some flagged by the conversation checks, some malformed) and
operator commands stream (six kills, spread over the input, each landing while data
flows however loaded the machine); then every valid heartbeat is in ``metrics`` once,
every conversation in ``agent_events`` once, every malformed message in the dead letters,
the anomalies and threats (the conversations' findings among them) are those of an
uninterrupted run, and ``agentwatch audit verify`` passes. The harness is
``bench/chaos.py`` (its long run is a benchmark)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from agentwatch.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # starts the dataflow and the API

REPO = Path(__file__).resolve().parents[1]


def load_chaos():
    """bench/chaos.py as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_chaos", REPO / "bench" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_chaos"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_repeated_kill_9_loses_and_doubles_nothing(settings: Settings, tmp_path: Path):
    chaos = load_chaos()
    lines: list[str] = []
    report = chaos.run_chaos(
        settings.model_copy(update={"snapshot_interval_s": 1.0}),
        tmp_path,
        # 16,800 heartbeats (560 steps of 30 agents) at 2,000 messages/s: the input and the
        # kills are those of 28 s at 600/s, without the idle time between kills (each kill
        # still lands with a second of input in flight: the producer waits at each kill)
        seconds=8.4,
        rate=2000,
        agents=30,
        kill_every_s=3,
        alternate=True,
        kills=6,
        say=lines.append,
    )
    print("\n".join(lines))
    print(report.table())
    assert report.kills == {"api": 3, "dataflow": 3}, report.kills  # each while data flowed
    assert report.reference["anomalies"] and report.reference["threats"]  # not vacuous
    said = {rule for _agent, rule, _at in report.reference["threats"] if "conversation" in rule}
    assert said == {
        "conversation_prompt_injection", "conversation_secret", "conversation_personal_data"
    }, said  # fmt: skip
    assert report.sent["conversations"] > 1000 and report.sent["malformed_conversations"] > 0
    assert report.sent["operator_commands_accepted"] >= 2
    failed = {name: check for name, check in report.checks.items() if not check["ok"]}
    assert not failed, report.table()


def test_the_runs_directory_is_removed_unless_kept_or_the_run_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    chaos = load_chaos()
    monkeypatch.setattr(chaos.tempfile, "tempdir", str(tmp_path))  # (mkdtemp's directory)
    said: list[str] = []
    with chaos.chaos_workdir(say=said.append) as passed:
        (passed / "api.log").write_text("all well")
    assert not passed.exists() and said == []
    with chaos.chaos_workdir(keep=True, say=said.append) as kept:
        (kept / "api.log").write_text("all well")
    assert (kept / "api.log").exists() and said == [f"kept {kept}"]
    for failure in (RuntimeError("the dataflow exited"), SystemExit(1)):
        with pytest.raises(type(failure)), chaos.chaos_workdir(say=said.append) as failed:
            raise failure
        assert failed.exists() and said[-1].startswith(f"kept {failed} (the run failed")
    with pytest.raises(SystemExit), chaos.chaos_workdir(say=said.append) as ok:
        raise SystemExit(0)  # (main's way of saying every check passed)
    assert not ok.exists()
    assert [path.name.startswith("agentwatch-chaos-") for path in tmp_path.iterdir()] == [True] * 3
