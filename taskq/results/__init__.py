"""Result backends: the contract (base.py), Redis (redis.py) and the local file (local.py)."""
