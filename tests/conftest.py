"""Real parts for the tests: a Tansu broker and a chDB directory, one per session.

Tests isolate themselves by name, not by process: each test that asks for
``settings`` gets its own topic prefix and its own ClickHouse database, on the
one broker and the one chDB directory of the session (a process can open only
one chDB path in its lifetime).

Lanes: a test that uses the broker or chDB is marked ``integration`` (by its
fixtures, below); a test that starts processes of its own (the stack, the API,
the CLI, supervised children) is marked ``e2e``, and one that is not marked
``e2e`` and starts any process but the broker fails, so
``pytest -m "not integration and not e2e"`` (unit) and ``pytest -m "not e2e"``
stay what they say. (Environment isolation: the repository's root conftest.py.)
"""

from __future__ import annotations

import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentwatch.kafka_logs import LIBRDKAFKA_LOG
from agentwatch.settings import Settings

#: The peer address a TestClient claims: loopback, which may change things
#: (api/access.py refuses changes from other machines).
LOOPBACK_CLIENT = ("127.0.0.1", 50000)

#: Fixtures that start the session's real parts: a test using one is an integration test.
INTEGRATION_FIXTURES = frozenset({"broker", "chdb_dir", "settings"})
#: Fixtures that start processes: a test using one is an end-to-end test.
E2E_FIXTURES = frozenset({"run_up", "api_process"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & INTEGRATION_FIXTURES:
            item.add_marker(pytest.mark.integration)
        if fixtures & E2E_FIXTURES:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def processes_only_in_e2e(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Outside ``e2e`` tests, starting a process (other than the broker) fails the test."""
    if request.node.get_closest_marker("e2e") is None:
        original = subprocess.Popen.__init__

        def guarded(self: subprocess.Popen, args: object, *more: object, **options: object):
            command = [args] if isinstance(args, str | bytes | Path) else list(args)
            if "tansu" not in Path(str(command[0]).split()[0]).name:
                pytest.fail(
                    f"{request.node.nodeid} starts a process ({' '.join(map(str, command))[:80]}"
                    "); mark it @pytest.mark.e2e, so the fast lanes stay fast",
                    pytrace=False,
                )
            original(self, args, *more, **options)

        monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    yield


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A Tansu broker on a free port, stopped at the end of the session."""
    from infra.broker import free_port, start_broker

    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    started = start_broker("127.0.0.1", free_port(), log_path=log_path)
    try:
        yield started
    finally:
        started.stop()


#: The session's chDB directory and the client that keeps it open, once a test has
#: asked for it (:func:`chdb_dir`).
_SESSION_CHDB: list[tuple[Path, object]] = []


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's one chDB data directory, kept open for the whole session.

    chDB starts its engine when the process's first connection opens and stops it when
    the last one closes; a test's client is usually the only one, so without a client
    held here every test started the engine again, loading the metadata of every
    database made before it: 0.8 s a connection on average over tests/test_api.py, and
    growing (:func:`drop_databases` keeps that metadata small as well).
    """
    import clickhouse_connect

    path = tmp_path_factory.mktemp("chdb")
    keeper = clickhouse_connect.get_client(dsn=f"chdb://{path.resolve()}")
    _SESSION_CHDB.append((path, keeper))
    try:
        yield path
    finally:
        _SESSION_CHDB.clear()
        keeper.close()


def drop_databases(made: list[Settings]) -> None:
    """Drop the databases the test's settings named in the session's chDB, at once
    (``SYNC``), so the databases of tests over do not pile up in the session's chDB.
    Databases of other directories (a test's own stack) are not this process's to
    open."""
    if not _SESSION_CHDB:
        return
    path, keeper = _SESSION_CHDB[0]
    session_dsn = f"chdb://{path}"
    names = {
        s.clickhouse_database for s in made if s.clickhouse_dsn.get_secret_value() == session_dsn
    }
    try:
        for name in sorted(names):
            keeper.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")
    except Exception as exc:  # only housekeeping: say so, do not fail the test for it
        warnings.warn(f"the databases {sorted(names)} were not dropped: {exc}", stacklevel=1)


@pytest.fixture
def make_settings(tmp_path: Path) -> Iterator[Callable[..., Settings]]:
    """Settings isolated for this test: fresh topic prefix, database and var dir; the
    databases in the session's chDB are dropped after the test (:func:`drop_databases`)."""
    made: list[Settings] = []

    def make(**overrides: object) -> Settings:
        unique = uuid.uuid4().hex[:8]
        values: dict[str, object] = {
            "topic_prefix": f"t{unique}.",
            "clickhouse_database": f"aw_{unique}",
            "var_dir": tmp_path / "var",
            "baseline_warmup_s": 0.0,
            "baseline_warmup_heartbeats": 20,
            "snapshot_interval_s": 0.5,
            "loader_batch_age_s": 0.1,
            # without a key a request acts as the loopback admin; tests/test_rbac.py and
            # tests/test_keys.py turn keys on
            "api_auth_required": False,
            # heartbeats register their agents (the behaviour before registration);
            # tests of registration turn it off
            "agents_auto_register": True,
        }
        values.update(overrides)
        made.append(Settings(**values))
        return made[-1]

    yield make
    drop_databases(made)


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> Iterator[Settings]:
    """Settings wired to the session's broker and chDB (starts them on first use); the
    test's topics are deleted after it (:func:`delete_topics`)."""
    broker = request.getfixturevalue("broker")
    chdb_dir = request.getfixturevalue("chdb_dir")
    made = make_settings(
        bootstrap_servers=broker.bootstrap_servers, clickhouse_dsn=f"chdb://{chdb_dir}"
    )
    yield made
    delete_topics(broker.bootstrap_servers, made.topic_prefix)


def delete_topics(bootstrap_servers: str, prefix: str) -> None:
    """Delete the topics named ``prefix…`` (a test's, once it is over and what it started
    has stopped). The session's one broker would otherwise keep every test's topics (14
    each, thousands by the end of a run), and every full list of topics — ensure_topics,
    the API's projection and health probe — is slower with each: the last tests paid for
    all the ones before."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "logger": LIBRDKAFKA_LOG})
    try:
        names = [name for name in admin.list_topics(timeout=10).topics if name.startswith(prefix)]
        if names:
            for future in admin.delete_topics(names, request_timeout=10).values():
                future.result(10)
    except KafkaException as exc:  # only housekeeping: say so, do not fail the test for it
        warnings.warn(f"the topics {prefix}* were not deleted: {exc}", stacklevel=1)


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll ``predicate`` until it returns something truthy, or fail saying ``what``."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")


def read_topic(bootstrap_servers: str, topic: str, timeout_s: float = 15.0) -> list:
    """Every message on ``topic`` now (each partition from its beginning to its end), as
    soon as it is read: not a fixed wait for more (a wait every read would pay in full).

    The end of a partition is the high watermark its fetches report (Tansu answers
    ListOffsets short of the true end; api/broker_probe.py), so a message the broker
    acknowledged before the call is always read. Fails after ``timeout_s``.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "logger": LIBRDKAFKA_LOG,
            "group.id": "tests-read-topic",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,  # an empty partition answers at once, not after 500 ms
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list = []
        read_to: dict[int, int] = {}  # partition -> next offset to read
        deadline = time.monotonic() + timeout_s
        while True:
            for message in consumer.consume(1000, timeout=0.05):
                if message.error() is None:
                    messages.append(message)
                    read_to[message.partition()] = message.offset() + 1
            ends = [
                consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                for p in partitions
            ]
            if all(
                high >= 0 and read_to.get(p, low) >= high
                for p, (low, high) in zip(partitions, ends, strict=True)
            ):
                return messages
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s:g} s reading {topic} to its end "
                    f"(read to {read_to}, ends {ends})"
                )
    finally:
        consumer.close()
