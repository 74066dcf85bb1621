"""Dataset registry: ``DATASETS.get(name)`` returns the dataset's class (see ``base.Dataset``)."""
from pipeline.datasets.base import DataError, Dataset, TaskData
from pipeline.registry import Registry

DATASETS: Registry[type[Dataset]] = Registry("dataset")

from pipeline.datasets import synthetic  # noqa: E402,F401  (registers toy2d, noisy_aux)
from pipeline.datasets import cub  # noqa: E402,F401  (registers cub)
from pipeline.datasets import cifar  # noqa: E402,F401  (registers cifar10, cifar100, svhn)
from pipeline.datasets import nyuv2  # noqa: E402,F401  (registers nyuv2)
from pipeline.datasets import shapenet  # noqa: E402,F401  (registers shapenet_part)

__all__ = ["DATASETS", "DataError", "Dataset", "TaskData"]
