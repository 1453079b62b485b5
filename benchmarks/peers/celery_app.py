"""Celery 5 with a no-op task; broker from ``BENCH_BROKER_URL`` (``redis://`` or kombu's
``confluentkafka://``), results in Redis (``BENCH_BACKEND_URL``).

Worker: ``celery -A benchmarks.peers.celery_app worker --pool threads -c 8`` (or ``prefork -c 2``),
with gossip, mingle and heartbeats off (they only matter for clusters of workers).
"""

from __future__ import annotations

import os
import sys

from celery import Celery

BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
BACKEND = os.environ.get("BENCH_BACKEND_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
KAFKA = BROKER.startswith("confluentkafka://")

app = Celery("bench", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)
if KAFKA:
    # kombu's Kafka transport has no fanout exchanges: remote control (pidbox) cannot work on it
    app.conf.update(worker_enable_remote_control=False,
                    broker_transport_options={"polling_interval": float(os.environ.get("BENCH_POLLING_INTERVAL", "0.01"))})


@app.task(name="bench.noop")
def noop() -> None:
    return None


def worker_argv(concurrency: int, pool: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", __name__, "worker", "--pool", pool, "-c", str(concurrency),
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING", "-Q", QUEUE]


def send() -> str:
    return "celery-task-meta-" + noop.delay().id


def flush() -> None:
    """Celery's publish returns once the broker took the message (Redis LPUSH, Kafka flush)."""


def round_trip(timeout: float) -> None:
    noop.delay().get(timeout=timeout)


def close() -> None:
    from kombu import pools

    app.close()
    pools.reset()  # close kombu's global connection/producer pools (and its Kafka producers); next app starts fresh
