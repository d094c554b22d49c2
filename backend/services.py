"""Wiring of the backend services, done once by app.py (and by tests) and passed to the UI and API."""
from __future__ import annotations

from dataclasses import dataclass

from backend.checkpoint_loader import CheckpointLoader
from backend.devices import choose_device, choose_dtype
from backend.generation import Generator
from backend.job_queue import JobQueue
from backend.model_hashes import HashCache
from backend.model_manager import ModelManager
from backend.model_registry import ModelRegistry
from backend.outputs import OutputStore
from backend.settings import Settings


@dataclass
class Services:
    settings: Settings
    models: ModelManager
    outputs: OutputStore
    generator: Generator
    jobs: JobQueue

    def close(self):
        self.jobs.stop()


def build_services(settings: Settings) -> Services:
    device = choose_device(settings.device)
    dtype = choose_dtype(settings.precision, device)
    registry = ModelRegistry(settings.checkpoints_dir, settings.cache_dir, HashCache(settings.cache_dir / "hashes.json"))
    registry.refresh()  # scan (and hash) once, before any thread asks for the list
    models = ModelManager(settings, registry, CheckpointLoader(), device, dtype)
    outputs = OutputStore(settings.outputs_dir)
    generator = Generator(models, outputs)
    jobs = JobQueue(generator.generate)
    jobs.start()
    return Services(settings=settings, models=models, outputs=outputs, generator=generator, jobs=jobs)
