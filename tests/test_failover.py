"""Fail-over on the 3-broker cluster: one broker that stops answering (a "grey" failure) while the
other two serve. The cluster moves leadership away within its broker session timeout (6 s in the
test cluster); taskq's clients must move with it instead of waiting on the silent broker.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from taskq.brokers.kafka import KafkaBroker
from taskq.worker.sender import retrying

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, pytest.mark.slow]


def test_admin_calls_move_off_a_broker_that_stopped_answering(kafka_cluster3) -> None:
    """The worker's topic look-ups (the forwarder's, the finisher's topic checks) go through one admin
    client, which talks to the one broker it bootstrapped from. SIGSTOP that broker and every later look-up
    timed out on it while two brokers served: delayed tasks waited for the whole freeze, and a freeze longer
    than ``outage_timeout`` stopped the worker. A look-up that timed out now starts over on a new client."""
    broker = KafkaBroker(kafka_cluster3.url, connect_timeout=2.0)
    try:
        victim = -1
        while victim < 0:  # -1: answered through the bootstrap connection; ask again
            victim = broker.admin.list_topics(timeout=5).orig_broker_id  # the broker this client talks to
        pid = kafka_cluster3.node(victim).proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            retrying("list topics", broker.list_topics, bound=8.0)  # OutageTooLong before the fix
            took = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
        print(f"\nFAULT broker-frozen-admin-lookup: frozen_node={victim} answered_after={took:.1f}s")
        assert took < 8.0
    finally:
        broker.close()
