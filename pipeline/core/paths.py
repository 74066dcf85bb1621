"""Where each stage reads and writes (relative to the repository root, as in dvc.yaml)."""
from pathlib import Path

PREPARED = Path("data/prepared")
DATASET_CODE = Path("data/dataset_code.json")  # hashes of the other datasets' code the selected one runs
SPLITS = Path("data/splits")
MODELS = Path("models")
REPORTS = Path("reports")
METRICS = REPORTS / "metrics.json"  # the summary: test mean and SEM per metric (main first), steps, seeds, device
PER_SEED = REPORTS / "per_seed.json"  # validation summaries and per-seed values: an out, not a DVC metric
REPORT_MD = REPORTS / "report.md"
FIGURES = REPORTS / "figures"
PLOTS = REPORTS / "plots"
TIMINGS = REPORTS / "timings.json"  # wall-clock epoch times of the last train: beside, not in, the DVC outputs


def prepared_dir(dataset: str) -> Path:
    return PREPARED / dataset


def seed_dir(seed: int) -> Path:
    return MODELS / f"seed_{seed}"


def swapped_outputs() -> list[Path]:
    """What the stages write atomically (folders replaced whole by ``pipeline.core.io.atomic_dir``, files by
    ``atomic_path``), every prepared dataset's folder included (found from what is in data/prepared/, its
    ``.<name>.old`` and ``.<name>.<pid>-<random>.tmp`` entries too, so this module needs no registry)."""
    prepared: set[Path] = set()
    if PREPARED.is_dir():
        for entry in PREPARED.iterdir():
            name = entry.name
            if not name.startswith(".") and entry.is_dir():
                prepared.add(entry)
            elif name.startswith(".") and name.endswith((".old", ".tmp")) and "." in name[1:]:
                prepared.add(PREPARED / name[1:].split(".")[0])
    return [DATASET_CODE, MODELS, SPLITS, FIGURES, PLOTS, METRICS, PER_SEED, REPORT_MD, TIMINGS, *sorted(prepared)]
