"""The loader facing slow and failing storage (issue 14, Deliver 2), on real parts.

Faults are injected at the loader's ClickHouse client boundary
(:mod:`tests.storage_faults`: the real loader, a real chDB behind a client whose
writes are delayed or refused), in ClickHouse itself (a table whose disk is
"full": its ``min_free_disk_bytes_to_perform_insert`` above any free space), or in
the file system (the API process's chDB on a small tmpfs, filled; its tables'
directories made read-only, the API running as a user that file modes stop). Each
test shows the loader holding back — pending rows under their cap, the consumer
paused, no offset stored or committed past the rows written — the fault visible in
its state, and every row stored exactly once when the fault clears.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import ensure_topics, free_port, partitions
from sinks.clickhouse import connect, create_schema
from sinks.loader import Loader
from tests.conftest import LOOPBACK_CLIENT, wait_until
from tests.storage_faults import FaultyClient, StorageFault
from tests.test_loader import COUNT_SCRIPT, _committed, count, heartbeat, produce_heartbeats

pytestmark = pytest.mark.integration

#: Small limits, so that a few thousand heartbeats reach them.
CAP = 300
CONSUME = 100


@pytest.fixture
def capped(make_settings, broker, chdb_dir) -> Settings:
    settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        loader_max_pending_rows=CAP,
        loader_consume_messages=CONSUME,
        loader_batch_rows=200,
        loader_slow_insert_s=0.3,
    )
    ensure_topics(settings)
    return settings


@pytest.fixture
def client(capped: Settings) -> Iterator[object]:
    ch = connect(capped)
    create_schema(ch, capped)
    try:
        yield ch
    finally:
        ch.close()


def stored_offsets(client, settings: Settings) -> int:
    """The loader's offsets of record for agents.metric_rows, summed over partitions."""
    return client.command(
        f"SELECT sum(next_offset) FROM {settings.clickhouse_database}.loader_offsets FINAL "
        f"WHERE topic = '{settings.topic('metric_rows')}'"
    )


def committed_offsets(settings: Settings) -> int:
    """The loader group's offsets committed to Kafka for agents.metric_rows, summed."""
    consumer = Consumer({**settings.kafka_config(), "group.id": settings.loader_group_id})
    try:
        topic = settings.topic("metric_rows")
        wanted = [TopicPartition(topic, p) for p in range(partitions(settings, "metric_rows"))]
        return sum(max(tp.offset, 0) for tp in consumer.committed(wanted, timeout=10))
    finally:
        consumer.close()


def hold_back_observed(loader: Loader, client, settings: Settings, written: int, for_s: float):
    """For ``for_s`` seconds, and at least six looks: nothing more written, pending rows
    under the cap (plus one read), the consumer paused and reading nothing, offsets not
    past the rows written. (Six looks, not as many as fit in ``for_s``: a look queries
    ClickHouse twice, and on a slow machine fewer than six fitted in 1.5 s.)"""
    read_before = loader.stats().messages_read["metric_rows"]
    deadline = time.monotonic() + for_s
    samples = 0
    while time.monotonic() < deadline or samples < 6:
        stats = loader.stats()
        assert stats.consumer_paused, stats
        assert stats.pending_rows <= CAP + CONSUME, stats.pending_rows
        offsets = stored_offsets(client, settings)  # (offsets first: they follow the rows)
        assert offsets <= count(client, settings, "metrics", final=False) == written
        samples += 1
        time.sleep(0.1)
    assert loader.stats().messages_read["metric_rows"] == read_before  # paused: nothing read
    assert committed_offsets(settings) <= written
    return samples


def test_refused_inserts_pause_the_loader_and_lose_nothing(capped, client, loaders_stopped):
    settings = capped
    fault = StorageFault()
    loader = loaders_stopped(Loader(settings, FaultyClient(client, fault)))
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(500)])
    loader.start()
    wait_until(lambda: count(client, settings, "metrics") == 500, 30, "the first 500 rows")
    assert loader.stats().condition()[0] == "ok"

    fault.refuse("TOO_MANY_PARTS: too many parts in table metrics")
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(500, 2000)])
    started = time.monotonic()
    wait_until(
        lambda: loader.stats().condition()[0] == "degraded" and loader.stats().consumer_paused,
        10,
        "the loader to say it is degraded and pause",
    )
    assert time.monotonic() - started < 5  # seen within seconds
    state, reason, _since = loader.stats().condition()
    assert "TOO_MANY_PARTS" in reason and "failing" in reason
    assert hold_back_observed(loader, client, settings, written=500, for_s=1.5) > 5
    assert fault.refused >= 2  # retried with back-off, refused each time

    fault.clear()
    wait_until(lambda: count(client, settings, "metrics") == 2000, 30, "all 2000 rows")
    wait_until(lambda: not loader.stats().consumer_paused, 30, "the consumer resumed")
    assert loader.stats().condition() == ("ok", None, None)
    assert count(client, settings, "metrics", final=False) == 2000  # none twice
    wait_until(lambda: committed_offsets(settings) == 2000, 30, "offsets committed to Kafka")
    assert stored_offsets(client, settings) == 2000


def test_slow_inserts_show_as_degraded_and_keep_memory_bounded(capped, client, loaders_stopped):
    settings = capped
    fault = StorageFault()
    fault.slow(1.0, tables=("metrics",))
    loader = loaders_stopped(Loader(settings, FaultyClient(client, fault)))
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(1500)])
    loader.start()

    def slow_seen():
        state, reason, since = loader.stats().condition()
        return state == "degraded" and "slow ClickHouse" in reason and since

    # (the insert has run longer than loader_slow_insert_s = 0.3 s; the figure is rounded to
    # the millisecond, so a check just past 0.3 s reads 0.3: seen once in a fresh clone)
    assert wait_until(slow_seen, 10, "the slow insert to show") >= 0.3
    peak = 0
    while count(client, settings, "metrics") < 600:  # a few slow batches
        stats = loader.stats()
        peak = max(peak, stats.pending_rows)
        offsets = stored_offsets(client, settings)
        assert offsets <= count(client, settings, "metrics", final=False)
        time.sleep(0.05)
    assert peak <= CAP + CONSUME, peak

    fault.clear()
    wait_until(lambda: count(client, settings, "metrics") == 1500, 30, "all 1500 rows")
    wait_until(lambda: loader.stats().condition()[0] == "ok", 30, "the loader ok again")
    assert count(client, settings, "metrics", final=False) == 1500
    assert loader.stats().errors == 0  # slow is not failing


def test_full_disk_shows_in_health_and_metrics_then_catches_up(capped):
    """ClickHouse refuses inserts into metrics for want of disk space (its own check,
    min_free_disk_bytes_to_perform_insert above what the disk has): /system/health and
    /metrics say so within seconds; when space is back every row is stored once."""
    settings = capped
    db = settings.clickhouse_database
    with TestClient(create_app(settings), client=LOOPBACK_CLIENT) as api:
        admin = connect(settings)
        try:
            produce_heartbeats(settings, [heartbeat(seq) for seq in range(300)])
            wait_until(lambda: count(admin, settings, "metrics") == 300, 30, "300 rows")
            assert api.get("/api/v1/system/health").json()["loader"]["state"] == "ok"

            admin.command(
                f"ALTER TABLE {db}.metrics MODIFY SETTING "
                "min_free_disk_bytes_to_perform_insert = 1000000000000000000"
            )
            produce_heartbeats(settings, [heartbeat(seq) for seq in range(300, 1000)])
            started = time.monotonic()

            def degraded():
                body = api.get("/api/v1/system/health").json()
                loader = body["loader"]
                return loader["state"] == "degraded" and loader["consumer_paused"] and body

            body = wait_until(degraded, 10, "health to show the full disk, reading paused")
            assert time.monotonic() - started < 5
            assert body["status"] == "degraded"
            assert "NOT_ENOUGH_SPACE" in body["loader"]["last_error"]
            assert any("NOT_ENOUGH_SPACE" in p for p in body["problems"]), body["problems"]
            assert body["loader"]["pending_rows"] <= CAP + CONSUME
            wait_until(
                lambda: api.get("/api/v1/system/health").json()["loader"]["degraded_for_s"] > 1,
                10,
                "the time degraded to grow",
            )
            families = {f.name: f for f in text_string_to_metric_families(api.get("/metrics").text)}
            assert families["agentwatch_loader_degraded"].samples[0].value == 1
            assert families["agentwatch_loader_degraded_seconds"].samples[0].value > 1
            assert families["agentwatch_loader_consumer_paused"].samples[0].value == 1
            assert families["agentwatch_up"].samples[0].value == 0
            assert count(admin, settings, "metrics", final=False) == 300
            assert stored_offsets(admin, settings) <= 300

            admin.command(
                f"ALTER TABLE {db}.metrics RESET SETTING min_free_disk_bytes_to_perform_insert"
            )
            wait_until(lambda: count(admin, settings, "metrics") == 1000, 30, "all 1000 rows")
            wait_until(
                lambda: api.get("/api/v1/system/health").json()["loader"]["state"] == "ok",
                30,
                "health ok again",
            )
            assert count(admin, settings, "metrics", final=False) == 1000
            families = {f.name: f for f in text_string_to_metric_families(api.get("/metrics").text)}
            assert families["agentwatch_loader_degraded"].samples[0].value == 0
        finally:
            admin.close()


@pytest.fixture
def loaders_stopped() -> Iterator[object]:
    """Registers a loader to stop at the end of the test, even if it fails."""
    created: list[Loader] = []

    def register(loader: Loader) -> Loader:
        created.append(loader)
        return loader

    yield register
    for loader in created:
        loader.stop()


# --- a real full file system -----------------------------------------------------------


@contextmanager
def small_filesystem(path: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` mounted at ``path`` (skips where mounting is not allowed:
    the test needs a real file system to fill)."""
    path.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()[:200]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a file that takes every free byte of the file system at ``path``."""
    filler = path / "filler"
    with open(filler, "wb") as out:
        block = b"\0" * (1 << 20)
        try:
            while True:
                out.write(block)
                out.flush()
        except OSError:
            pass
    return filler


def stop(api: subprocess.Popen) -> None:
    """Terminate the API process, killing it if it does not stop in 30 s."""
    api.terminate()
    try:
        api.wait(30)
    except subprocess.TimeoutExpired:
        api.kill()
        api.wait(10)


def assert_failed_then_stored_once(tmp_path: Path, env: dict[str, str], rows: int) -> None:
    """The stopped API logged its failed writes, and its chDB holds ``rows`` heartbeats,
    each once (counted by a process of its own, with and without ``FINAL``)."""
    log_text = (tmp_path / "api.log").read_text(errors="replace")
    assert "clickhouse_write_failed" in log_text
    counted = subprocess.run(
        [sys.executable, "-c", COUNT_SCRIPT], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert counted.returncode == 0, counted.stderr[-2000:]
    counts = json.loads(counted.stdout.strip().splitlines()[-1])
    assert counts["metrics_final"] == counts["metrics_raw"] == rows  # none lost, none twice


@pytest.mark.e2e  # runs the API (its loader on a chDB of its own) as a process
@pytest.mark.timeout(240)
def test_a_full_file_system_holds_the_loader_back(capped, tmp_path):
    """The API's chDB on a small tmpfs, filled to the last byte: the loader's inserts fail
    for real (not an injected error), it pauses and says so; space freed, it catches up.
    (A read-only remount is refused while chDB holds its files open for writing.)"""
    settings = capped
    data = tmp_path / "data"
    with small_filesystem(data, megabytes=128):
        port = free_port()
        env = {
            **os.environ,
            **settings.as_env(),
            "AGENTWATCH_API_PORT": str(port),
            "AGENTWATCH_CLICKHOUSE_DSN": f"chdb://{data / 'chdb'}",
            "AGENTWATCH_LOADER_GROUP_ID": f"loader-{tmp_path.name}",
        }
        health_url = f"http://127.0.0.1:{port}/api/v1/system/health"
        with open(tmp_path / "api.log", "wb") as log:
            api = subprocess.Popen(
                [sys.executable, "-m", "api"], env=env, cwd=tmp_path, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

        def loader(**expected: object) -> dict | None:
            try:
                body = httpx.get(health_url, timeout=2).json()["loader"]
            except (httpx.HTTPError, ValueError):
                return None
            return body if all(body.get(k) == v for k, v in expected.items()) else None

        def rows_in(count: int) -> dict | None:
            body = loader(state="ok", consumer_paused=False)
            return body if body and body["rows_inserted"]["metric_rows"] == count else None

        try:
            wait_until(lambda: loader(running=True), 60, "the API and its loader")
            produce_heartbeats(settings, [heartbeat(seq) for seq in range(300)])
            wait_until(lambda: rows_in(300), 30, "the first 300 rows")

            filler = fill(data)
            produce_heartbeats(settings, [heartbeat(seq) for seq in range(300, 900)])
            body = wait_until(
                lambda: loader(state="degraded", consumer_paused=True),
                10,
                "the loader degraded and paused on a full file system",
            )
            assert "NOT_ENOUGH_SPACE" in body["last_error"], body  # "Cannot reserve …"
            assert body["pending_rows"] <= CAP + CONSUME
            assert body["rows_inserted"]["metric_rows"] == 300  # nothing more
            group = settings.model_copy(
                update={"loader_group_id": env["AGENTWATCH_LOADER_GROUP_ID"]}
            )
            assert _committed(group, "metric_rows") <= 300
            filler.unlink()
            wait_until(lambda: rows_in(900), 60, "all 900 rows once there is space")
        finally:
            stop(api)
        assert_failed_then_stored_once(tmp_path, env, 900)


# --- a read-only data directory ---------------------------------------------------------

#: The user the API runs as when the test runs as root (root ignores file modes).
NOBODY = 65534


def unprivileged(home: Path, env: dict[str, str]) -> list[str]:
    """The command that runs the API's interpreter as the owner of ``home``: as ``nobody``
    (``setpriv``, util-linux), ``home`` given to it, when the test runs as root, whom
    file modes do not stop; as ourselves otherwise. Checks first that this user can run
    the project (the repository, the interpreter, the packages): a virtualenv whose
    interpreter lives in a directory it cannot enter (a Python under /root) is replaced
    by the system's Python of the same version with the virtualenv's packages on its
    path; skips, saying why, if neither works."""
    if os.geteuid() != 0:
        return [sys.executable]
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and no setpriv (util-linux) to drop to another user")
    shutil.chown(home, NOBODY, NOBODY)
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [(sys.executable, "")]
    system = shutil.which(version, path="/usr/local/bin:/usr/bin")
    if system is not None:
        candidates.append((system, sysconfig.get_paths()["purelib"]))
    failures = []
    for interpreter, packages in candidates:
        if packages:
            env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], packages])
        probe = subprocess.run(
            [*prefix, interpreter, "-c", "import api.app, chdb, confluent_kafka"],
            env=env, cwd=home, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if probe.returncode == 0:
            return [*prefix, interpreter]
        failures.append(f"{interpreter}: {probe.stderr.strip()[-300:]}")
    pytest.skip(f"user {NOBODY} cannot run the project here: {'; '.join(failures)}")


def table_directories(chdb: Path, database: str) -> list[Path]:
    """The directories of the database's tables, where ClickHouse writes every new part
    (``data/<db>/<table>`` links to ``store/…/<uuid>``)."""
    return [link.resolve() for link in (chdb / "data" / database).iterdir()]


def chmod_all(paths: list[Path], mode: str) -> None:
    """``chmod -R mode`` on each path, as the test's user (the owner, or root)."""
    subprocess.run(["chmod", "-R", mode, *map(str, paths)], check=True)


@pytest.mark.e2e  # runs the API (its loader on a chDB of its own) as a process
@pytest.mark.timeout(240)
def test_a_read_only_data_directory_holds_the_loader_back(capped, tmp_path):
    """The tables' directories of the API's chDB made read-only while heartbeats flow
    (the API running as a user that file modes stop): the loader's inserts fail with
    ClickHouse's own error, it pauses and says so within seconds, nothing is committed
    past the rows written; writable again, it catches up with every row once."""
    settings = capped
    # (not under tmp_path: pytest's base directory is closed to other users)
    home = Path(tempfile.mkdtemp(prefix="agentwatch-readonly-"))
    chdb = home / "chdb"
    port = free_port()
    env = {
        **os.environ,
        **settings.as_env(),
        "HOME": str(home),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "AGENTWATCH_API_PORT": str(port),
        "AGENTWATCH_CLICKHOUSE_DSN": f"chdb://{chdb}",
        "AGENTWATCH_VAR_DIR": str(home / "var"),
        "AGENTWATCH_LOADER_GROUP_ID": f"loader-{tmp_path.name}",
    }
    health_url = f"http://127.0.0.1:{port}/api/v1/system/health"
    tables: list[Path] = []
    try:
        command = unprivileged(home, env)
        with open(tmp_path / "api.log", "wb") as log:
            api = subprocess.Popen(
                [*command, "-m", "api"], env=env, cwd=home, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

        def health(**expected: object) -> dict | None:
            try:
                body = httpx.get(health_url, timeout=2).json()
            except (httpx.HTTPError, ValueError):
                return None
            loader = body["loader"]
            return body if all(loader.get(k) == v for k, v in expected.items()) else None

        def rows_in(count: int) -> dict | None:
            body = health(state="ok", consumer_paused=False)
            return (
                body if body and body["loader"]["rows_inserted"]["metric_rows"] == count else None
            )

        try:
            wait_until(lambda: health(running=True), 60, "the API and its loader")
            if os.geteuid() == 0:  # (setpriv became the interpreter: same process)
                status = Path(f"/proc/{api.pid}/status").read_text()
                assert f"Uid:\t{NOBODY}\t" in status, status
            produce_heartbeats(settings, [heartbeat(seq) for seq in range(300)])
            before = wait_until(lambda: rows_in(300), 30, "the first 300 rows")

            tables = table_directories(chdb, settings.clickhouse_database)
            assert any((t / "format_version.txt").exists() for t in tables), tables
            chmod_all(tables, "a-w")
            produce_heartbeats(settings, [heartbeat(seq) for seq in range(300, 900)])
            started = time.monotonic()
            body = wait_until(
                lambda: health(state="degraded", consumer_paused=True),
                10,
                "the loader degraded and paused on a read-only data directory",
            )
            assert time.monotonic() - started < 5
            loader = body["loader"]
            # ClickHouse's own error: "filesystem error: in create_directories: Permission
            # denied [".../store/…/tmp_insert_…"]. (STD_EXCEPTION)"
            assert "Permission denied" in loader["last_error"], loader
            print(f"degraded after {time.monotonic() - started:.2f} s: {loader['last_error']}")
            assert body["status"] == "degraded"
            assert any("Permission denied" in p for p in body["problems"]), body["problems"]
            group = settings.model_copy(
                update={"loader_group_id": env["AGENTWATCH_LOADER_GROUP_ID"]}
            )
            deadline = time.monotonic() + 1.5  # held back, not only once
            while time.monotonic() < deadline:
                loader = health()["loader"]
                assert loader["consumer_paused"] and loader["state"] == "degraded", loader
                assert loader["pending_rows"] <= CAP + CONSUME, loader
                assert loader["rows_inserted"]["metric_rows"] == 300, loader  # nothing more
                time.sleep(0.2)
            assert _committed(group, "metric_rows") <= 300

            chmod_all(tables, "u+w")
            tables = []
            after = wait_until(lambda: rows_in(900), 60, "all 900 rows once writable again")
            assert after["status"] == before["status"], (before, after)  # the fault is gone
            assert not any("Permission denied" in p for p in after["problems"])
            wait_until(lambda: _committed(group, "metric_rows") == 900, 30, "Kafka commits")
        finally:
            stop(api)
        assert_failed_then_stored_once(tmp_path, env, 900)
    finally:
        if tables:
            chmod_all(tables, "u+w")
        shutil.rmtree(home, ignore_errors=True)
