"""``benchmarks.bench.KeyCounter``: how the benchmarks see results arrive, on a real Redis. Its count
must be exact whatever order the keys appear in, while its polls narrow down to the missing keys."""

from __future__ import annotations

import random

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
