"""Image helpers shared by the image datasets (CUB, CIFAR/SVHN): per-image random crops and flips, and
the per-channel z-score with statistics stored in the prepared file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pipeline.datasets.shared.base import DataError


def read_rgb(path: Path, size: int, listed_in: str, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The image at ``path`` as RGB uint8 [3, size, size]: cropped to ``box`` (left, top, right, bottom in pixels,
    clipped to the image) when given, then squashed to size x size (bilinear). A missing or unreadable file is a
    ``DataError`` naming it and the index file that lists it (``listed_in``)."""
    if not path.is_file():
        raise DataError(f"{path} is missing (listed in {listed_in})")
    try:
        with Image.open(path) as img:
            if box is None:
                img.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale while still >= size (much faster)
            rgb = img.convert("RGB")
            if box is not None:
                left, top = max(0, box[0]), max(0, box[1])
                rgb = rgb.crop((left, top, max(left + 1, min(rgb.width, box[2])),
                                max(top + 1, min(rgb.height, box[3]))))
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path} is not a readable image: {err}") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def random_crops(x: Tensor, size: int, flip: bool, generator: torch.Generator | None) -> Tensor:
    """A random ``size`` x ``size`` window of every image of ``x`` [B, C, H, W], mirrored left-right with
    probability 1/2 when ``flip``. The draws (rows, columns, flips, in that order) come from ``generator``
    on the CPU, so runs repeat on any device; only the gather runs on ``x``'s device."""
    b, _, h, w = x.shape
    oy = torch.randint(0, h - size + 1, (b,), generator=generator)
    ox = torch.randint(0, w - size + 1, (b,), generator=generator)
    mirrored = (torch.randint(0, 2, (b,), generator=generator).bool() if flip
                else torch.zeros(b, dtype=torch.bool))
    steps = torch.arange(size)
    rows = oy[:, None] + steps  # [B, size]
    cols = torch.where(mirrored[:, None], ox[:, None] + size - 1 - steps, ox[:, None] + steps)
    dev = x.device
    batch = torch.arange(b, device=dev)[:, None, None]
    # Advanced indexing on the [B, H, W, C] view picks each image's own window in one gather; the result
    # is made contiguous NCHW again because channels-last convolutions are several times slower on CPU.
    x = x.permute(0, 2, 3, 1)[batch, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]]
    return x.permute(0, 3, 1, 2).contiguous()


class ChannelNorm:
    """Per-channel z-score of uint8 images, (x / 255 − mean) / std, with the training images' statistics."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @staticmethod
    def problem(mean: np.ndarray, std: np.ndarray) -> str | None:
        """Why stored statistics are unusable, or None."""
        if mean.shape != (3,) or std.shape != (3,) or not (std > 0).all():
            return "mean/std attributes must be 3 per-channel values with std > 0"
        return None

    def __call__(self, x: Tensor) -> Tensor:
        return ((x.float() / 255.0 - self.mean.to(x.device)) / self.std.to(x.device)).contiguous()
