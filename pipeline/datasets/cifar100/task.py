"""The registered ``cifar100`` dataset: the image-classification family with CIFAR-100's format and MAXL's 4-level
hierarchy (``hierarchy.py``): a primary level and a finer, human-defined auxiliary level, which is also a given
auxiliary task; with the finest primary level the given auxiliary is the next coarser one (DTG-AuxL's CIFAR-100
scenario, appendix §4.2: the 100 fine classes as the primary task, the 20 coarse classes as the auxiliary)."""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.cifar100 import config
from pipeline.datasets.cifar100.hierarchy import LEVELS, with_levels
from pipeline.datasets.cifar100.sources import CIFAR100_FORMAT
from pipeline.datasets.shared.image_classification import ImageClassification
from pipeline.datasets.shared.raw_images import RawImages
from pipeline.core.registry import DATASETS


@DATASETS.register("cifar100")
class Cifar100(ImageClassification):
    """CIFAR-100 with ``primary_level`` fine (default), coarse, group or domain; every level stays in ``meta``
    (``<level>_labels``); the auxiliary level is recorded for the methods that read the finer labels and is the
    given auxiliary task (its own head and cross-entropy; methods that generate their auxiliary task read the
    main column only)."""

    name = "cifar100"
    raw_format = CIFAR100_FORMAT
    provides = frozenset({"generated_labels", "finer_labels", "image_embeddings", "auxiliaries", "task_labels"})
    Config = config.Config
    ModelConfig = config.ModelConfig
    SplitConfig = config.SplitConfig

    def main_labelling(self, cfg: config.Config) -> str:
        return cfg.primary_level

    def auxiliary_labelling(self, cfg: config.Config) -> str | None:
        return cfg.auxiliary

    def read_raw(self, cfg: config.Config, root: Path) -> RawImages:
        """The pickles' fine and coarse labels, with MAXL's two coarser levels added."""
        return with_levels(self.raw_format.read(root), standin=cfg.source == "standin", where=str(root))

    def given_auxiliaries(self, meta: dict) -> list[str]:
        """The hierarchy's auxiliary level (the finer, human-defined labels), or, for the finest primary level,
        the next coarser one (fine → coarse: DTG-AuxL's CIFAR-100 scenario)."""
        if meta.get("auxiliary_label"):
            return [meta["auxiliary_label"]]
        primary = meta.get("main_label") or "fine"
        return [LEVELS[LEVELS.index(primary) - 1]]
