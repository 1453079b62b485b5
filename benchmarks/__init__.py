"""Benchmarks that compare taskq with other task queues (``python benchmarks/compare.py``)."""
