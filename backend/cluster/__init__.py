"""The Ray worker pool (--workers, --ray-address): the server side (ray_pool.py) and the worker actor (worker.py)."""
