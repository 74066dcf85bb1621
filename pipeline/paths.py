"""Where each stage reads and writes (relative to the repository root, as in dvc.yaml)."""
from pathlib import Path

PREPARED = Path("data/prepared")
SPLITS = Path("data/splits")
MODELS = Path("models")
REPORTS = Path("reports")
METRICS = REPORTS / "metrics.json"
REPORT_MD = REPORTS / "report.md"
FIGURES = REPORTS / "figures"
PLOTS = REPORTS / "plots"


def prepared_dir(dataset: str) -> Path:
    return PREPARED / dataset


def seed_dir(seed: int) -> Path:
    return MODELS / f"seed_{seed}"
