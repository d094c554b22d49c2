"""Models a job uses beside its checkpoint (ControlNets, T2I-Adapters, IP-Adapter image encoders), built once and
kept under the model cache's limits: a count of their own, and the byte limit shared with the checkpoints (the
ModelManager gives what the checkpoints leave). Least recently used first out; one a job holds (leased) never."""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in (*module.parameters(), *module.buffers()))


@dataclass
class CachedModule:
    title: str
    module: torch.nn.Module
    size_bytes: int
    leases: int = 0


class ModuleStore:
    def __init__(self, max_count: int = 4, byte_budget: Callable[[], float] | None = None):
        """`byte_budget()`: the bytes the store may hold now (None: no byte limit)."""
        self.max_count = max_count
        self._byte_budget = byte_budget
        self._cache: OrderedDict[tuple, CachedModule] = OrderedDict()
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()  # one build at a time: builds read whole files

    @contextmanager
    def lease(self, key: tuple, title: str, build: Callable[[], torch.nn.Module]):
        """The module cached under `key`, built by `build()` when it is not, held (never evicted) for the block."""
        with self._build_lock:
            with self._lock:
                cached = self._cache.get(key)
                if cached is not None:
                    cached.leases += 1
                    self._cache.move_to_end(key)
            if cached is None:
                module = build()
                cached = CachedModule(title, module, module_bytes(module), leases=1)
                with self._lock:
                    self._cache[key] = cached
        self.shrink()
        try:
            yield cached.module
        finally:
            with self._lock:
                cached.leases -= 1
            self.shrink()

    def shrink(self, byte_budget: float | None = None):
        """Drop the least recently used unleased modules until the count and the byte budget hold (the budget
        asked of the owner unless given: the owner calls this holding its own lock)."""
        if byte_budget is None and self._byte_budget is not None:
            byte_budget = self._byte_budget()  # outside our lock: the owner takes its own
        with self._lock:
            while len(self._cache) > self.max_count or (
                    byte_budget is not None and self._total() > byte_budget):
                victim = next((key for key, cached in self._cache.items() if cached.leases == 0), None)
                if victim is None:
                    return  # all in use: the limits hold again once a lease ends
                log.info("dropped %s from the model cache", self._cache.pop(victim).title)

    def _total(self) -> int:
        return sum(cached.size_bytes for cached in self._cache.values())

    def size_bytes(self) -> int:
        with self._lock:
            return self._total()

    def free_unused(self):
        with self._lock:
            for key in [key for key, cached in self._cache.items() if cached.leases == 0]:
                del self._cache[key]

    def titles(self) -> list[str]:
        """What the store holds, least recently used first."""
        with self._lock:
            return [cached.title for cached in self._cache.values()]

    def count(self) -> int:
        with self._lock:
            return len(self._cache)
