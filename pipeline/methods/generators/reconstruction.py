"""Hand-designed self-supervised auxiliaries for point clouds (AuxiLearn App. C.9, Table 7 baselines).

Both add one per-point reconstruction head (``aux_outputs`` = 3: an xyz per point) and train it to
recover the clean shape from a corrupted copy, through the same shared trunk as the main task:

- ``dae``: denoising auto-encoding, the input jittered with N(0, σ²) per coordinate (σ = 0.01).
- ``rs``: reconstructing space (Sauder & Sievers, 2019): the shape's bounding cube is cut into g³
  voxels whose contents are moved to a random permutation of the voxels; the head predicts each
  point's original position.

L_T = ℓ_main + w · ℓ_rec with a fixed weight ratio w (``methods.reconstruction.aux_weight``). The main
loss is computed on the clean input; the corruption draws from torch's generator, seeded per run.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from pipeline.core.schema import StrictModel
from pipeline.datasets.shared.base import reduce_pixels
from pipeline.methods.base import Batch, MethodSpec, NoOuterUpdate, Roles, TaskGenerator, register
from pipeline.methods.combiners.fixed import FixedWeights


class ReconstructionConfig(StrictModel):
    aux_weight: float = Field(1.0, ge=0, description="w: fixed weight of the reconstruction loss")
    noise_std: float = Field(0.01, gt=0, description="DAE: σ of the Gaussian jitter")
    grid: int = Field(3, ge=2, description="RS: voxels per axis of the shuffled bounding cube")


def jitter(points: Tensor, std: float) -> Tensor:
    return points + std * torch.randn_like(points)


def shuffle_regions(points: Tensor, grid: int) -> Tensor:
    """[B, 3, N] -> the same shapes with their g³ voxels' contents moved to a random permutation of the voxels."""
    lo = points.amin(2, keepdim=True)
    size = (points.amax(2, keepdim=True) - lo).amax(1, keepdim=True).clamp_min(1e-9) / grid  # cubic voxels
    cell = ((points - lo) / size).floor().clamp(0, grid - 1).long()  # [B, 3, N]
    cell_id = (cell[:, 0] * grid + cell[:, 1]) * grid + cell[:, 2]  # [B, N]
    perm = torch.argsort(torch.rand(points.shape[0], grid**3, device=points.device), dim=1)
    target = perm.gather(1, cell_id)  # [B, N]: the voxel each point's region moves to
    target_cell = torch.stack([target // grid**2, (target // grid) % grid, target % grid], dim=1)
    return points + (target_cell - cell).to(points.dtype) * size


class Reconstruction(TaskGenerator):
    """A per-point reconstruction head (3 outputs: an xyz per point) trained to recover the clean shape from
    a copy corrupted by ``corruption``; the main loss is on the clean input. Replaces the given auxiliaries."""

    generated_tasks = ("reconstruction",)

    def __init__(self, cfg: ReconstructionConfig, corruption: Literal["dae", "rs"], dataset: Any, data: Any) -> None:
        super().__init__()
        if data.inputs.dim() != 3 or data.inputs.shape[1] != 3:
            raise ValueError(f"method {corruption}: needs point clouds [N, 3, points]; "
                             f"dataset {dataset.name} has inputs {tuple(data.inputs.shape)}")
        self.cfg = cfg
        self.corruption = corruption

    def head_outputs(self) -> int:
        return 3

    def corrupt(self, points: Tensor) -> Tensor:
        if self.corruption == "dae":
            return jitter(points, self.cfg.noise_std)
        return shuffle_regions(points, self.cfg.grid)

    def batch_losses(self, model: nn.Module, dataset: Any, batch: Batch, track_hparams: bool = False
                     ) -> tuple[Tensor, Tensor]:
        """[B, 2]: the main loss on the clean input and the reconstruction loss of the corrupted one."""
        z = model.encode(batch.x)
        main = reduce_pixels(dataset.per_task_losses(model.decode(z)[0], batch.y))[:, :1]
        rebuilt = model.decode(model.encode(self.corrupt(batch.x)))[1]
        rec = ((rebuilt - batch.x) ** 2).sum(1).mean(1)  # squared distance per point, averaged over points
        return torch.cat([main, rec[:, None]], dim=1), z


def reconstruction_method(corruption: Literal["dae", "rs"], order: int, description: str) -> MethodSpec:
    """L_T = ℓ_main + w · ℓ_rec with the fixed ratio w = ``aux_weight``."""

    def build(num_tasks: int, cfg: ReconstructionConfig, bilevel: Any, dataset: Any, data: Any, params: Any
              ) -> Roles:
        generator = Reconstruction(cfg, corruption, dataset, data)
        return Roles(FixedWeights(1 + len(generator.generated_tasks), cfg.aux_weight), NoOuterUpdate(), generator)

    return MethodSpec(corruption, build, group="self_supervised", order=order, Config=ReconstructionConfig,
                      config_section="reconstruction", needs_data=True, requires=frozenset({"point_clouds"}),
                      description=description)


register(reconstruction_method("dae", 0, "denoising auto-encoding of jittered points"))
register(reconstruction_method("rs", 1, "reconstructing space: undo a shuffle of the shape's voxels"))
