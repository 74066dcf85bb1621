"""``methods.dtg``: DTG-AuxL's settings. Tags as in /work/shared/papers/dtg-auxl-method-notes.md: [A] the appendix,
[C] the authors' earlier code (JTDS, MAOAL), [R] our reading (every [R] choice is a switch, its default the
notes' reading)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.core.schema import StrictModel


class DTGConfig(StrictModel):
    """``methods.dtg``: the joint generator, the lower objective and the upper level of DTG-AuxL."""

    # -- the joint generator [A §4, §5.1, §5.5; R: its form] --
    embed_dim: Literal[32, 64] = Field(32, description="m: embedding size of every input field ([A §4]: {32, 64})")
    mlp_layers: Literal[2, 3, 4] = Field(
        2, description="layers of the nonlinear term ([A §4]: {2, 3, 4}; transformer: attention blocks = layers - 1)")
    mlp_width: int = Field(0, ge=0, description="hidden width of the nonlinear MLP; 0 = 2 × embed_dim")
    terms: Literal["linear_mlp", "mlp", "mlp_mlp"] = Field(
        "linear_mlp", description="[A Table A6] linear + nonlinear term (default), nonlinear only (w/o linear), "
                                  "two nonlinear terms (two nonlinear)")
    nonlinear: Literal["mlp", "transformer"] = Field(
        "mlp", description="[A Table A2] the nonlinear term: an MLP over the concatenated field embeddings, or "
                           "self-attention over the fields as tokens")
    transformer_heads: int = Field(4, ge=1, description="nonlinear: transformer: attention heads (divide embed_dim)")
    generate_data: bool = Field(
        True, description="[A Table A4] false = w/o data: no feature generator; the label generator relabels the "
                          "primary input (its own labels only) and the generated head reads its own feature")
    use_aux_labels: bool = Field(
        True, description="[A Table A3] false = w/o aux: the label generator reads no auxiliary label")
    pair_labels: bool = Field(
        True, description="[R] with generate_data, the label generator also reads the paired sample's labels "
                          "(the generated feature mixes both samples)")
    auxiliaries: list[str] | None = Field(
        None, description="given auxiliaries used (lower objective and label generator), by task name, e.g. "
                          "[has_belly_color::white] on the real CUB ([A §4.1]); null = all")
    # -- the generated label [A §5.4; R] --
    label_form: Literal["softmax_bias", "mean"] = Field(
        "softmax_bias", description="[R] softmax(s + β·b) (default) or (b + softmax(s)) / 2; b = the label bias")
    label_bias: Literal["own", "pair"] = Field(
        "own", description="[R] b = one-hot of the sample's primary label (own), or the mean of both paired samples' "
                           "(pair: the appendix's '3 peaks'; with generate_data only)")
    beta: float = Field(5.0, ge=0, description="[R] β of softmax(s + β·b)")
    # -- the lower objective [A Alg. 1; R: learned weights] --
    learn_weights: bool = Field(
        True, description="[R] L_p + Σ w_k L_ak + w_g L_g with w = softplus(ω), ω in φ (init w = 1); false = all 1")
    # -- the upper level [A Alg. 1, §2, §4; C] --
    hyper_every: int = Field(20, ge=1, description="N: lower steps between upper steps ([A §4]: {20, 30})")
    neumann_steps: int = Field(3, ge=0, description="n: terms of the truncated Neumann series ([A]: 3)")
    neumann_lr: float | None = Field(
        None, gt=0, description="[C] α scaling each Hessian-vector product; null = the dataset's train.lr (JTDS)")
    upper_lr: float = Field(1e-2, gt=0, description="φ's Adam learning rate ([A §4.1]: 1e-2)")
    max_hypergrad_norm: float | None = Field(
        10.0, gt=0, description="[C] clip of the upper gradient, in Alg. 1's units (no leading α); null = never")
    upper_batch: int = Field(0, ge=0, description="batch of D'_p = reorder(D_p) per upper step; 0 = train.batch_size")
    hessian_batch: Literal["lower", "fresh"] = Field(
        "lower", description="batch of L_t in the Hessian and mixed terms: the lower step's batch b_τ (with its "
                             "pairing), or [C] a fresh training batch (then drawn from D'_p's stream too)")
    # -- instance regularisation [A §5.4; R: its form] --
    instance_reg: bool = Field(True, description="the explicit instance-regularisation term (false: A5's w/o)")
    reg_kind: Literal["target", "diversity"] = Field(
        "target", description="[R] (a) target: λ·mean_i KL(t_i ‖ ŷ_i), t_i the label bias b_i normalised; "
                              "(b) diversity: λ·Σ_k m̄_k log m̄_k, m̄ the batch mean of softmax(s) (MAXL's entropy)")
    reg_weight: float = Field(0.1, ge=0, description="λ of the instance regularisation")
    diagnose_every: int = Field(1, ge=1, description="lower steps between mode-collapse diagnostics (1: every batch)")

    @field_validator("auxiliaries")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("must name at least one auxiliary, each once (null = all)")
        return v
