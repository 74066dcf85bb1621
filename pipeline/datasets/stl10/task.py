"""The registered ``stl10`` dataset: the image-classification family with STL-10's binary format at 96 x 96."""
from __future__ import annotations

from pipeline.core.registry import DATASETS
from pipeline.datasets.shared.image_classification import ImageClassification, generate_standin
from pipeline.datasets.shared.raw_images import RawImages
from pipeline.datasets.stl10 import config
from pipeline.datasets.stl10.sources import STL10_FORMAT, STL_SIZE


@DATASETS.register("stl10")
class Stl10(ImageClassification):
    """STL-10 (MAXL Table 1: the 5000 labelled training images, VGG-16): 96 x 96 colour images of 10 classes.

    Training crops: 96 px of the image zero-padded by 12 px (CIFAR's 4 of 32, scaled to 96; the paper does not
    say) and horizontal flips. ``train_fraction`` 0.8 keeps 20 % of the training images aside for the ``val``
    images that select the model. The default VGG-16 width (1/8) is the family's CPU stand-in size; ``width: 1``
    is the paper's network.
    """

    name = "stl10"
    raw_format = STL10_FORMAT
    crop_padding = 12
    Config = config.Config
    ModelConfig = config.ModelConfig
    SplitConfig = config.SplitConfig
    default_split = {"seed": 0, "train_fraction": 0.8, "aux_fraction": 0.025, "val": 200, "max_test": 0}
    # MAXL §4.1: SGD at lr 0.01 (momentum 0.9 and weight decay as the family). 150 steps of 32 are ~6 epochs of
    # the stand-in's 780 training images: a few CPU minutes for MAXL at 96 px.
    default_train = {"steps": 150, "batch_size": 32, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
                     "weight_decay": 5e-4, "lr_schedule": "cosine", "eval_every": 25}

    def standin(self, cfg: config.Config) -> RawImages:
        """The family's shapes with hidden sub-classes, drawn at STL-10's 96 px (the format allows no other size)."""
        return generate_standin(cfg, chunk=50, size=STL_SIZE)
