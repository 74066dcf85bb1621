"""The registered ``cifar10_cifar100`` pair (``pipeline.datasets.shared.pair``): CIFAR-10's 10 classes as the
primary task, CIFAR-100's (its ``primary_level``, fine by default) as the auxiliary dataset's task. The CIFAR-100
stand-in draws from its own seed (1), so its images are not CIFAR-10's stand-in images (the same shape
families, other colours and textures: a related task)."""
from __future__ import annotations

from pipeline.core.registry import DATASETS
from pipeline.datasets.cifar10.task import Cifar10
from pipeline.datasets.cifar100.task import Cifar100
from pipeline.datasets.shared.pair import DatasetPair, pair_config, pair_split_config

NAME = "cifar10_cifar100"


@DATASETS.register(NAME)
class Cifar10Cifar100(DatasetPair, Cifar10):
    """CIFAR-10 (primary: its splits, model, augmentation, metrics) with CIFAR-100 batches as the auxiliary stream."""

    name = NAME
    primary_dataset = Cifar10
    auxiliary_dataset = Cifar100
    Config = pair_config(NAME, Cifar10, Cifar100, {"standin_seed": 1})
    SplitConfig = pair_split_config(Cifar10)
