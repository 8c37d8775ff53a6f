"""The suite sees default settings whatever the machine it runs on has configured.

A run of pytest is started the way a developer would, with hostile
``AGENTWATCH_*`` variables exported and a hostile ``.env`` in its working
directory; the probe inside it finds none of them: not in ``os.environ``, not in
``Settings()`` (even back in that directory), not in a child process it starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentwatch.settings import Settings

REPO = Path(__file__).resolve().parents[1]
#: Set (to the hostile directory) only in the pytest run the outer test starts.
PROBE = "ISOLATION_PROBE_DIR"
HOSTILE = {
    "AGENTWATCH_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "AGENTWATCH_API_PORT": "1",
    "AGENTWATCH_CLICKHOUSE_DSN": "chdb:///nonexistent/hostile",
}
DEFAULTS = ("127.0.0.1:9092", 8000, "chdb://var/clickhouse")


def seen(settings: Settings) -> tuple[str, int, str]:
    return (
        settings.bootstrap_servers,
        settings.api_port,
        settings.clickhouse_dsn.get_secret_value(),
    )


CHILD = (
    "from agentwatch.settings import Settings; s = Settings(); "
    "print(s.bootstrap_servers, s.api_port, s.clickhouse_dsn.get_secret_value())"
)


@pytest.mark.e2e
@pytest.mark.skipif(PROBE not in os.environ, reason="runs inside the pytest run started below")
def test_probe_inside_a_hostile_run_sees_only_defaults() -> None:
    assert not [name for name in os.environ if name.startswith("AGENTWATCH_")]
    assert seen(Settings()) == DEFAULTS
    # a child started the usual way (this environment, this working directory)
    child = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60
    )
    assert child.stdout.split() == [str(value) for value in DEFAULTS], child.stderr
    os.chdir(os.environ[PROBE])  # where the hostile .env is (the fixture restores the cwd)
    assert Path(".env").exists() and seen(Settings()) == DEFAULTS


@pytest.mark.e2e
def test_hostile_variables_and_dotenv_do_not_reach_the_tests(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in HOSTILE.items()))
    probe = f"{__file__}::{test_probe_inside_a_hostile_run_sees_only_defaults.__name__}"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--rootdir", str(REPO), probe],
        env={**os.environ, **HOSTILE, PROBE: str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


def test_a_test_runs_with_defaults_in_a_directory_of_its_own(tmp_path_factory) -> None:
    assert not [name for name in os.environ if name.startswith("AGENTWATCH_")]
    assert Path.cwd().is_relative_to(tmp_path_factory.getbasetemp())
    Path(".env").write_text("AGENTWATCH_API_PORT=1\n")
    assert Settings().api_port == 8000
