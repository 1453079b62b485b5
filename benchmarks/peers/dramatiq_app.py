"""Dramatiq with its Redis broker and the Results middleware on Redis; a no-op actor.

Worker: ``dramatiq benchmarks.peers.dramatiq_app --processes 1 --threads 8``.
"""

from __future__ import annotations

import os
import sys

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
BACKEND = os.environ.get("BENCH_BACKEND_URL", BROKER)
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

backend = RedisBackend(url=BACKEND)
broker = RedisBroker(url=BROKER)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def noop() -> None:
    return None


def worker_argv(concurrency: int, pool: str = "threads") -> list[str]:
    return [sys.executable, "-m", "dramatiq", __name__, "--processes", "1", "--threads", str(concurrency),
            "--queues", QUEUE]


def send() -> str:
    return backend.build_message_key(noop.send())


def flush() -> None:
    """``send()`` returns once Redis stored the message."""


def round_trip(timeout: float) -> None:
    noop.send().get_result(backend=backend, block=True, timeout=int(timeout * 1000))


def close() -> None:
    broker.close()
