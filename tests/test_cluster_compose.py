"""The cluster profile read as data (no Docker engine here to run it): well-formed, images
pinned, secrets only from the environment, Kafka ACLs that match the channels (only the API
writes agents.control, agents write only their own topics), and everything the files name
exists in the code: settings, topics, modules, Grafana's provisioning, Prometheus' ports."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

from agentwatch.settings import RENAMED_TOPICS, TOPICS, Settings
from dataflows.heartbeats import OUTPUT_TOPICS, cluster_options
from sinks.loader import LOADED_TOPICS

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "infra" / "cluster"
COMPOSE = CLUSTER / "docker-compose.yml"
#: ``${NAME:?message}``: compose refuses to start when NAME is not set.
REQUIRED_VARIABLE = re.compile(r"^\$\{AGENTWATCH_[A-Z_]+:\?[^}]+\}$")
#: A compose interpolation, ``${NAME}``, ``${NAME:?message}``, ``${NAME:-default}``.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?-][^}]*)?\}")
#: ``${NAME:-default}``: compose takes the default when NAME is unset.
DEFAULTED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}")
AGENTWATCH_NAME = re.compile(r"\bAGENTWATCH_[A-Z0-9_]+\b")

#: Names the Grafana provisioning (infra/grafana/provisioning/datasources/clickhouse.yml)
#: reads from Grafana's environment: the parts of AGENTWATCH_CLICKHOUSE_DSN, which Grafana
#: cannot read whole (docs/grafana.md). Not settings: no agentwatch process reads them.
GRAFANA_PROVISIONING_VARIABLES = {
    "AGENTWATCH_CLICKHOUSE_HOST": "host of the DSN",
    "AGENTWATCH_CLICKHOUSE_PORT": "HTTP port of the DSN",
    "AGENTWATCH_CLICKHOUSE_USER": "Grafana's read-only ClickHouse user",
    "AGENTWATCH_CLICKHOUSE_PASSWORD": "that user's password (the compose file also uses the "
    "name for the service user's password, which goes into the DSN)",
}
#: Secrets the operator exports before `docker compose up` (or before running a script of
#: infra/cluster), read by compose itself, the broker, the ACL job, ClickHouse's scripts or
#: Grafana, never by an agentwatch process, which gets its own login through
#: AGENTWATCH_KAFKA_SASL_USERNAME/_PASSWORD and AGENTWATCH_CLICKHOUSE_DSN.
OPERATOR_SECRETS = {
    "AGENTWATCH_KAFKA_ADMIN_PASSWORD": "the Kafka superuser's; the topics job logs in with it",
    "AGENTWATCH_KAFKA_AGENT_PASSWORD": "the agent principal's (for agents outside compose)",
    "AGENTWATCH_KAFKA_API_PASSWORD": "the api principal's",
    "AGENTWATCH_KAFKA_DATAFLOW_PASSWORD": "the dataflow principal's",
    "AGENTWATCH_KAFKA_LOADER_PASSWORD": "the loader principal's",
    "AGENTWATCH_ANALYST_PASSWORD": "ClickHouse's analyst user (initdb/20-analyst-user.sh)",
    "AGENTWATCH_GRAFANA_ADMIN_PASSWORD": "Grafana's admin login",
    "AGENTWATCH_TENANT_ANALYST_PASSWORD": "a tenant's analyst (clickhouse/add-tenant-analyst.sh)",
}
#: Images whose tag is a maintained branch rather than one build, and why.
BRANCH_TAGS = {
    "clickhouse/clickhouse-server": "26.3 is the LTS branch (patch releases only); the exact "
    "build could not be verified from the project's machines: pin 26.3.x.y or a digest",
}


class StrictLoader(yaml.SafeLoader):
    """YAML as Compose (2.17 and later) reads it: a key twice in one mapping is an error,
    ``<<`` included (several merges are written ``<<: [*a, *b]``); PyYAML would keep the last."""

    def construct_mapping(self, node, deep=False):
        keys = [key.value for key, _ in node.value if isinstance(key, yaml.ScalarNode)]
        repeated = {key for key in keys if keys.count(key) > 1}
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"keys repeated in one mapping: {sorted(repeated)}", node.start_mark
            )
        return super().construct_mapping(node, deep)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.load(COMPOSE.read_text(), Loader=StrictLoader)


def test_the_strict_reader_refuses_a_repeated_key():
    with pytest.raises(yaml.constructor.ConstructorError, match="repeated"):
        yaml.load("a: &a {x: 1}\nb: {<<: *a, <<: *a}\n", Loader=StrictLoader)
    assert yaml.load("a: &a {x: 1}\nb: {<<: [*a], y: 2}\n", Loader=StrictLoader)["b"] == {
        "x": 1,
        "y": 2,
    }


def environments(compose: dict):
    """(service, variable, value) of every environment entry."""
    for name, service in compose["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            yield name, variable, str(value)


def strings(node):
    """Every string in a parsed YAML tree, keys included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def agentwatch_services(compose: dict) -> dict[str, dict]:
    """The services that run the project's image (the others run official images)."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def script(compose: dict, service: str) -> str:
    """The shell script a service runs (``bash -euc SCRIPT``) as the shell gets it: compose's
    ``$$`` is a ``$``; continuation lines joined."""
    command = compose["services"][service]["command"]
    return command[0].replace("$$", "$").replace("\\\n", " ")


def acls(compose: dict) -> list[tuple[str, set[str], set[str], set[str]]]:
    """(principal, operations, topics, groups) of each ``acl`` line of the ACL job (its
    ``acl`` runs ``kafka-acls.sh --add`` with the line's flags)."""
    found = []
    for line in script(compose, "kafka-acls").splitlines():
        words = shlex.split(line.split("#")[0])
        if not words or words[0] != "acl":
            continue
        flags: dict[str, list[str]] = {}
        for flag, value in zip(words[1::2], words[2::2], strict=True):
            flags.setdefault(flag, []).append(value)
        assert set(flags) <= {"--allow-principal", "--operation", "--topic", "--group"}, line
        (principal,) = flags["--allow-principal"]
        operations = {operation.lower() for operation in flags["--operation"]}
        found.append(
            (
                principal.removeprefix("User:"),
                operations,
                set(flags.get("--topic", [])),
                set(flags.get("--group", [])),
            )
        )
    return found


def granted(compose: dict, principal: str, operation: str) -> set[str]:
    return {
        topic.removeprefix("agents.")
        for who, operations, topics, _ in acls(compose)
        if who == principal and operation in operations
        for topic in topics
    }


def settings_variables() -> set[str]:
    """The environment names of the settings: ``AGENTWATCH_`` + each field's name."""
    prefix = Settings.model_config["env_prefix"]
    return {(prefix + name).upper() for name in Settings.model_fields}


def settings_of(service: dict, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a service's process would read from its environment (secrets replaced by
    a placeholder, no .env file)."""
    for variable in settings_variables():
        monkeypatch.delenv(variable, raising=False)
    for variable, value in (service.get("environment") or {}).items():
        value = DEFAULTED.sub(lambda m: m.group(1), str(value))  # (as when the name is unset)
        monkeypatch.setenv(variable, INTERPOLATION.sub("placeholder", value))
    return Settings(_env_file=None)


def volume(service: dict, target: str) -> str:
    """The source mounted at ``target`` in a service (short syntax ``source:target[:ro]``)."""
    for entry in service.get("volumes", []):
        source, mounted, *_ = entry.split(":")
        if mounted == target:
            return source
    raise AssertionError(f"nothing is mounted at {target}")


# --- images and secrets -------------------------------------------------------


def test_every_image_is_pinned_to_an_exact_version(compose: dict):
    images = [s["image"] for s in compose["services"].values() if "image" in s]
    assert {image.partition(":")[0] for image in images} >= {
        "apache/kafka",
        "clickhouse/clickhouse-server",
        "grafana/grafana",
        "prom/prometheus",
    }
    for image in images:
        name, _, tag = image.partition(":")
        assert re.fullmatch(r"v?\d+\.\d+(\.\d+)*", tag), f"{image} is not pinned to a version"
        if name not in BRANCH_TAGS:
            assert tag.count(".") >= 2, f"{image}: pin major.minor.patch"
    assert ":latest" not in COMPOSE.read_text()
    plugin = compose["services"]["grafana"]["environment"]["GF_PLUGINS_PREINSTALL_SYNC"]
    assert re.fullmatch(r"grafana-clickhouse-datasource@\d+\.\d+\.\d+", plugin)


def test_secrets_come_from_the_environment_never_from_the_file(compose: dict):
    for service, variable, value in environments(compose):
        if "PASSWORD" in variable:
            assert REQUIRED_VARIABLE.match(value), f"{service}.{variable} = {value!r}"
        if "://" in value and "@" in value:  # a DSN with a login
            password = value.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
            assert REQUIRED_VARIABLE.match(password), f"{service}.{variable}: literal password"
    for path in (COMPOSE, CLUSTER / "kafka" / "server.properties"):
        text = path.read_text()
        literal = re.search(r"(?i)password\s*[:=]\s*['\"]?(?!\$)[\w-]+", text.replace("$$", "$"))
        assert not literal, f"a literal password in {path.name}: {literal}"
    # the four principals get their SCRAM credential from the ACL job, from the environment
    logins = [
        shlex.split(line)
        for line in script(compose, "kafka-acls").splitlines()
        if line.startswith("user ")
    ]
    assert sorted(name for _, name, _ in logins) == ["agent", "api", "dataflow", "loader"]
    acl_env = compose["services"]["kafka-acls"]["environment"]
    for _, name, password in logins:
        assert password == f"${name.upper()}_PASSWORD"
        assert REQUIRED_VARIABLE.match(acl_env[f"{name.upper()}_PASSWORD"])
    # admin's is written into the cluster metadata when the broker formats its storage
    kafka = script(compose, "kafka")
    assert '--add-scram "SCRAM-SHA-256=[name=admin,password=$ADMIN_PASSWORD]"' in kafka
    assert REQUIRED_VARIABLE.match(compose["services"]["kafka"]["environment"]["ADMIN_PASSWORD"])


def test_the_analysts_sql_is_run_by_the_clickhouse_server(compose: dict):
    clickhouse = compose["services"]["clickhouse"]
    assert volume(clickhouse, "/docker-entrypoint-initdb.d") == "./clickhouse/initdb"
    initdb = CLUSTER / "clickhouse" / "initdb"
    assert {p.name for p in initdb.iterdir()} >= {"10-analyst.sql", "20-analyst-user.sh"}


# --- Kafka: the broker and the ACLs --------------------------------------------


def test_the_broker_refuses_whoever_did_not_log_in_and_whatever_is_not_granted(compose):
    properties = dict(
        line.split("=", 1)
        for line in (CLUSTER / "kafka" / "server.properties").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert properties["process.roles"] == "broker,controller"  # KRaft, no ZooKeeper
    protocols = dict(p.split(":") for p in properties["listener.security.protocol.map"].split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}, "every listener asks for a login"
    assert properties["sasl.enabled.mechanisms"] == "SCRAM-SHA-256"
    assert properties["authorizer.class.name"].endswith("StandardAuthorizer")
    assert properties["allow.everyone.if.no.acl.found"] == "false"
    assert properties["super.users"] == "User:admin"
    assert properties["auto.create.topics.enable"] == "false"
    # the clients reach the broker where it says it is, with the mechanism it offers
    advertised = properties["advertised.listeners"].split("://", 1)[1]
    for name, service in agentwatch_services(compose).items():
        env = service["environment"]
        if "AGENTWATCH_BOOTSTRAP_SERVERS" in env:
            assert env["AGENTWATCH_BOOTSTRAP_SERVERS"] == advertised, name
            assert env["AGENTWATCH_KAFKA_SASL_MECHANISM"] == properties["sasl.enabled.mechanisms"]
    kafka = compose["services"]["kafka"]
    assert volume(kafka, "/etc/agentwatch/kafka/server.properties") == "./kafka/server.properties"


def test_only_the_api_writes_operators_commands_and_agents_write_only_their_topics(compose):
    writers = {
        who
        for who, ops, topics, _ in acls(compose)
        if "write" in ops and "agents.control" in topics
    }
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
    assert "metrics" not in granted(compose, "loader", "read"), "the loader stores metric_rows"
    every_topic = {
        t
        for who in ("agent", "api", "dataflow", "loader")
        for op in ("read", "write")
        for t in granted(compose, who, op)
    }
    # an old name is only read (what an upgraded cluster still holds), never written
    assert every_topic == set(TOPICS) | set(RENAMED_TOPICS), (
        "every topic has its readers and writers"
    )
    for old in RENAMED_TOPICS:
        assert all(old not in granted(compose, who, "write") for who in ("api", "dataflow"))


def test_every_topic_the_files_name_exists(compose: dict):
    named = {
        topic.removeprefix("agents.")
        for text in strings(compose)
        for topic in re.findall(r"\bagents\.([a-z_]+)\b", text)
    }
    assert named >= {"metrics", "control", "metric_rows", "scores"}
    assert named <= set(TOPICS) | set(RENAMED_TOPICS), named - set(TOPICS) - set(RENAMED_TOPICS)
    for _, _, topics, _ in acls(compose):
        assert all(t.startswith("agents.") for t in topics), "topics are named in full"


def test_each_process_logs_in_as_its_own_principal(compose: dict):
    logins = {
        name: (service.get("environment") or {}).get("AGENTWATCH_KAFKA_SASL_USERNAME")
        for name, service in agentwatch_services(compose).items()
    }
    assert logins == {
        "topics": "admin",
        "dataflow-0": "dataflow",
        "dataflow-1": "dataflow",
        "loader": "loader",
        "api-0": "api",
        "api-1": "api",
        "schema": None,
        "recovery": None,  # ClickHouse only; the recovery volume only
    }


def test_only_the_loader_service_runs_the_loader(compose: dict, monkeypatch):
    services = agentwatch_services(compose)
    apis = [name for name, s in services.items() if s["command"] == "python -m api"]
    assert apis == ["api-0", "api-1"]
    for name in apis:
        assert services[name]["environment"]["AGENTWATCH_API_RUN_LOADER"] == "false"
        assert settings_of(services[name], monkeypatch).api_run_loader is False
    loaders = [name for name, s in services.items() if s["command"] == "python -m sinks.loader"]
    assert loaders == ["loader"]


def test_one_job_migrates_the_schema_before_the_loader_and_the_api_start(compose: dict):
    services = compose["services"]
    assert services["schema"]["command"] == "python -m sinks.clickhouse"
    for name in ("loader", "api-0", "api-1"):
        assert services[name]["environment"]["AGENTWATCH_CLICKHOUSE_MIGRATE"] == "false"
        assert services[name]["depends_on"]["schema"] == {
            "condition": "service_completed_successfully"
        }


# --- settings and commands -------------------------------------------------------


def test_every_agentwatch_variable_is_a_setting(compose: dict):
    settings = settings_variables()
    # what an agentwatch process reads: only settings
    for name, service in agentwatch_services(compose).items():
        unknown = {v for v in service.get("environment") or {} if v.startswith("AGENTWATCH_")}
        assert unknown <= settings, f"{name}: not settings: {sorted(unknown - settings)}"
    # anything named anywhere in the profile: settings, Grafana's, or the operator's secrets
    named = {v for text in strings(compose) for v in AGENTWATCH_NAME.findall(text)}
    for path in CLUSTER.rglob("*"):
        if path.is_file() and path.suffix in {"", ".sh", ".sql", ".yml", ".properties"}:
            named |= set(AGENTWATCH_NAME.findall(path.read_text()))
    exempt = set(GRAFANA_PROVISIONING_VARIABLES) | set(OPERATOR_SECRETS)
    assert named - settings <= exempt, sorted(named - settings - exempt)
    assert exempt <= named, f"stale exemptions: {sorted(exempt - named)}"
    assert not exempt & settings, "an exemption that is a setting needs no exemption"
    # the Grafana names are exactly what the provisioning reads, beside real settings
    datasource = yaml.safe_load(
        (ROOT / "infra/grafana/provisioning/datasources/clickhouse.yml").read_text()
    )
    provisioned = {name for text in strings(datasource) for name in INTERPOLATION.findall(text)}
    assert provisioned - settings == set(GRAFANA_PROVISIONING_VARIABLES)
    grafana = compose["services"]["grafana"]["environment"]
    assert provisioned <= set(grafana), "Grafana is given every name its provisioning reads"
    assert grafana["AGENTWATCH_CLICKHOUSE_USER"] == "analyst", "Grafana reads as the analyst"


def test_each_service_reads_valid_settings(compose: dict, monkeypatch):
    for name, service in agentwatch_services(compose).items():
        settings = settings_of(service, monkeypatch)  # a wrong value fails here
        if settings.bootstrap_servers != Settings(_env_file=None).bootstrap_servers:
            assert settings.kafka_security_protocol == "SASL_PLAINTEXT", name


def test_every_command_runs_code_that_exists(compose: dict):
    commands = {name: s["command"] for name, s in agentwatch_services(compose).items()}
    assert set(commands) == set(agentwatch_services(compose))
    for name, command in commands.items():
        words = shlex.split(command)
        assert words[0] == "python" and words[1] in {"-m", "-c"} and len(words) == 3, name
        if words[1] == "-m":
            spec = importlib.util.find_spec(words[2])
            assert spec is not None, f"{name}: no module {words[2]}"
            if spec.submodule_search_locations is not None:  # a package runs its __main__
                assert importlib.util.find_spec(words[2] + ".__main__"), name
        else:
            for node in ast.walk(ast.parse(words[2])):
                if isinstance(node, ast.ImportFrom):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        assert hasattr(module, alias.name), f"{name}: {node.module}.{alias.name}"
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    packages = {
        command.split()[2].split(".")[0]
        for command in commands.values()
        if command.startswith("python -m")
    }
    imported = {"agentwatch", "infra", "dataflows"}  # what the -c commands import
    assert packages | imported <= copied, "the image holds the code the commands run"


# --- the Bytewax cluster ---------------------------------------------------------


def test_the_dataflow_is_one_bytewax_cluster_with_its_recovery_on_a_volume(
    compose: dict, monkeypatch
):
    services = compose["services"]
    processes = sorted(
        n for n, s in services.items() if s.get("command") == "python -m dataflows.heartbeats"
    )
    assert processes == ["dataflow-0", "dataflow-1"]
    layouts = set()
    for index, name in enumerate(processes):
        settings = settings_of(services[name], monkeypatch)
        cluster = cluster_options(settings)  # refuses an id outside the address list
        assert cluster["process_id"] == index
        hosts = [address.split(":")[0] for address in cluster["addresses"]]
        assert hosts == processes, "every process is listed, in process-id order"
        assert settings.dataflow_metrics_host == "0.0.0.0" and settings.dataflow_metrics_port
        layouts.add(
            (
                tuple(cluster["addresses"]),
                settings.shard_count,
                settings.recovery_partitions,
                settings.recovery_path,
            )
        )
        # one shared volume, prepared by the recovery job before any process starts
        assert volume(services[name], str(settings.recovery_path)) == "recovery"
        assert services[name]["depends_on"]["recovery"] == {
            "condition": "service_completed_successfully"
        }
    assert len(layouts) == 1, "every process has the same addresses, shards and recovery"
    ((_, shards, partitions, path),) = layouts
    workers = len(processes) * settings.dataflow_workers
    assert partitions >= workers, "a recovery partition for each worker the cluster has"
    assert shards >= workers, "at least a state shard per worker, or workers idle"
    metrics_partitions = settings_of(services["topics"], monkeypatch).metrics_partitions
    assert metrics_partitions >= workers, "a partition of agents.metrics for each worker"
    recovery = settings_of(services["recovery"], monkeypatch)
    assert (recovery.recovery_path, recovery.recovery_partitions, recovery.shard_count) == (
        path,
        partitions,
        shards,
    )
    assert volume(services["recovery"], str(path)) == "recovery"
    ports = [settings_of(services[n], monkeypatch).dataflow_metrics_port for n in processes]
    assert len(set(ports)) == len(ports), "each process serves /metrics on its own port"


# --- Grafana and Prometheus ------------------------------------------------------


def test_grafana_is_given_the_provisioning_and_the_dashboards_read_only(compose: dict):
    grafana = compose["services"]["grafana"]
    mounts = {entry.split(":")[1]: entry.split(":") for entry in grafana["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    assert (COMPOSE.parent / provisioning[0]).resolve() == ROOT / "infra/grafana/provisioning"
    provider = yaml.safe_load(
        (ROOT / "infra/grafana/provisioning/dashboards/agentwatch.yml").read_text()
    )
    (dashboards_path,) = [p["options"]["path"] for p in provider["providers"]]
    dashboards = mounts[dashboards_path]
    assert (COMPOSE.parent / dashboards[0]).resolve() == ROOT / "infra/grafana/dashboards"
    assert list((ROOT / "infra/grafana/dashboards").glob("*.json")), "the generated dashboards"
    assert provisioning[2:] == ["ro"] and dashboards[2:] == ["ro"]
    datasource = yaml.safe_load(
        (ROOT / "infra/grafana/provisioning/datasources/clickhouse.yml").read_text()
    )
    (source,) = datasource["datasources"]
    plugin = grafana["environment"]["GF_PLUGINS_PREINSTALL_SYNC"].partition("@")[0]
    assert source["type"] == plugin
    env = grafana["environment"]
    assert env["AGENTWATCH_CLICKHOUSE_HOST"] in compose["services"]
    assert REQUIRED_VARIABLE.match(env["AGENTWATCH_CLICKHOUSE_PASSWORD"])


def test_prometheus_scrapes_every_api_replica_dataflow_process_and_the_loader_where_they_listen(
    compose: dict, monkeypatch
):
    services = compose["services"]
    prometheus = services["prometheus"]
    config_source = volume(prometheus, "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load((COMPOSE.parent / config_source).read_text())
    for rule_file in config["rule_files"]:
        source = (COMPOSE.parent / volume(prometheus, rule_file)).resolve()
        assert source == ROOT / "infra/prometheus/agentwatch-alerts.yml"
    scraped = {}
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            for target in group["targets"]:
                host, port = target.split(":")
                scraped[host] = (int(port), job)
    expected = {}
    for name, service in agentwatch_services(compose).items():
        settings = settings_of(service, monkeypatch)
        if service["command"] == "python -m api":
            expected[name] = settings.api_port
            assert settings.api_host == "0.0.0.0", name
        elif service["command"] == "python -m dataflows.heartbeats":
            expected[name] = settings.dataflow_metrics_port
        elif service["command"] == "python -m sinks.loader":
            expected[name] = settings.loader_metrics_port
            assert settings.loader_metrics_host == "0.0.0.0", name
    assert {host: port for host, (port, _) in scraped.items()} == expected
    for host, (_, job) in scraped.items():
        if host.startswith("api-"):  # /metrics wants a key that may read
            key = Path(job["authorization"]["credentials_file"])
            assert volume(prometheus, str(key.parent)) == "./secrets"
            drops = [r for r in job["metric_relabel_configs"] if r["action"] == "drop"]
            assert any(re.fullmatch(r["regex"], "agentwatch_loader_running") for r in drops)
    ignored = (CLUSTER / "secrets" / ".gitignore").read_text().splitlines()
    assert "*" in ignored, "the scrape key is never committed"
