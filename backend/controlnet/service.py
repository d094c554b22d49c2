"""The ControlNet service app.py builds once: the models folder, the preprocessors, the cache of built models."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from backend.controlnet.catalog import PreprocessorCatalog
from backend.controlnet.loading import ControlNetCache
from backend.controlnet.model_files import ControlNetEntry, ControlNetFolder
from backend.controlnet.preprocessors import Detection, resolve_parameters, run_detection
from backend.models.module_store import ModuleStore


class ControlNets:
    def __init__(self, models_dir: Path, preprocessors_dir: Path, max_models: int = 4,
                 ipadapter_dir: Path | None = None, clip_vision_dir: Path | None = None,
                 store: ModuleStore | None = None, builtin: Callable[[], ControlNetEntry | None] | None = None):
        """`store`: where built models are kept (the model manager's, so they share its limits). `builtin`: asked
        on each scan for the built-in demo ControlNet's entry (see builtin_controlnet)."""
        self.folder = ControlNetFolder(models_dir, extra_folders=(ipadapter_dir,) if ipadapter_dir else (),
                                       builtin=builtin)
        self.clip_vision_dir = clip_vision_dir or Path(models_dir).parent / "clip_vision"
        self.preprocessors = PreprocessorCatalog(preprocessors_dir)
        self.cache = ControlNetCache(self.folder, max_models, store)

    def model_titles(self, refresh: bool = False) -> list[str]:
        if refresh:
            self.folder.refresh()
        return self.folder.titles()

    def detect(self, module: str, image: np.ndarray, processor_res: float | None = None,
               threshold_a: float | None = None, threshold_b: float | None = None, mask: np.ndarray | None = None,
               seed: int = 0, field: str = "module") -> Detection:
        """What the preprocessor `module` finds in `image`: its map, and the poses of openpose's (UserError: unknown,
        or needs weights)."""
        preprocessor = self.preprocessors.get(module, field)
        parameters = resolve_parameters(preprocessor, processor_res, threshold_a, threshold_b)
        return run_detection(preprocessor, image, parameters, mask=mask, seed=seed)

    def clear(self):
        """Out of memory: drop every built ControlNet no job holds, and the built preprocessor networks."""
        self.cache.clear_unused()
        self.preprocessors.networks.clear()
