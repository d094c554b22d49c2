"""Every preprocessor by the names sd-webui-controlnet answers to (its internal name and its label, e.g. "depth"
and "depth_midas"), in the extension's order, and the one place a unit's module is looked up."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from backend.controlnet.annotator_files import WEIGHTED, WeightedPreprocessor, find_file, missing_files, refuse
from backend.controlnet.annotator_networks import AnnotatorNetworks
from backend.controlnet.preprocessors import RESOLUTION, WEIGHT_FREE, Preprocessor, UnknownPreprocessor
from backend.controlnet.weighted_runs import NETWORK_RUNS, NetworkRun


def run_network(networks: AnnotatorNetworks, paths: tuple[Path, ...], network_run: NetworkRun, field: str, image,
                resolution, threshold_a, threshold_b, **_):
    network = networks.get(paths, network_run.build, field, network_run.parts, network_run.sized_by_file)
    return network_run.apply(network, image, resolution, threshold_a, threshold_b)


@dataclass(frozen=True)
class PreprocessorCatalog:
    weights_dir: Path  # models/ControlNetPreprocessor
    networks: AnnotatorNetworks = dataclasses.field(default_factory=AnnotatorNetworks, compare=False)

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
        """The runnable preprocessor named `module` (None/"" mean none). One that needs weights runs when its file
        is installed and its network is built in; otherwise it is refused with the files it needs. An unknown name
        lists the known ones."""
        found = self.by_name().get(module or "none")
        if found is None:
            raise UnknownPreprocessor(field, str(module), self.public_names())
        if isinstance(found, WeightedPreprocessor):
            return self.runnable(found, field)
        return found

    def runnable(self, weighted: WeightedPreprocessor, field: str) -> Preprocessor:
        """The network is read when the preprocessor first runs (not here), so a bad file is refused then."""
        network_run = NETWORK_RUNS.get(weighted.name)
        paths = tuple(find_file(self.weights_dir, relative) for relative in weighted.files)
        if network_run is None or None in paths:
            raise refuse(weighted, self.weights_dir, field)
        return Preprocessor(weighted.name, partial(run_network, self.networks, paths, network_run, field),
                            label=weighted.label, resolution=RESOLUTION, slider_1=network_run.slider_1,
                            slider_2=network_run.slider_2,
                            tags=weighted.tags,
                            priority=weighted.priority, needs_files=weighted.files)

    def available(self) -> list[str]:
        """The preprocessors needing weights that run now (their files are installed), by label."""
        return [p.public_name for p in WEIGHTED
                if p.name in NETWORK_RUNS and not missing_files(p, self.weights_dir)]

    def needed_files(self) -> dict[str, list[str]]:
        """For each preprocessor needing weights, the files still missing (empty: installed)."""
        return {p.public_name: missing_files(p, self.weights_dir) for p in WEIGHTED}
