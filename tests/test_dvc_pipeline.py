"""The DVC pipeline itself, in a throw-away git + DVC copy of the repository (slow: real `dvc` runs)."""
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=repo, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def edit_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def stale_stages(repo: Path) -> set[str]:
    out = json.loads(dvc(repo, "status", "--json").stdout or "{}")
    return set(out)


@pytest.fixture(scope="module")
def pipeline_repo(repo_copy: Path) -> Path:
    def shorten(p):
        p["dataset"] = "toy2d"  # the pipeline's behaviour on the quickest dataset
        p["seeds"] = [0, 1]
        p["datasets"]["toy2d"]["train"]["steps"] = 200
    edit_params(repo_copy, shorten)
    dvc(repo_copy, "repro")
    return repo_copy


def test_repro_writes_every_output(pipeline_repo: Path):
    metrics = json.loads((pipeline_repo / "reports/metrics.json").read_text())
    assert set(metrics["test"]) == {"main_mse", "weight_error"}
    assert "per_seed" not in metrics and list(metrics["test"])[0] == "main_mse"
    assert set(json.loads((pipeline_repo / "reports/per_seed.json").read_text())["per_seed"]) == {"seed_0", "seed_1"}
    assert [p.name for p in (pipeline_repo / "data/prepared").iterdir() if p.is_dir()] == ["toy2d"]  # the selected one
    for rel in ("data/prepared/toy2d/manifest.json",
                "data/splits/aux.npy", "models/seed_1/model.pt", "models/seed_1/history.json",
                "reports/report.md", "reports/figures/task_weights.png", "reports/figures/loss_landscape.png",
                "reports/live/task_weight.tsv", "reports/live/seed_1/plots/metrics/val/main_loss.tsv",
                "reports/live/metrics.json"):
        assert (pipeline_repo / rel).is_file(), rel
    assert "Loss landscapes" in (pipeline_repo / "reports/report.md").read_text()


def test_second_repro_is_a_no_op(pipeline_repo: Path):
    assert stale_stages(pipeline_repo) == set()
    out = dvc(pipeline_repo, "repro").stdout
    assert "Running stage" not in out


def test_training_param_reruns_only_training_and_after(pipeline_repo: Path):
    edit_params(pipeline_repo, lambda p: p["datasets"]["toy2d"]["train"].update(lr=0.02))
    # the usefulness analysis trains the main task alone with the dataset's train settings, so it reads them too;
    # the report reads aux_loss_scale (τ) of that section
    assert stale_stages(pipeline_repo) == {"validate", "train", "usefulness", "report"}
    # report rebuilds the trained method from its section (e.g. ψ of a label generator), so it reads methods too
    edit_params(pipeline_repo, lambda p: p["methods"]["bilevel"].update(lr=0.02))
    assert stale_stages(pipeline_repo) == {"validate", "train", "usefulness", "report"}
    edit_params(pipeline_repo, lambda p: p["datasets"]["toy2d"]["methods"].update(bilevel={"lr": 0.03}))
    assert stale_stages(pipeline_repo) == {"validate", "train", "usefulness", "report"}
    edit_params(pipeline_repo, lambda p: p.update(method="stl"))
    assert stale_stages(pipeline_repo) == {"validate", "train", "usefulness", "evaluate", "report"}
    edit_params(pipeline_repo, lambda p: p["datasets"]["noisy_aux"]["train"].update(lr=0.5))
    assert "train" in stale_stages(pipeline_repo)  # unchanged set: noisy_aux settings are not read for toy2d
    assert stale_stages(pipeline_repo) == {"validate", "train", "usefulness", "evaluate", "report"}
    edit_params(pipeline_repo, lambda p: p["usefulness"].update(batches=4))
    assert stale_stages(pipeline_repo) == {"validate", "train", "usefulness", "evaluate", "report"}
    out = dvc(pipeline_repo, "repro").stdout
    assert "Running stage 'train'" in out
    assert "Running stage 'split'" not in out and "Running stage 'prepare" not in out
    assert json.loads((pipeline_repo / "reports/per_seed.json").read_text())["method"] == "stl"


def test_prepare_reads_only_the_selected_dataset(pipeline_repo: Path):
    edit_params(pipeline_repo, lambda p: p["datasets"]["noisy_aux"]["prepare"].update(seed=7))
    assert stale_stages(pipeline_repo) == {"validate"}  # noisy_aux is not prepared while toy2d is selected
    edit_params(pipeline_repo, lambda p: p["datasets"]["toy2d"]["prepare"].update(seed=7))
    assert stale_stages(pipeline_repo) == {"validate", "prepare"}
    edit_params(pipeline_repo, lambda p: [p["datasets"][n]["prepare"].clear() for n in ("toy2d", "noisy_aux")])
    assert stale_stages(pipeline_repo) == set()


def test_switching_dataset_prepares_it_and_switching_back_restores_from_cache(pipeline_repo: Path):
    before = tree_hash(pipeline_repo / "data/prepared/toy2d")
    train_before = yaml.safe_load((pipeline_repo / "params.yaml").read_text())["datasets"]["noisy_aux"]["train"]
    edit_params(pipeline_repo, lambda p: (p.update(dataset="noisy_aux"),
                                          p["datasets"]["noisy_aux"].update(train={"steps": 20})))
    out = dvc(pipeline_repo, "repro").stdout
    assert "Running stage 'prepare'" in out
    assert (pipeline_repo / "data/prepared/noisy_aux/manifest.json").is_file()
    edit_params(pipeline_repo, lambda p: (p.update(dataset="toy2d"), p["datasets"]["noisy_aux"].update(train=train_before)))
    out = dvc(pipeline_repo, "repro").stdout
    assert "Running stage 'prepare'" not in out and "Stage 'prepare' is cached" in out, out  # DVC's run cache
    assert tree_hash(pipeline_repo / "data/prepared/toy2d") == before
    assert stale_stages(pipeline_repo) == set()


def test_bad_params_fail_clearly_and_keep_outputs(pipeline_repo: Path):
    before = {d: tree_hash(pipeline_repo / d) for d in ("data", "models", "reports")}
    edit_params(pipeline_repo, lambda p: p.update(method="nope"))
    proc = dvc(pipeline_repo, "repro", check=False)
    assert proc.returncode != 0
    assert "method: unknown method 'nope'" in proc.stdout + proc.stderr
    assert {d: tree_hash(pipeline_repo / d) for d in before} == before
    edit_params(pipeline_repo, lambda p: p.update(method="stl"))


def test_experiments_switch_method_and_compare(pipeline_repo: Path):
    subprocess.run(["git", "add", "-A"], cwd=pipeline_repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"],
                   cwd=pipeline_repo, check=True)
    out = dvc(pipeline_repo, "exp", "run", "-S", "method=equal").stdout
    assert "Running stage 'train'" in out and "Running stage 'split'" not in out
    shown = dvc(pipeline_repo, "exp", "show", "--csv").stdout
    assert "test.main_mse.mean" in shown.splitlines()[0]
    assert any(",equal," in line for line in shown.splitlines()[1:]), shown


def test_compare_renders_one_row_per_method(pipeline_repo: Path):
    proc = subprocess.run(["python", "-m", "pipeline.compare", "--dataset", "toy2d", "--output", "cmp.md"],
                          cwd=pipeline_repo, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in (pipeline_repo / "cmp.md").read_text().splitlines() if line.startswith("| ")]
    methods = [r.split("|")[1].strip() for r in rows[1:]]
    assert methods[:2] == ["stl", "equal"], rows  # paper order; stl from the workspace, equal from the experiment
    assert all("±" in r for r in rows[1:])


def test_editing_one_dataset_package_stales_only_its_runs(pipeline_repo: Path):
    """Exact dependencies: the stages depend on the selected dataset's package, not on every dataset's code."""
    assert stale_stages(pipeline_repo) == set()
    # dataset_code reads every dataset package (a pair runs its members' code, which dvc.yaml cannot name)
    for name, stale in (("noisy_aux", {"dataset_code"}),
                        ("toy2d", {"dataset_code", "prepare", "split", "train", "evaluate", "report", "usefulness"})):
        task = pipeline_repo / f"pipeline/datasets/{name}/task.py"
        original = task.read_text()
        task.write_text(original + "\n# an edit\n")
        try:
            assert stale_stages(pipeline_repo) == stale, name
            if name == "noisy_aux":  # toy2d imports no other dataset: its dataset_code.json stays as it was
                out = dvc(pipeline_repo, "repro").stdout
                assert "Running stage 'dataset_code'" in out and out.count("Running stage") == 1, out
                assert stale_stages(pipeline_repo) == set()
        finally:
            task.write_text(original)
    dvc(pipeline_repo, "repro")
    assert stale_stages(pipeline_repo) == set()
    metric_code = pipeline_repo / "pipeline/metrics/classification.py"  # evaluate reads the metric code
    original = metric_code.read_text()
    metric_code.write_text(original + "\n# an edit\n")
    try:
        assert {"evaluate", "train"} <= stale_stages(pipeline_repo)
        assert not any(s.startswith("prepare") for s in stale_stages(pipeline_repo))
    finally:
        metric_code.write_text(original)


def test_a_pairs_stages_rerun_when_a_member_datasets_code_changes(pipeline_repo: Path):
    """pet_cub runs oxford_pet's and cub's code; dvc.yaml names only pipeline/datasets/pet_cub, and dataset_code's
    hashes of the members carry an edit of cub's code to the pair's stages."""
    from tests.conftest import SMALL_STANDINS

    def select(p, dataset):
        p["dataset"] = dataset
        p["datasets"]["pet_cub"]["prepare"] = {"auxiliary": SMALL_STANDINS["cub"]} if dataset == "pet_cub" else {}

    edit_params(pipeline_repo, lambda p: select(p, "pet_cub"))
    dvc(pipeline_repo, "repro", "prepare")
    code = json.loads((pipeline_repo / "data/dataset_code.json").read_text())
    assert code["dataset"] == "pet_cub"
    assert set(code["built_from"]) == {"pipeline/datasets/cub", "pipeline/datasets/oxford_pet"}
    assert not {"validate", "dataset_code", "prepare"} & stale_stages(pipeline_repo)
    task = pipeline_repo / "pipeline/datasets/cub/task.py"
    original = task.read_text()
    task.write_text(original + "\n# an edit\n")
    try:
        stale = stale_stages(pipeline_repo)
        assert "dataset_code" in stale and "prepare" not in stale, stale  # DVC sees the member through the file
        out = dvc(pipeline_repo, "repro", "prepare").stdout
        assert "Running stage 'dataset_code'" in out and "Running stage 'prepare'" in out, out
    finally:
        task.write_text(original)
    edit_params(pipeline_repo, lambda p: select(p, "toy2d"))
    out = dvc(pipeline_repo, "repro").stdout
    assert "Stage 'prepare' is cached" in out, out  # toy2d's dataset_code.json is as it was: DVC's run cache
    assert stale_stages(pipeline_repo) == set()


def test_a_users_raw_folder_is_a_dependency(pipeline_repo: Path):
    """data/raw/<dataset> is a dependency of prepare: a changed label in the user's files re-runs preparation."""
    from pipeline.datasets.cub.config import Config
    from pipeline.datasets.cub.standin import write_standin

    raw = pipeline_repo / "data/raw/cub"
    write_standin(raw, Config(standin_num_classes=3, standin_images_per_class=4, image_size=24))
    edit_params(pipeline_repo, lambda p: (p.update(dataset="cub"),
                                          p["datasets"]["cub"]["prepare"].update(source="path", image_size=24)))
    assert "prepare" in stale_stages(pipeline_repo)
    dvc(pipeline_repo, "repro", "prepare")
    assert "prepare" not in stale_stages(pipeline_repo)
    labels = raw / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    first_id, first_class = lines[0].split()
    lines[0] = f"{first_id} {1 if first_class != '1' else 2}"
    labels.write_text("\n".join(lines) + "\n")
    status = json.loads(dvc(pipeline_repo, "status", "--json", "prepare").stdout or "{}")
    assert any("data/raw/cub" in json.dumps(change) for change in status.get("prepare", [])), status
    edit_params(pipeline_repo, lambda p: (p.update(dataset="toy2d"), p["datasets"]["cub"]["prepare"].clear()))
    dvc(pipeline_repo, "repro")


# -- the whole params.yaml validated on every repro (issue 15) ------------------------------------------------------

def _set(path: str, value):
    def edit(p):
        *parents, last = path.split(".")
        node = p
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return edit


@pytest.mark.parametrize("edit, named", [
    (_set("foo", 1), "foo: unknown key"),
    (_set("methdo", "stl"), "methdo: unknown key"),
    (_set("datasets.toy2d.trian", {"steps": 10}), "datasets.toy2d.trian: unknown key"),
    (_set("datasets.cub.split.k_shot", -1), "datasets.cub.split.k_shot"),
    (_set("datasets.noisy_aux.prepare.input_mean", float("nan")), "datasets.noisy_aux.prepare.input_mean"),
    (_set("datasets.toy2d.prepare.sigma_main", float("inf")), "datasets.toy2d.prepare.sigma_main"),
    (_set("datasets.toy2d.train.steps", True), "datasets.toy2d.train.steps"),
    (_set("seeds", [1e23]), "seeds.0"),
    (_set("dataset", "imagenet"), "dataset: unknown dataset 'imagenet'"),
    (lambda p: p.update(method="maxl", dataset="cifar10") or p["methods"]["labels"].update(psi=[2, 3, 4]),
     "methods.labels.psi: 3 entries"),
])
def test_a_bad_value_anywhere_stops_repro_before_any_stage(pipeline_repo: Path, edit, named):
    """Even when no stage reads the key (a typo, an unselected dataset), `dvc repro` stops in `validate` with the
    key named, and data/, models/ and reports/ are byte-identical."""
    original = (pipeline_repo / "params.yaml").read_text()
    stale = stale_stages(pipeline_repo)
    before = {d: tree_hash(pipeline_repo / d) for d in ("data", "models", "reports")}
    edit_params(pipeline_repo, edit)
    try:
        proc = dvc(pipeline_repo, "repro", check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert named in out, out
        assert [line for line in out.splitlines() if line.startswith("Running stage")] == ["Running stage 'validate':"]
        assert {d: tree_hash(pipeline_repo / d) for d in before} == before
    finally:
        (pipeline_repo / "params.yaml").write_text(original)
    assert stale_stages(pipeline_repo) == stale  # the failed validation recorded nothing


def test_a_valid_edit_no_stage_reads_runs_only_validate(pipeline_repo: Path):
    """The marker's bytes do not change, so nothing downstream re-runs."""
    dvc(pipeline_repo, "repro")  # whatever earlier tests left stale
    before = {d: tree_hash(pipeline_repo / d) for d in ("data", "models", "reports")}
    edit_params(pipeline_repo, _set("datasets.cub.split.k_shot", 3))
    assert stale_stages(pipeline_repo) == {"validate"}
    out = dvc(pipeline_repo, "repro").stdout
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == ["Running stage 'validate':"]
    assert {d: tree_hash(pipeline_repo / d) for d in before} == before
    assert stale_stages(pipeline_repo) == set()


def test_an_empty_params_file_fails_in_dvc_parse_and_validate_says_why(pipeline_repo: Path):
    """DVC interpolates params.yaml into dvc.yaml (${dataset}) before any stage can run, so an empty file
    is DVC's parse error; nothing is written, and `python -m stages.validate` says what is wrong."""
    original = (pipeline_repo / "params.yaml").read_text()
    before = {d: tree_hash(pipeline_repo / d) for d in ("data", "models", "reports")}
    (pipeline_repo / "params.yaml").write_text("")
    try:
        proc = dvc(pipeline_repo, "repro", check=False)
        assert proc.returncode != 0 and "Could not find 'dataset'" in proc.stdout + proc.stderr
        assert {d: tree_hash(pipeline_repo / d) for d in before} == before
        direct = subprocess.run(["python", "-m", "stages.validate"], cwd=pipeline_repo, env=ENV, capture_output=True,
                                text=True)
        assert direct.returncode == 1 and "params.yaml: the file is empty" in direct.stderr, direct.stderr
    finally:
        (pipeline_repo / "params.yaml").write_text(original)
