"""One lock for building torch modules, shared by every loader of the app.

accelerate's `init_empty_weights` (our checkpoint and VAE loaders use it, and diffusers' and transformers'
`from_pretrained` use it inside) replaces `torch.nn.Module.register_parameter` for the whole process while it
is active: a module another thread builds meanwhile gets its parameters on the meta device, without data, and
fails when it is used ("Cannot copy out of meta tensor"). So every construction of modules (checkpoints, VAEs,
LoRA layers, upscaler networks, TAESD decoders, extension models) happens inside `building()` of the one
ModelConstruction that backend/services.py creates and passes to each loader. Only construction (and the
library loaders that patch) is inside it, never a whole job: it is held for fractions of a second, or for the
length of a `from_pretrained`.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ModelConstruction:
    def __init__(self):
        self._lock = threading.RLock()  # re-entrant: a loader may build a part through another loader
        self._count_lock = threading.Lock()
        self._waiting = 0
        self._once_lock = threading.Lock()
        self._done: set[str] = set()

    def once(self, name: str, run: Callable[[], None]):
        """Run `run` the first time `name` is asked for; a thread asking meanwhile waits until it has finished
        (the model libraries are imported this way: two threads importing them at once fail half-initialised)."""
        with self._once_lock:
            if name not in self._done:
                run()
                self._done.add(name)

    @contextmanager
    def building(self) -> Iterator[None]:
        """Hold while building modules, or while calling a library loader that builds them."""
        with self._count_lock:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count_lock:
                self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    @property
    def waiting(self) -> int:
        """Threads waiting for their turn to build (tests use it to tell that a builder is held back)."""
        with self._count_lock:
            return self._waiting
