"""Every test (doctests in the packages too) runs with default settings, whatever the machine.

A developer's ``AGENTWATCH_*`` variables and ``.env`` file configure their own
stack; a test that read them would pass or fail by machine. So for the whole
session the ``AGENTWATCH_*`` variables are removed from this process's
environment (subprocesses built from ``os.environ`` inherit none) and
``Settings`` reads no ``.env``; each test also runs in a fresh working
directory, so a subprocess that reads ``.env`` from its working directory finds
none either. Tests pass the settings they mean explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agentwatch.settings import Settings

#: The prefix of agentwatch's environment variables.
PREFIX = "AGENTWATCH_"


def pytest_configure(config: pytest.Config) -> None:
    for name in [name for name in os.environ if name.startswith(PREFIX)]:
        del os.environ[name]
    Settings.model_config["env_file"] = None


@pytest.fixture(autouse=True)
def isolated_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """No AGENTWATCH_* variable, no .env, and a fresh working directory for each test."""
    for name in [name for name in os.environ if name.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setitem(Settings.model_config, "env_file", None)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield
