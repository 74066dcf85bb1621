"""The PASCAL-VOC12S stand-in: 128 x 96 scenes of the family's shapes (``standin_shapes``), several objects per
image, written in VOC 2012's layout (``sources.write_voc``) so that the real reader and its labelling rule read it.

Each image has a labelled object of its main class (classes balanced per split, hidden sub-classes balanced within
a class) drawn last and largest, up to ``standin_max_objects - 1`` smaller non-difficult objects of any class, and
with probability ``standin_difficult`` a faint (30 % opacity) **difficult** object of another class drawn larger
than the labelled one: the rule (largest non-difficult object) must skip it. Each object is a rendered 32-px
stand-in tile (shape, texture, its own background) scaled to its box."""
from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.core.progress import counted
from pipeline.datasets.shared.standin_shapes import STANDIN_SHAPES, render_standin, standin_styles
from pipeline.datasets.voc12s.config import Config
from pipeline.datasets.voc12s.sources import VocImages, VocObject, main_object

CANVAS = (96, 128)  # height, width: landscape, as most VOC photos
MAIN_SIZE = (48, 80)  # the labelled object's box side, px
EXTRA_SIZE = 20  # smallest box side of the other objects
DIFFICULT_OPACITY = 0.3


def _paste(canvas: np.ndarray, tile: np.ndarray, size: int, x: int, y: int, opacity: float = 1.0) -> None:
    """Blend the [3, 32, 32] tile scaled to size x size into canvas [H, W, 3] (float) at column x, row y."""
    scaled = np.asarray(Image.fromarray(tile.transpose(1, 2, 0)).resize((size, size), Image.Resampling.BILINEAR),
                        dtype=np.float64)
    region = canvas[y:y + size, x:x + size]
    region[...] = (1 - opacity) * region + opacity * scaled


def generate_voc_standin(cfg: Config) -> VocImages:
    """The stand-in scenes in memory; everything drawn from ``cfg.standin_seed``."""
    rng = np.random.default_rng(cfg.standin_seed)
    k, m = cfg.standin_num_classes, cfg.standin_subclasses
    styles = standin_styles(k, m, rng)
    names = list(STANDIN_SHAPES[:k])
    height, width = CANVAS
    plan = []  # (is_train, class, sub-class)
    for train, per_class in ((True, cfg.standin_train_per_class), (False, cfg.standin_test_per_class)):
        rows = [(train, c, int(s)) for c in range(k) for s in rng.permutation(np.arange(per_class) % m)]
        plan += [rows[i] for i in rng.permutation(len(rows))]
    images, objects, ids = [], [], []
    for i, (train, c, sub) in enumerate(counted(plan, "prepare voc12s: stand-in scenes drawn", len(plan), "images")):
        main_size = int(rng.integers(MAIN_SIZE[0], MAIN_SIZE[1] + 1))
        n_extra = int(rng.integers(0, cfg.standin_max_objects))
        difficult = bool(rng.random() < cfg.standin_difficult)
        # (class, sub-class, size, difficult) in drawing order: the difficult one behind, the labelled one on top
        layers = []
        if difficult:
            other = int((c + rng.integers(1, k)) % k)
            layers.append((other, int(rng.integers(m)), int(rng.integers(main_size + 4, height + 1)), True))
        for _ in range(n_extra):
            layers.append((int(rng.integers(k)), int(rng.integers(m)), int(rng.integers(EXTRA_SIZE, main_size - 3)),
                           False))
        layers.append((c, sub, main_size, False))
        tiles = render_standin(np.array([l[0] for l in layers]), np.array([l[1] for l in layers]), styles, rng,
                               cfg.standin_noise)
        canvas = rng.integers(70, 186, size=(1, 1, 3)) + rng.normal(0, cfg.standin_noise, (height, width, 3))
        objs = []
        for (cls, _, size, hard), tile in zip(layers, tiles):
            x, y = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
            _paste(canvas, tile, size, x, y, DIFFICULT_OPACITY if hard else 1.0)
            objs.append(VocObject(names[cls], hard, (x + 1, y + 1, x + size, y + size)))  # 1-based inclusive
        assert main_object(objs).name == names[c]  # the rule picks the labelled object by construction
        images.append(np.clip(np.rint(canvas), 0, 255).astype(np.uint8).transpose(2, 0, 1))
        objects.append(objs[::-1])  # the labelled object first in the XML, as annotators tend to
        ids.append(f"2012_{i:06d}")
    return VocImages(np.stack(images), np.array([p[0] for p in plan]),
                     {"class": np.array([p[1] for p in plan], dtype=np.int64)}, {"class": names},
                     np.array([p[2] for p in plan], dtype=np.int64), objects=objects, ids=ids)
