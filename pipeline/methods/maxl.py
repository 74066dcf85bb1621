"""Learning new auxiliary tasks with MAXL (Liu et al. 2019) and its baselines: the generated-labels task
(``generators/labels.py``) with equal weights, θ2 trained by MAXL's look-ahead (``outer/lookahead.py``),
frozen at its random initialisation (MAXL-F), or replaced by a fixed random class per sample (Random), the
human-defined finer class (Human) or the nearest prototype of the finer classes in a pre-trained embedding that
MAXL's look-ahead refines (Nearest Neighbour), all through the same blocked head of the primary network."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.methods.base import MethodSpec, NoOuterUpdate, Roles, register
from pipeline.methods.combiners.fixed import FixedWeights
from pipeline.methods.generators.labels import GeneratedLabels, LabelsConfig
from pipeline.methods.outer.lookahead import FirstOrderLookAhead, LookAheadUpdate


def labels_method(name: str, order: int, description: str, label_source: str = "generator",
                  outer: type[LookAheadUpdate] | None = None, requires: frozenset[str] = frozenset(),
                  check: Any = None) -> MethodSpec:
    """L_T = ℓ_main + ℓ_generated (equal weights); θ2 learns only when ``outer`` trains it."""

    def build(num_tasks: int, cfg: LabelsConfig, bilevel: Any, dataset: Any, data: Any, params: Any) -> Roles:
        learns = outer is not None
        labels = GeneratedLabels(cfg, dataset, data, params, label_source=label_source, learns=learns,
                                 main_loss_kind=cfg.maxl_main_loss if learns else "dataset")
        combiner = FixedWeights(1 + len(labels.generated_tasks), 1.0)  # the generated task replaces any given auxiliary
        update = outer(labels, cfg, params.train.lr) if learns else NoOuterUpdate()
        return Roles(combiner, update, labels)

    return MethodSpec(name, build, group="generated", order=order, Config=LabelsConfig, config_section="labels",
                      needs_data=True, requires=frozenset({"generated_labels"}) | requires, description=description,
                      check=check)


def check_nn_weights(cfg: LabelsConfig) -> None:
    """Before any work: the embedding network's weights file must be given and exist (it is never downloaded)."""
    if not cfg.nn_weights:
        raise ValueError("nn_weights: nearest_neighbour needs a local file with the pre-trained embedding network "
                         "(a state dict of the dataset's backbone); none is set")
    if not Path(cfg.nn_weights).is_file():
        raise ValueError(f"nn_weights: {cfg.nn_weights} does not exist (the embedding network's weights are read "
                         "from a local file, never downloaded)")


register(labels_method("random", 0, "a fixed random auxiliary class per sample", label_source="random"))
register(labels_method("maxl_frozen", 1, "MAXL-F: the label network at its random initialisation"))
register(labels_method("maxl", 2, "MAXL, second-order look-ahead", outer=LookAheadUpdate))
register(labels_method("maxl_first_order", 3, "MAXL, the reference's first-order look-ahead",
                       outer=FirstOrderLookAhead))
register(labels_method("nearest_neighbour", 5, "MAXL's Nearest Neighbour: prototypes of the finer classes in a "
                       "pre-trained embedding, refined by MAXL's look-ahead", label_source="nearest_neighbour",
                       outer=LookAheadUpdate, requires=frozenset({"finer_labels", "image_embeddings"}),
                       check=check_nn_weights))
register(labels_method("human", 6, "MAXL's Human: the human-defined finer labels as the auxiliary task",
                       label_source="human", requires=frozenset({"finer_labels"})))
