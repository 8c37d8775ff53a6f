"""Children that must not outlive whoever started them (brokers, dataflows of a
benchmark): started through ``infra.broker.die_with_parent_command``, they are sent
SIGTERM when their parent dies, even by ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.broker import die_with_parent_command
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e  # (they start processes)

#: A parent that starts ``sleep`` through the launcher, says the child's pid, and waits.
_PARENT = """
import subprocess, sys, time
from infra.broker import die_with_parent_command
child = subprocess.Popen(die_with_parent_command(["sleep", "60"]))
print(child.pid, flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie nobody reaped counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal")
def test_a_child_started_through_the_launcher_ends_when_its_parent_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())
        time.sleep(0.2)  # (the launcher has become sleep by now, or is about to)
        assert not _gone(child)
        assert Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] == b"sleep"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: _gone(child), 10, "the child ended with its parent")
    finally:
        parent.kill()
        parent.wait(10)
        if not _gone(child):
            os.kill(child, signal.SIGKILL)


def test_the_command_itself_runs_with_its_arguments(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        die_with_parent_command(["sh", "-c", 'printf "%s|%s" "$0" "$1" > "$2"', "a b", "c", out]),
        timeout=30,
    )
    assert done.returncode == 0 and out.read_text() == "a b|c"
