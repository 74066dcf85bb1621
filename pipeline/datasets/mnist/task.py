"""The registered ``mnist`` dataset: the image-classification family with MNIST's IDX format, grayscale, no flips."""
from __future__ import annotations

from pipeline.core.registry import DATASETS
from pipeline.datasets.mnist import config
from pipeline.datasets.mnist.sources import MNIST_FORMAT
from pipeline.datasets.mnist.standin import generate_digits
from pipeline.datasets.shared.image_classification import ImageClassification
from pipeline.datasets.shared.raw_images import RawImages


@DATASETS.register("mnist")
class Mnist(ImageClassification):
    """MNIST (MAXL Table 1: the full training set, a 2-layer network, SGD at lr 0.01): 28 x 28 grayscale digits.

    Training crops: 28 px of the image zero-padded by 2 px (shifts of up to 2 px; our choice, the paper does not
    say), no flips (digits). MAXL trains on the whole training set: ``train_fraction`` 0.8 keeps 20 % of it aside
    for the ``val`` images that select the model (MAXL reports the last epoch's test accuracy).
    """

    name = "mnist"
    raw_format = MNIST_FORMAT
    flip = False
    crop_padding = 2
    Config = config.Config
    ModelConfig = config.ModelConfig
    SplitConfig = config.SplitConfig
    default_split = {"seed": 0, "train_fraction": 0.8, "aux_fraction": 0.025, "val": 500, "max_test": 0}
    # MAXL §4.1: SGD at lr 0.01 (no momentum is said; the family's 0.9 kept), batch 64. 200 steps of 64 are ~5.5
    # epochs of the stand-in's 2340 training digits.
    default_train = {"steps": 200, "batch_size": 64, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
                     "weight_decay": 5e-4, "lr_schedule": "cosine", "eval_every": 50}

    def standin(self, cfg: config.Config) -> RawImages:
        """Synthetic digits with hidden writing styles (``pipeline.datasets.mnist.standin``)."""
        return generate_digits(cfg.standin_num_classes, cfg.standin_subclasses, cfg.standin_train_per_class,
                               cfg.standin_test_per_class, cfg.standin_noise, cfg.standin_seed)
