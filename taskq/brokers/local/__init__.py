"""The embedded default broker: Kafka's topic, partition, offset and consumer-group semantics in one
SQLite file, shared by every process on the machine.

- :mod:`~taskq.brokers.local.store`: the file: schema, connections, ``local://`` URLs;
- :mod:`~taskq.brokers.local.producer`: :class:`LocalProducer`, batched appends;
- :mod:`~taskq.brokers.local.group`: group membership and rebalancing;
- :mod:`~taskq.brokers.local.consumer`: :class:`LocalConsumer`, reading and commits;
- :mod:`~taskq.brokers.local.broker`: :class:`LocalBroker`, the factory and admin calls.
"""

from taskq.brokers.local.broker import LocalBroker
from taskq.brokers.local.consumer import LocalConsumer
from taskq.brokers.local.producer import LocalProducer
from taskq.brokers.local.store import path_from_url

__all__ = ["LocalBroker", "LocalConsumer", "LocalProducer", "path_from_url"]
