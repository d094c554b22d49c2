"""Every preprocessor by the names sd-webui-controlnet answers to (its internal name and its label, e.g. "depth"
and "depth_midas"), in the extension's order, and the one place a unit's module is looked up."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.controlnet.annotator_files import WEIGHTED, WeightedPreprocessor, missing_files, refuse
from backend.controlnet.preprocessors import WEIGHT_FREE, Preprocessor, UnknownPreprocessor


@dataclass(frozen=True)
class PreprocessorCatalog:
    weights_dir: Path  # models/ControlNetPreprocessor

    def by_name(self) -> dict[str, Preprocessor | WeightedPreprocessor]:
        names: dict[str, Preprocessor | WeightedPreprocessor] = {}
        for preprocessor in (*WEIGHT_FREE, *WEIGHTED):
            names[preprocessor.name] = preprocessor
            names[preprocessor.public_name] = preprocessor
        return names

    def public_names(self) -> list[str]:
        """'none' first, then by priority and name, highest first (the extension's dropdown order); the ones
        needing weights after them."""
        free = sorted((p for p in WEIGHT_FREE if p.name != "none"),
                      key=lambda p: (p.priority, p.public_name), reverse=True)
        return ["none", *(p.public_name for p in free), *sorted(p.public_name for p in WEIGHTED)]

    def get(self, module: str | None, field: str = "module") -> Preprocessor:
        """The runnable preprocessor named `module` (None/"" mean none). One that needs weights is refused with the
        files it needs; an unknown name lists the known ones."""
        found = self.by_name().get(module or "none")
        if found is None:
            raise UnknownPreprocessor(field, str(module), self.public_names())
        if isinstance(found, WeightedPreprocessor):
            raise refuse(found, self.weights_dir, field)
        return found

    def needed_files(self) -> dict[str, list[str]]:
        """For each preprocessor needing weights, the files still missing (empty: installed)."""
        return {p.public_name: missing_files(p, self.weights_dir) for p in WEIGHTED}
