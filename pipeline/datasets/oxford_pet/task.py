"""The registered ``oxford_pet`` dataset: the fine-grained image-classification family with Pet's format."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.registry import DATASETS
from pipeline.datasets.oxford_pet import config
from pipeline.datasets.oxford_pet.sources import PET_FORMAT, SPECIES, read_pet
from pipeline.datasets.shared.fine_grained import FineGrainedClassification
from pipeline.datasets.shared.image_classification import generate_standin
from pipeline.datasets.shared.raw_images import RawImages


@DATASETS.register("oxford_pet")
class OxfordPet(FineGrainedClassification):
    """Oxford-IIIT Pet (AuxiLearn Table 3: 30-shot, ResNet-18 from scratch; Table 8: 15-shot): the breed is the
    main task, the species (cat/dog) is kept in ``meta``."""

    name = "oxford_pet"
    raw_format = PET_FORMAT
    Config = config.Config
    ModelConfig = config.ModelConfig
    SplitConfig = config.SplitConfig

    def standin(self, cfg: config.Config) -> RawImages:
        """The family's shapes; the first half of the classes are "cats" (capitalised names, as Pet's cat breeds),
        the rest "dogs"."""
        raw = generate_standin(cfg)
        k = cfg.standin_num_classes
        cats = (k + 1) // 2
        names = [n.capitalize() if c < cats else n for c, n in enumerate(raw.names["class"])]
        species = (raw.labels["class"] >= cats).astype(np.int64)
        return RawImages(raw.images, raw.is_train, {"breed": raw.labels["class"], "species": species},
                         {"breed": names, "species": list(SPECIES)}, raw.subclass_labels)

    def read_raw(self, cfg: config.Config, root: Path) -> RawImages:
        return read_pet(root, cfg.image_size)
