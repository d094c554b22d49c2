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

    def sorted(self) -> list[Preprocessor | WeightedPreprocessor]:
        """'none' first, then by priority and label, highest first: the extension's dropdown and API order."""
        others = sorted((p for p in (*WEIGHT_FREE, *WEIGHTED) if p.name != "none"),
                        key=lambda p: str(p.priority).zfill(8) + p.public_name, reverse=True)
        return [WEIGHT_FREE[0], *others]

    def public_names(self) -> list[str]:
        """The labels (what the extension's UI shows; "alias names" in its API)."""
        return [p.public_name for p in self.sorted()]

    def internal_names(self) -> list[str]:
        """The extension's internal keys ("depth" for depth_midas): its /controlnet/module_list default."""
        return [p.name for p in self.sorted()]

    def tags(self) -> list[str]:
        return ["All", *sorted({tag for p in (*WEIGHT_FREE, *WEIGHTED) for tag in p.tags})]

    def with_tag(self, tag: str) -> list[Preprocessor | WeightedPreprocessor]:
        """'none' and the preprocessors tagged `tag` ("All": every one), in the listed order."""
        return [p for p in self.sorted() if tag == "All" or p.name == "none" or tag in p.tags]

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
