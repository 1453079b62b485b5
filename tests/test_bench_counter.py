"""``benchmarks.bench.KeyCounter``: how the benchmarks see results arrive, on a real Redis. Its count
must be exact whatever order the keys appear in, while its polls narrow down to the missing keys."""

from __future__ import annotations

import random
import time

import pytest
import redis

from benchmarks.bench import KeyCounter

pytestmark = pytest.mark.redis


def test_the_count_is_exact_in_any_order_and_polls_narrow_down_to_the_missing_keys(
        redis_url: str, unique: str) -> None:
    keys = [f"counter{unique}:{i}" for i in range(2500)]
    order = keys[:]
    random.Random(7).shuffle(order)
    client = redis.Redis.from_url(redis_url)
    counter = KeyCounter(redis_url, keys, chunk=1000, probe=100, full_every=0.0)
    try:
        assert counter() == 0
        done = 0
        for step in (1, 400, 900, 600, 450, 140, 8, 1):
            client.mset(dict.fromkeys(order[done:done + step], b"1"))
            done += step
            assert counter() == done
        assert done == len(keys) and counter() == len(keys)
        assert not counter.pending  # every chunk complete: nothing is asked for any more
    finally:
        counter.close()
        client.delete(*keys)
        client.close()


def test_the_last_missing_keys_are_asked_for_in_small_chunks(redis_url: str, unique: str) -> None:
    keys = [f"counter{unique}:{i}" for i in range(1000)]
    client = redis.Redis.from_url(redis_url)
    counter = KeyCounter(redis_url, keys, chunk=1000, full_every=0.0)
    try:
        client.mset(dict.fromkeys(keys[:-3], b"1"))
        for _ in range(4):
            assert counter() == 997
        assert sum(len(chunk) for _, chunk in counter.pending) <= 3 * 10  # not the 1,000 keys each time
        client.mset(dict.fromkeys(keys[-3:], b"1"))
        assert counter() == 1000
    finally:
        counter.close()
        client.delete(*keys)
        client.close()


def test_before_the_first_key_only_the_probe_is_asked_until_a_full_count_is_due(
        redis_url: str, unique: str) -> None:
    keys = [f"counter{unique}:{i}" for i in range(1000)]
    client = redis.Redis.from_url(redis_url)
    counter = KeyCounter(redis_url, keys, probe=10, full_every=3600.0)
    try:
        assert counter() == 0  # the first poll is a full count
        client.set(keys[-1], b"1")  # outside the probe
        assert counter() == 0  # the probe sees nothing; a full count is not due for an hour
        counter.full_every = 0.0
        assert counter() == 1
        client.set(keys[0], b"1")
        assert counter() == 2  # once a key was seen, every poll counts them all
    finally:
        counter.close()
        client.delete(*keys)
        client.close()


def test_the_first_key_is_timed_when_the_probe_saw_it_not_after_the_full_count(
        redis_url: str, unique: str) -> None:
    """The count that follows a probe's hit takes its own time (~10 ms for 20,000 keys); the first result is
    timed at the probe's answer, so the count's duration is not charged to the worker being watched."""
    keys = [f"counter{unique}:{i}" for i in range(20_000)]
    client = redis.Redis.from_url(redis_url)
    counter = KeyCounter(redis_url, keys, probe=500, full_every=3600.0)
    try:
        assert counter() == 0 and counter.first_seen is None
        client.set(keys[0], b"1")
        before = time.perf_counter()
        assert counter() == 1
        after = time.perf_counter()
        assert counter.first_seen is not None and before < counter.first_seen < after
        full_count = after - counter.first_seen  # the pipelined EXISTS over every key, after the probe
        assert full_count > 0
        seen = counter.first_seen
        client.set(keys[1], b"1")
        assert counter() == 2 and counter.first_seen == seen  # the first sighting keeps its time
    finally:
        counter.close()
        client.delete(*keys[:2])
        client.close()
