"""The cluster profile's compose file, read as data (no Docker engine here to run it):
well-formed, pinned images, secrets only from the environment, and Kafka ACLs that match
the channels: only the API writes agents.control, agents write only their own topics."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from agentwatch.settings import RENAMED_TOPICS, TOPICS
from dataflows.heartbeats import OUTPUT_TOPICS
from sinks.loader import LOADED_TOPICS

COMPOSE = Path(__file__).resolve().parents[1] / "infra" / "cluster" / "docker-compose.yml"
#: ``${NAME:?message}``: compose refuses to start when NAME is not set.
REQUIRED_VARIABLE = re.compile(r"^\$\{AGENTWATCH_[A-Z_]+:\?[^}]+\}$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def environments(compose: dict):
    """(service, variable, value) of every environment entry."""
    for name, service in compose["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            yield name, variable, str(value)


def acls(compose: dict) -> list[tuple[str, set[str], set[str], set[str]]]:
    """(principal, operations, topics, groups) of each ``acl`` line of the ACL job."""
    script = compose["services"]["kafka-acls"]["command"][0].replace("\\\n", " ")
    found = []
    for line in script.splitlines():
        words = shlex.split(line.split("#")[0])
        if not words or words[0] != "acl":
            continue
        flags: dict[str, list[str]] = {}
        for flag, value in zip(words[1::2], words[2::2], strict=True):
            flags.setdefault(flag, []).append(value)
        (principal,) = flags["--allow-principal"]
        (operations,) = flags["--operation"]
        found.append((principal.removeprefix("User:"), set(operations.split(",")),
                      set(flags.get("--topic", [])), set(flags.get("--group", []))))  # fmt: skip
    return found


def granted(compose: dict, principal: str, operation: str) -> set[str]:
    return {
        topic.removeprefix("agents.")
        for who, operations, topics, _ in acls(compose)
        if who == principal and operation in operations
        for topic in topics
    }


def test_every_image_is_pinned_to_a_version(compose: dict):
    images = [s["image"] for s in compose["services"].values() if "image" in s]
    assert images, "the file names its images"
    for image in images:
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{image} is not pinned"
    assert ":latest" not in COMPOSE.read_text()


def test_secrets_come_from_the_environment_never_from_the_file(compose: dict):
    for service, variable, value in environments(compose):
        if "PASSWORD" in variable:
            assert REQUIRED_VARIABLE.match(value), f"{service}.{variable} = {value!r}"
        if "://" in value and "@" in value:  # a DSN with a login
            password = value.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
            assert REQUIRED_VARIABLE.match(password), f"{service}.{variable}: literal password"
    text = COMPOSE.read_text()
    assert not re.search(r"(?i)password\s*[:=]\s*['\"]?(?!\$)[\w-]+", text.replace("$$", "")), (
        "a literal password"
    )
    script = compose["services"]["kafka-acls"]["command"][0]
    logins = [shlex.split(line) for line in script.splitlines() if line.startswith("user ")]
    assert len(logins) == 5 and all(password.startswith("$") for _, _, password in logins)


def test_the_analysts_sql_is_run_by_the_clickhouse_server(compose: dict):
    volumes = compose["services"]["clickhouse"]["volumes"]
    assert any(
        v.split(":")[:2] == ["./clickhouse/initdb", "/docker-entrypoint-initdb.d"] for v in volumes
    )
    initdb = Path(__file__).parents[1] / "infra/cluster/clickhouse/initdb"
    assert {p.name for p in initdb.iterdir()} >= {"10-analyst.sql", "20-analyst-user.sh"}


def test_only_the_api_writes_operators_commands_and_agents_write_only_their_topics(compose):
    writers = {who for who, ops, topics, _ in acls(compose)
               if "write" in ops and "agents.control" in topics}  # fmt: skip
    assert writers == {"api"}
    assert granted(compose, "agent", "write") == {"metrics", "events"}
    assert [ops for who, ops, _, _ in acls(compose) if who == "agent"] == [{"write", "describe"}]
    assert not granted(compose, "agent", "read")
    assert granted(compose, "api", "write") == {"control"}


def test_the_acls_cover_what_each_process_reads_and_writes(compose: dict):
    derived = set(OUTPUT_TOPICS.values()) | {
        "incidents",
        "deadletter",
        "assignment_scores",
        "metric_rows",
    }
    assert granted(compose, "dataflow", "write") == derived
    assert granted(compose, "dataflow", "read") == {"metrics", "events", "control"}
    assert granted(compose, "loader", "read") == set(LOADED_TOPICS)
    every_topic = {t for who in ("agent", "api", "dataflow", "loader")
                   for op in ("read", "write") for t in granted(compose, who, op)}  # fmt: skip
    # an old name is only read (what an upgraded cluster still holds), never written
    assert every_topic == set(TOPICS) | set(RENAMED_TOPICS), (
        "every topic has its readers and writers"
    )
    for old in RENAMED_TOPICS:
        assert all(old not in granted(compose, who, "write") for who in ("api", "dataflow"))


def test_each_process_logs_in_as_its_own_principal(compose: dict):
    logins = {
        name: (service.get("environment") or {}).get("AGENTWATCH_KAFKA_SASL_USERNAME")
        for name, service in compose["services"].items()
        if "build" in service
    }
    assert logins == {
        "topics": "admin", "dataflow-0": "dataflow", "dataflow-1": "dataflow",
        "loader": "loader", "api": "api", "schema": None,  # schema: ClickHouse only
    }  # fmt: skip
    api = compose["services"]["api"]["environment"]
    assert api["AGENTWATCH_API_RUN_LOADER"] == "false"


def test_one_job_migrates_the_schema_before_the_loader_and_the_api_start(compose: dict):
    services = compose["services"]
    assert services["schema"]["command"] == "python -m sinks.clickhouse"
    for name in ("loader", "api"):
        assert services[name]["environment"]["AGENTWATCH_CLICKHOUSE_MIGRATE"] == "false"
        assert services[name]["depends_on"]["schema"] == {
            "condition": "service_completed_successfully"
        }
