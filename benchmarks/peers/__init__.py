"""Peer task-queue apps for ``benchmarks/compare.py``.

Each module builds its app from ``BENCH_*`` environment variables at import time (the worker
subprocess imports the same module) and offers the same small client interface:

``worker_argv(concurrency, pool)``
    the command that runs one worker process for this app;
``send()``
    queue one no-op task; returns the Redis key its result will be stored under;
``flush()``
    wait until everything sent is accepted by the broker;
``round_trip(timeout)``
    send one no-op and wait for its result;
``close()``
    release connections.

Environment: ``BENCH_BROKER_URL``, ``BENCH_BACKEND_URL`` (Redis, for results) and ``BENCH_QUEUE``
(a fresh queue/topic name per run).
"""
