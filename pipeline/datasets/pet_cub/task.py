"""The registered ``pet_cub`` pair (``pipeline.datasets.shared.pair``): Oxford-IIIT Pet's breeds as the primary
task, CUB's species as the auxiliary dataset's task, its images resized to Pet's ``image_size``."""
from __future__ import annotations

from pipeline.core.registry import DATASETS
from pipeline.datasets.cub.task import Cub
from pipeline.datasets.oxford_pet.task import OxfordPet
from pipeline.datasets.shared.pair import DatasetPair, pair_config, pair_split_config

NAME = "pet_cub"


@DATASETS.register(NAME)
class PetCub(DatasetPair, OxfordPet):
    """Oxford-IIIT Pet (primary: its K-shot splits, model, augmentation, metrics) with CUB batches as the auxiliary
    stream."""

    name = NAME
    primary_dataset = OxfordPet
    auxiliary_dataset = Cub
    Config = pair_config(NAME, OxfordPet, Cub)
    SplitConfig = pair_split_config(OxfordPet)
