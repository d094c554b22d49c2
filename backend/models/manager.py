"""Loaded checkpoints: an LRU cache limited by count and bytes, a GPU tier and a CPU-RAM tier, leases.

A leased model is never evicted or moved. Switching back to a cached model costs a dictionary lookup
(plus a host->GPU copy when it waited in the CPU tier).
"""
from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.core.errors import is_out_of_memory
from backend.core.settings import Settings
from backend.models.component_choices import ComponentChoices
from backend.models.devices import attention_backend, free_accelerator_memory
from backend.models.loader import CheckpointLoader, LoadedModel
from backend.models.module_store import ModuleStore
from backend.models.registry import CheckpointEntry, ModelRegistry
from backend.models.speed_options import compile_unet, component_placement, place
from backend.models.weight_files import CheckpointError

log = logging.getLogger(__name__)
# owner/name as the Hugging Face Hub allows them; anything else (paths, `..`, backslashes) is no repo id
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


class ModelNotFoundError(CheckpointError):
    pass


@dataclass
class CachedModel:
    entry: CheckpointEntry
    model: LoadedModel
    size_bytes: int
    leases: int = 0
    on_device: bool = False
    load_seconds: float = 0.0
    compiled: bool = False  # --compile is applied once per load


@dataclass
class CacheStats:
    loads: int = 0
    hits: int = 0
    evictions: int = 0


class ModelManager:
    def __init__(self, settings: Settings, registry: ModelRegistry, loader: CheckpointLoader,
                 device: torch.device, dtype: torch.dtype, components: ComponentChoices | None = None):
        """`components`: the separate VAE / text encoder files chosen per checkpoint (Flux, SD3)."""
        self.settings = settings
        self.components = components
        self.registry = registry
        self.loader = loader
        self.device = device
        self.dtype = dtype
        self.stats = CacheStats()
        self._cache: OrderedDict[str, CachedModel] = OrderedDict()
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()  # one load at a time: loads are memory-heavy
        self._selected: str | None = None
        self._default_lock = threading.Lock()  # the start-up choice and a job that needs it wait for each other
        self._default_tried = False
        self.default_chosen = threading.Event()  # set once load_default has run (the page waits for it)
        self._failures: dict[str, str] = {}  # title -> why the file cannot be loaded (reported once, kept listed)
        self.runtime_status = ""  # attention backend, placement (offload) and compile, as last logged
        self.max_models = settings.max_models_in_memory or 1  # checkpoints kept loaded (the user option can change it)
        self.startup_checkpoint = settings.startup_checkpoint  # --ckpt, else the one the user chose last time
        self.loads_here = True  # False: jobs run in pool workers; this process only lists and chooses models
        # ControlNets, adapters, image encoders: under the same byte limit, with what the checkpoints leave
        self.modules = ModuleStore(max_count=4, byte_budget=lambda: self._limit_bytes() - self._checkpoint_bytes())

    # --- which model ------------------------------------------------------------------------------
    def list_checkpoints(self) -> tuple[CheckpointEntry, ...]:
        return self.registry.entries

    def refresh(self) -> tuple[CheckpointEntry, ...]:
        entries = self.registry.refresh()
        with self._lock:  # a replaced file has a new hash, so a new title: it gets a fresh try
            titles = {entry.title for entry in entries}
            self._failures = {title: reason for title, reason in self._failures.items() if title in titles}
        return entries

    def failure(self, title: str) -> str | None:
        """Why the checkpoint with this title could not be loaded (None: it loaded, or was not tried)."""
        with self._lock:
            return self._failures.get(title)

    def resolve(self, query: str | None) -> CheckpointEntry:
        if query is None:
            query = self._selected or self._startup_choice()
        if query is None:
            return self._first_usable()
        entry = self.registry.find(query)
        if entry is None and HUB_REPO_ID.fullmatch(query) and ".." not in query and not Path(query).exists():
            entry = CheckpointEntry(name=query, path=Path(query), short_hash=None)  # a hub repo id
        if entry is None:
            names = ", ".join(e.title for e in self.registry.entries)
            raise ModelNotFoundError(f"checkpoint: no model named '{query}'; available: {names}")
        return entry

    def _startup_choice(self) -> str | None:
        """--ckpt, until it turned out not to load."""
        choice = self.startup_checkpoint
        if choice is None:
            return None
        entry = self.registry.find(choice)
        return None if self.failure(entry.title if entry is not None else choice) else choice

    def _first_usable(self) -> CheckpointEntry:
        """The first listed checkpoint not known to fail (the first one when every one failed)."""
        entries = self.registry.entries
        return next((entry for entry in entries if self.failure(entry.title) is None), entries[0])

    @property
    def selected(self) -> CheckpointEntry:
        return self.resolve(None)

    def load_default(self) -> CheckpointEntry | None:
        """At start: load --ckpt, or else the first listed checkpoint that loads; a file that fails is logged once
        and skipped (it stays listed with its reason). Returns the model now selected (None: none loads). Runs once;
        a job that needs the default meanwhile waits for it."""
        if not self.loads_here:  # the workers load it with their first job
            self.default_chosen.set()
            return self.selected if self.registry.entries else None
        with self._default_lock:
            try:
                return self._choose_default()
            finally:
                self.default_chosen.set()

    def _choose_default(self) -> CheckpointEntry | None:
        if self._default_tried or self._selected is not None:
            return self.selected if self._selected is not None else None
        self._default_tried = True
        candidates = [entry for entry in self.registry.entries if self.failure(entry.title) is None]
        if self.startup_checkpoint is not None:
            try:
                candidates.insert(0, self.resolve(self.startup_checkpoint))
            except ModelNotFoundError as error:
                log.error("--ckpt: %s", str(error).removeprefix("checkpoint: "))
        for entry in candidates:
            if self._selected is not None:  # a user picked a model meanwhile
                return self.selected
            if self.failure(entry.title):
                continue  # --ckpt, tried first, is also in the list
            try:
                # a model the user chose while this one loaded stays chosen
                with self.lease(entry.title) as (loaded, _), self._lock:
                    if self._selected is None:
                        self._selected = loaded.title
                return self.selected
            except CheckpointError:
                continue  # recorded and logged by _load
        log.error("none of the %d checkpoint(s) in %s can be loaded", len(self.registry.entries),
                  self.registry.checkpoints_dir)
        return None

    def choose_components(self, query: str, names: list[str]) -> CheckpointEntry:
        """Remember the separate VAE / text encoder files `query`'s checkpoint loads with; a cached copy loaded with
        other parts is dropped (unless a job holds it: then the next load after it uses the new choice)."""
        if self.components is None:
            raise CheckpointError("this server has no separate VAE / text encoder folders", field="text_encoders")
        entry = self.resolve(query)
        self.components.choose(entry.title, names)
        with self._lock:
            cached = self._cache.get(str(entry.path))
            if cached is not None and cached.leases == 0:
                del self._cache[str(entry.path)]
            self._failures.pop(entry.title, None)  # a missing part may be what failed it
        return entry

    def select(self, query: str) -> CheckpointEntry:
        """Load (or find in the cache) and make it the default; on failure the previous choice stays. (Where jobs
        run in pool workers, only chosen: each worker loads it with its next job.)"""
        if not self.loads_here:
            return self.choose(query)
        with self.lease(query) as (entry, _):
            self._selected = entry.title
        return entry

    def choose(self, query: str) -> CheckpointEntry:
        """Make it the default without loading it (a pool worker: the server chose it for the job)."""
        entry = self.resolve(query)
        self._selected = entry.title
        return entry

    def loaded_titles(self) -> list[str]:
        """Titles of the checkpoints in the cache now, the most recently used last."""
        with self._lock:
            return [cached.entry.title for cached in self._cache.values()]

    def loaded(self, query: str | None) -> LoadedModel | None:
        """The model if the cache holds it now, else None: never loads (for the page's defaults and counters)."""
        try:
            entry = self.resolve(query)
        except CheckpointError:
            return None
        with self._lock:
            cached = self._cache.get(str(entry.path))
            return cached.model if cached is not None else None

    # --- cache --------------------------------------------------------------------------------------
    @contextmanager
    def lease(self, query: str | None):
        """Yield (entry, LoadedModel) on the execution device; it cannot be evicted until released."""
        if query is None and self._selected is None:
            self.load_default()  # the start-up choice, so that a file that does not load is skipped
        entry = self.resolve(query)
        cached = self._acquire(entry)
        try:
            yield entry, cached.model
        finally:
            with self._lock:
                cached.leases -= 1
                # Limits exceeded while models were in use hold again now; the most recent one stays.
                self._evict(keep=next(reversed(self._cache), None))

    def _acquire(self, entry: CheckpointEntry) -> CachedModel:
        key = str(entry.path)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                cached.leases += 1
                self._cache.move_to_end(key)
                self.stats.hits += 1
        if cached is None:
            with self._load_lock:
                with self._lock:
                    cached = self._cache.get(key)
                    if cached is not None:
                        cached.leases += 1
                        self._cache.move_to_end(key)
                if cached is None:
                    cached = self._load(entry)
        try:
            self._place_on_device(cached)
        except BaseException:
            with self._lock:
                cached.leases -= 1
            raise
        return cached

    def _load(self, entry: CheckpointEntry) -> CachedModel:
        started = time.perf_counter()
        log.info("loading checkpoint %s", entry.title)
        try:
            model = self._load_model(entry)
        except CheckpointError as error:
            named = Path(entry.name).name in str(error)  # every report names the file
            reported = error if named else CheckpointError(f"{entry.name}: {error}")
            self._record_failure(entry, reported)
            if named:
                raise
            raise reported from error
        with self._lock:
            self._failures.pop(entry.title, None)
        model.pipeline.set_progress_bar_config(disable=True)
        cached = CachedModel(entry=entry, model=model, size_bytes=model.size_bytes, leases=1,
                             load_seconds=time.perf_counter() - started)
        with self._lock:
            self._cache[str(entry.path)] = cached
            self.stats.loads += 1
            self._evict(keep=str(entry.path))
        log.info("loaded %s (%s, %.1f MB) in %.1fs", entry.title, model.label, cached.size_bytes / 1e6,
                 cached.load_seconds)
        return cached

    def _record_failure(self, entry: CheckpointEntry, error: CheckpointError):
        with self._lock:
            known = entry.title in self._failures
            self._failures[entry.title] = str(error)
        if not known:  # once per file: every later job or switch that tries it again reports it to its user
            log.warning("checkpoint %s cannot be loaded: %s", entry.title, error)

    def _load_model(self, entry: CheckpointEntry) -> LoadedModel:
        """The loader's result; a file that breaks the loader in a way it did not foresee is still reported
        as a CheckpointError naming the file, so the job fails cleanly and the cache stays as it was."""
        try:
            parts = self.components.resolve(self.components.chosen(entry.title)) if self.components else None
            return self._with_oom_retry(lambda: self.loader.load(entry.path, self.dtype,
                                                                 local_files_only=self.settings.offline,
                                                                 components=parts or None))
        except CheckpointError:
            raise
        except Exception as error:
            if is_out_of_memory(error):
                raise
            raise CheckpointError(f"{entry.title} could not be loaded: {type(error).__name__}: {error}") from error

    def _place_on_device(self, cached: CachedModel):
        """GPU tier: at most max_models_on_gpu models live on the accelerator; the rest wait in RAM. With
        offloading (--medvram/--lowvram) diffusers moves the parts itself, so no tier is kept."""
        if cached.on_device:
            return
        speed = self.settings.speed
        if self.device.type != "cpu" and speed.offload == "none":
            with self._lock:
                resident = [c for c in self._cache.values() if c.on_device and c is not cached and c.leases == 0]
                while resident and len(resident) + 1 > self.settings.max_models_on_gpu:
                    victim = resident.pop(0)
                    victim.model.pipeline.to("cpu")
                    victim.on_device = False
        placement = self._with_oom_retry(lambda: place(cached.model.pipeline, self.device, speed))
        if not cached.compiled:
            placement += "; " + compile_unet(cached.model.pipeline, self.device, speed)
            cached.compiled = True
        status = attention_backend(cached.model.pipeline, self.settings.xformers, self.device) + "; " + placement
        if status != self.runtime_status:
            log.info(status)
        self.runtime_status = status
        cached.on_device = True

    def _limit_bytes(self) -> float:
        return self.settings.max_cache_gb * 1e9

    def _checkpoint_bytes(self) -> int:
        with self._lock:
            return sum(c.size_bytes for c in self._cache.values())

    def _evict(self, keep: str | None):
        """Drop least-recently-used, unleased models (never `keep`) until both limits hold; unused side models
        (ControlNets and the like) go before any checkpoint."""
        limit_bytes = self._limit_bytes()
        self.modules.shrink(limit_bytes - sum(c.size_bytes for c in self._cache.values()))
        while True:
            total = sum(c.size_bytes for c in self._cache.values()) + self.modules.size_bytes()
            if len(self._cache) <= self.max_models and total <= limit_bytes:
                return
            victim_key = next((k for k, c in self._cache.items() if c.leases == 0 and k != keep), None)
            if victim_key is None:
                return  # everything is in use; the limits are exceeded until a lease ends
            victim = self._cache.pop(victim_key)
            self.stats.evictions += 1
            log.info("evicted %s from the model cache", victim.entry.title)
            del victim
            gc.collect()

    def free_unused(self):
        """Drop every unleased model (used to recover from out-of-memory)."""
        with self._lock:
            for key in [k for k, c in self._cache.items() if c.leases == 0]:
                del self._cache[key]
        self.modules.free_unused()
        free_accelerator_memory()

    def _with_oom_retry(self, action):
        try:
            return action()
        except RuntimeError as error:  # torch.OutOfMemoryError, or the RuntimeError of older torch and MPS
            if not is_out_of_memory(error):
                raise
            log.warning("out of memory; freeing cached models and retrying once")
        self.free_unused()  # outside the except block: the failed attempt's tensors are released first
        return action()

    def loaded_family(self, title: str) -> str | None:
        """The family of a checkpoint in the cache; None while it is not loaded (detection needs its weights)."""
        with self._lock:
            return next((c.model.family for c in self._cache.values() if c.entry.title == title), None)

    def cached_titles(self) -> list[str]:
        with self._lock:
            return [c.entry.title for c in self._cache.values()]

    def cache_report(self) -> list[dict]:
        """What the cache holds now, least recently used first: title, size, where, in use, load time, and where
        each of its models (transformer or UNet, text encoders, VAE) sits."""
        with self._lock:
            return [{"title": c.entry.title, "size_bytes": c.size_bytes, "on_device": c.on_device,
                     "in_use": c.leases > 0, "load_seconds": c.load_seconds,
                     "components": component_placement(c.model.pipeline)} for c in self._cache.values()]
