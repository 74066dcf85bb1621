"""The schema bases every plugin builds its ``params.yaml`` sections on. Imports nothing of the project,
so a method or dataset never imports the assembler (``pipeline.config.params``) that imports the registries."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# Every integer of params.yaml fits a signed 64-bit integer (torch and numpy read them as such); a seed (a key
# named ``seed``, ``seeds`` or ``*_seed``) lies in [0, 2**32): numpy's default_rng refuses negative seeds and
# the legacy RandomState wider ones.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
SEED_MAX = 2**32 - 1


def _is_seed(name: str) -> bool:
    return name in ("seed", "seeds") or name.endswith("_seed")


def _ints(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in _ints(v)]
    return []


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo never silently falls back to a default.

    Strict types: no coercion (``steps: true``, ``steps: 2.0`` and ``lr: "0.1"`` are errors; an integer is a
    valid float), every float finite (no key of params.yaml accepts NaN or ±inf: a key that would must say
    so and override ``allow_inf_nan``), every integer within int64, every seed within [0, 2**32). A tuple-typed
    field (YAML has only lists) sets ``Field(strict=False)``: its items stay strict.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _integers_in_range(cls, v: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        low, high = (0, SEED_MAX) if _is_seed(name) else (INT_MIN, INT_MAX)
        for i in _ints(v):
            if not low <= i <= high:
                raise ValueError(f"{i} is out of range: must lie in [{low}, {high}]")
        return v


class ParamsError(ValueError):
    """A bad ``params.yaml``; the message names the offending key."""


class SplitConfig(StrictModel):
    """The default ``datasets.<name>.split``: a seeded random partition; the rest of the data is train."""

    seed: int = Field(0, description="seed of the partition")
    aux: int = Field(20, ge=1, description="samples pre-allocated from the training data for the auxiliary set")
    val: int = Field(200, ge=1)
    test: int = Field(1000, ge=1)


class TrainConfig(StrictModel):
    steps: int = Field(500, ge=1)
    batch_size: int = Field(0, ge=0, description="0 = full batch")
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    lr_schedule: Literal["constant", "halve_midway", "cosine"] = Field(
        "constant", description="halve_midway: App. B.2 (NYUv2); cosine: App. B.3 (CIFAR, SVHN)")
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    aux_loss_scale: float = Field(1.0, gt=0, description="τ: every auxiliary loss is multiplied by it (App. B.1)")
    eval_every: int = Field(25, ge=1, description="steps between validation checks (best-on-validation model kept)")
    select_by: Literal["val_loss", "val_metric"] = Field(
        "val_loss", description="which model to keep: lowest validation main loss, or best validation main metric "
                                "(the dataset's first metric: mIoU, accuracy; as the reference trainers do)")
    log_every: int = Field(
        10, ge=1, description="steps between logged training values (history.json, the live series): L_T, the "
                              "main loss and the effective task weights are read from the device only then, and "
                              "non-finite losses are detected there too (1 = every step, as before)")
    amp: Literal["none", "bf16", "fp16"] = Field(
        "none", description="mixed precision for W's forward pass (autocast); fp16 adds a gradient scaler. The "
                            "outer updates (hypergradients, look-aheads) and validation stay in float32")
    compile: bool = Field(False, description="torch.compile the primary network's encode/decode for W's step "
                                             "(the outer updates keep the eager network: they differentiate twice)")
    checkpoint_every: int = Field(
        100, ge=0, description="steps between resumable checkpoints under models/checkpoints/ (also written on "
                               "SIGTERM/SIGINT); a re-run with the same params continues from the last one; 0 = off")


class UsefulnessConfig(StrictModel):
    """``usefulness``: settings of the `usefulness` stage (AuxiLearn Prop. 1 scores before training)."""

    solver: Literal["cg", "neumann"] = Field("cg", description="inverse-HVP solver: conjugate gradient or Neumann series")
    curvature: Literal["hessian", "gauss_newton"] = Field(
        "hessian", description="H: the main loss's Hessian (Prop. 1) or its Gauss-Newton part Jᵀ∇²_f ℓ J (positive "
        "semi-definite; equal to the Hessian for squared error on a linear model)")
    damping: float = Field(1e-3, ge=0, description="λ in (H + λI)⁻¹; > 0 for non-convex networks, 0 = exact Prop. 1")
    cg_iters: int = Field(100, ge=1, description="most CG iterations (HVPs) per batch")
    cg_tol: float = Field(1e-6, gt=0, description="CG stops at residual ‖r‖ ≤ cg_tol·‖∇L_A‖")
    neumann_steps: int = Field(200, ge=0, description="Neumann terms J: α Σ_{j≤J} (I − α(H + λI))^j ∇L_A")
    neumann_lr: float = Field(0.01, gt=0, description="Neumann step α (needs α < 2 / largest eigenvalue of H + λI)")
    batches: int = Field(8, ge=1, description="independent batch draws per seed (the score's spread: mean ± SEM)")
    batch_size: int = Field(64, ge=0, description="training samples per batch (H, ∇ℓ_main, ∇ℓ_j); 0 = all (then cos(∇ℓ_main, ·) is void at convergence)")
    aux_batch_size: int = Field(0, ge=0, description="aux-set samples per batch (∇L_A); 0 = the whole aux set")
    stl_steps: int | None = Field(None, ge=1, description="main-task-only training steps (at base_weight > 0: steps on "
                                  "L_T); null = datasets.<name>.train.steps")
    head_steps: int = Field(200, ge=0, description="steps fitting the auxiliary heads on the frozen STL trunk")
    head_lr: float = Field(0.01, gt=0, description="Adam learning rate of that fit")
    base_weight: float = Field(
        0.0, ge=0, description="φ0: the derivative is taken at φ = φ0·1; 0 = Prop. 1 (STL, heads fitted on the frozen "
        "trunk); > 0: the whole network is trained on ℓ_main + φ0·τ·Σ_j ℓ_j (τ: aux_loss_scale; 1 = Equal's objective) "
        "and H is that objective's Hessian")
