"""Control features without services: the cron parser, schedules, claims in the local store."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from taskq.brokers.base import Record
from taskq.cron import Cron
from taskq.errors import ConfigError
from taskq.results.local import LocalBackend
from taskq.schedules import Periodic
from taskq.topic_admin import _kept
from taskq.worker.priority import PriorityScheduler


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


@pytest.mark.parametrize(("expression", "after", "expected"), [
    ("*/5 * * * *", utc(2026, 1, 1, 10, 7), utc(2026, 1, 1, 10, 10)),
    ("*/5 * * * *", utc(2026, 1, 1, 10, 10), utc(2026, 1, 1, 10, 15)),  # strictly after
    ("0 9 * * mon-fri", utc(2026, 11, 27, 10, 0), utc(2026, 11, 30, 9, 0)),  # Friday 10:00 -> Monday
    ("30 2 29 2 *", utc(2026, 3, 1), utc(2028, 2, 29, 2, 30)),
    ("0 0 1,15 * *", utc(2026, 1, 2), utc(2026, 1, 15)),
    ("0 12 13 * 5", utc(2026, 1, 1), utc(2026, 1, 2, 12)),  # day 13 OR a Friday (Vixie cron)
    ("15 10-12/2 * jan sun", utc(2026, 1, 3), utc(2026, 1, 4, 10, 15)),
    ("0 0 * * 7", utc(2026, 1, 1), utc(2026, 1, 4)),  # 7 is Sunday too
])
def test_cron_next_and_last(expression: str, after: datetime, expected: datetime) -> None:
    cron = Cron.parse(expression)
    assert cron.next_after(after) == expected
    assert cron.last_at_or_before(expected) == expected
    assert cron.last_at_or_before(expected.replace(second=59)) == expected


@pytest.mark.parametrize("bad", ["* * * *", "60 * * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"])
def test_cron_rejects_bad_expressions(bad: str) -> None:
    with pytest.raises(ConfigError):
        Cron.parse(bad)


@pytest.mark.parametrize("never", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6 *"])
def test_cron_that_never_fires_is_refused_at_declaration(never: str) -> None:
    """A date no month has would stop the beat (and every other schedule) at its first round."""
    with pytest.raises(ConfigError, match="never fires"):
        Cron.parse(never)


def test_interval_ticks_are_aligned_and_ids_deterministic() -> None:
    p = Periodic.build("s", "t", every=30)
    now = 1_000_000_045.5
    assert p.last_tick(now) == 1_000_000_020.0 and p.next_tick(now) == 1_000_000_050.0
    assert p.task_id("g", 1_000_000_020.0) == Periodic.build("s", "t", every=30).task_id("g", 1_000_000_020)
    assert p.task_id("g", 1_000_000_020.0) != p.task_id("g", 1_000_000_050.0)
    with pytest.raises(ConfigError):
        Periodic.build("s", "t")
    with pytest.raises(ConfigError):
        Periodic.build("s", "t", cron="* * * * *", every=5)


@pytest.mark.parametrize("every", [0, -1, float("nan"), float("inf")])
def test_interval_must_be_a_finite_positive_number(every: float) -> None:
    """NaN passed the "<= 0" check and stopped the beat at its first round; infinity never ticked."""
    with pytest.raises(ConfigError, match="every must be"):
        Periodic.build("s", "t", every=every)


def test_local_claims(tmp_path: Path) -> None:
    store = LocalBackend(str(tmp_path / "r.db"))
    assert store.claim("a", "one", 0.3) is None
    assert store.claim("a", "two", 0.3) == "one"
    assert store.extend("a", "one", 0.3) and not store.extend("a", "two", 0.3)
    store.release("a", "two")  # not the holder: no effect
    assert store.claim("a", "two", 0.3) == "one"
    time.sleep(0.35)
    assert store.claim("a", "two", 0.3) is None  # expired
    store.release("a", "two")
    assert store.claim("a", "three", 1) is None


def test_share_of_keys_kept_when_partitions_grow() -> None:
    assert _kept(2, 6) == pytest.approx(1 / 3)
    assert _kept(3, 6) == pytest.approx(1 / 2)
    assert _kept(6, 6) == 1


def _rec(topic: str, offset: int, partition: int = 0) -> Record:
    return Record(topic, partition, offset, b"k", b"", [])


def test_priority_scheduler_shares_slots_credit_and_pauses() -> None:
    sent: list[Record] = []
    levels = {"t": 0, "t.p1": 1, "t.p2": 2}
    s = PriorityScheduler(levels, sent.append, slots=1, limit=4)
    for i in range(130):
        for topic in levels:
            s.add(_rec(topic, i))
    for _ in range(130):  # one slot: each finish starts the next
        s.pump()
        s.finished([sent[-1]])
    shares = [sum(r.topic == t for r in sent) / len(sent) for t in levels]
    assert shares == pytest.approx([1 / 13, 3 / 13, 9 / 13], abs=0.02)
    # a level that was empty banks no credit: after refilling it does not get a burst
    s2 = PriorityScheduler(levels, (got := []).append, slots=1, limit=4)
    for i in range(40):
        s2.add(_rec("t.p2", i))
    for _ in range(30):
        s2.pump()
        s2.finished([got[-1]])
    for i in range(10):
        s2.add(_rec("t", 100 + i))
    for _ in range(10):
        s2.pump()
        s2.finished([got[-1]])
    assert sum(r.topic == "t" for r in got[-10:]) <= 2
    # pause a full level's partitions, resume once half drained; drop by partition
    for i in range(10):
        s2.add(_rec("t.p2", 200 + i, partition=1))
    owned = [("t", 0), ("t.p2", 0), ("t.p2", 1)]
    pause, resume = s2.pauses(owned)
    assert pause == owned and resume == []  # both queues hold >= 4
    assert s2.pauses(owned) == ([], [])  # no change, no calls
    dropped = s2.drop({("t.p2", 1)})
    assert len(dropped) == 10 and all(r.partition == 1 for r in dropped)
    pause, resume = s2.pauses(owned)
    assert pause == [] and resume == [("t.p2", 0), ("t.p2", 1)]  # p2 drained to 3/4 of the limit


def test_the_embedded_stores_rate_limiter_does_not_import_redis_py(tmp_path: Path) -> None:
    """Its look-up of the backend's kind imported the Redis backend (and redis-py, ~0.1 s) to compare with."""
    code = ("import sys; from taskq import Taskq; app = Taskq('r', local_path=sys.argv[1]); "
            "t = app.task(lambda: None, name='r.t', rate_limit='5/s'); t.limiter; print('redis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.db")], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
