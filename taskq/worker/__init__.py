"""The worker, one module per thread.

- :mod:`~taskq.worker.consumer`: :class:`Worker`, the consumer loop and lifecycle;
- :mod:`~taskq.worker.offsets`: :class:`OffsetTracker`, the commit points;
- :mod:`~taskq.worker.dispatch`: :class:`KeyedDispatcher`, one record per key at a time;
- :mod:`~taskq.worker.batching`: :class:`Batcher`, batch tasks' records grouped into lists;
- :mod:`~taskq.worker.finisher`: :class:`Finisher`, results stored, follow-ups sent, offsets finished;
- :mod:`~taskq.worker.sender`: :class:`Sender`, produce and wait for every acknowledgement;
- :mod:`~taskq.worker.forwarder`: :class:`Forwarder`, due delayed messages back to their topics;
- :mod:`~taskq.worker.stats`: :class:`WorkerStats`, the counters, kept by :class:`StatsHook`;
- :mod:`~taskq.worker.heartbeat`: :class:`Heartbeat`, the worker_heartbeat hook every 2 s.
"""

from taskq.worker.batching import Batcher
from taskq.worker.consumer import Worker
from taskq.worker.dispatch import KeyedDispatcher
from taskq.worker.finisher import Finisher
from taskq.worker.forwarder import Forwarder
from taskq.worker.offsets import OffsetTracker
from taskq.worker.sender import Sender
from taskq.worker.stats import StatsHook, WorkerStats

__all__ = ["Batcher", "Finisher", "Forwarder", "KeyedDispatcher", "OffsetTracker", "Sender", "StatsHook", "Worker",
           "WorkerStats"]
