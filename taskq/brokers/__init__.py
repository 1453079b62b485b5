"""Brokers: the contract (base.py), Kafka (kafka.py) and the embedded local broker (local/)."""
