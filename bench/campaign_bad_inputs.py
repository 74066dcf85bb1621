"""Campaign of bad params.yaml inputs (issue 15): each one through the `validate` stage, a sample through a real
`python -m stages.validate` process and through a real `dvc repro` in a throw-away git + DVC copy.

A case behaves well when the command exits non-zero with one message (no traceback) naming the key (or the file),
and data/, models/ and reports/ are byte-identical afterwards.

    OMP_NUM_THREADS=1 python -m bench.campaign_bad_inputs                  # every case in-process, samples as below
    OMP_NUM_THREADS=1 python -m bench.campaign_bad_inputs --processes 0 --dvc 0   # in-process only (seconds)

Prints one line per case that misbehaved, then ``bad inputs tried N / behaved well M``.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config.params import default_params_yaml  # noqa: E402
from pipeline.core.registry import DATASETS, METHODS  # noqa: E402

DEFAULTS: dict = yaml.safe_load(default_params_yaml())


@dataclass
class Case:
    name: str
    named: str  # what the message must contain (the key, or the file and the reason)
    text: str  # the params.yaml written
    dvc_ok: bool = True  # DVC can interpolate dvc.yaml with it (else DVC's own parse error comes first)


def leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict) and tree:
        return [leaf for k, v in tree.items() for leaf in leaves(v, f"{prefix}.{k}" if prefix else k)]
    return [(prefix, tree)]


def sections(tree: Any, prefix: str = "") -> list[str]:
    """Every mapping that holds at least one scalar (a section of params.yaml)."""
    out = []
    if isinstance(tree, dict):
        if any(not isinstance(v, dict) for v in tree.values()) and prefix:
            out.append(prefix)
        for k, v in tree.items():
            out += sections(v, f"{prefix}.{k}" if prefix else k)
    return out


def get(tree: dict, path: str) -> Any:
    for key in path.split("."):
        tree = tree[key]
    return tree


def edited(path: str, value: Any, base: dict | None = None) -> str:
    params = copy.deepcopy(base or DEFAULTS)
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return yaml.safe_dump(params, sort_keys=False)


def with_top(**top: Any) -> dict:
    params = copy.deepcopy(DEFAULTS)
    params.update(top)
    return params


def build_cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    all_leaves = leaves(DEFAULTS)
    kinds = {path: type(v) for path, v in all_leaves}

    # -- 1. typos at every level ---------------------------------------------------------------------------------
    for key, value in (("foo", 1), ("methdo", "stl"), ("seed", 0), ("datasett", "toy2d"), ("thread", 2)):
        add(Case(f"typo {key}", f"{key}: unknown key", edited(key, value)))
    for ds in DEFAULTS["datasets"]:
        add(Case(f"typo datasets.{ds}.trian", f"datasets.{ds}.trian: unknown key", edited(f"datasets.{ds}.trian",
                                                                                          {"steps": 10})))
        first = next(iter(DEFAULTS["datasets"][ds]["prepare"]))
        add(Case(f"typo datasets.{ds}.prepare.{first}x", f"datasets.{ds}.prepare.{first}x: unknown key",
                 edited(f"datasets.{ds}.prepare.{first}x", DEFAULTS["datasets"][ds]["prepare"][first])))
    for key in ("datasets.cub.split.kshot", "datasets.nyuv2.model.widht", "datasets.toy2d.model.width",
                "datasets.svhn.train.stesp"):
        add(Case(f"typo {key}", f"{key}: unknown key", edited(key, 3)))
    for section, values in DEFAULTS["methods"].items():
        first = next(iter(values))
        add(Case(f"typo methods.{section}.{first}_", f"methods.{section}.{first}_: unknown key",
                 edited(f"methods.{section}.{first}_", values[first])))
    add(Case("typo methods.lables", "methods.lables: unknown key", edited("methods.lables", {"psi": 5})))
    add(Case("typo usefulness.dampng", "usefulness.dampng: unknown key", edited("usefulness.dampng", 0.1)))
    add(Case("typo datasets.toy2d.methods.bilevl", "bilevl: unknown method section",
             edited("datasets.toy2d.methods.bilevl", {"lr": 0.1})))
    add(Case("typo datasets.cub.methods.bilevel.lrr", "bilevel: unknown key lrr",
             edited("datasets.cub.methods.bilevel.lrr", 0.1)))
    add(Case("unknown dataset section datasets.toy3d", "datasets.toy3d: unknown key",
             edited("datasets.toy3d", copy.deepcopy(DEFAULTS["datasets"]["toy2d"]))))

    # -- 2. NaN and ±inf in every float --------------------------------------------------------------------------
    specials = (math.nan, math.inf, -math.inf)
    floats = [path for path, kind in kinds.items() if kind is float]
    for i, path in enumerate(floats):
        value = specials[i % 3]
        add(Case(f"{value} {path}", path, edited(path, value)))
    add(Case("nan in a list datasets.toy2d.prepare.w_main", "datasets.toy2d.prepare.w_main.0",
             edited("datasets.toy2d.prepare.w_main", [math.nan, 1.0])))
    add(Case("inf as a per-dataset override", "bilevel.lr", edited("datasets.toy2d.methods.bilevel",
                                                                   {"lr": math.inf})))
    for path in ("methods.bilevel.neumann_lr", "methods.bilevel.max_hypergrad_norm", "methods.auxilearn.init_range",
                 "methods.labels.lookahead_lr", "datasets.cifar10.model.width", "usefulness.stl_steps"):
        add(Case(f"nan in optional/union {path}", path, edited(path, math.nan)))

    # -- 3. coercions: bool -> int, float -> int, str -> number, int -> bool -------------------------------------
    for section in sections(DEFAULTS):
        node = get(DEFAULTS, section)
        ints = [k for k, v in node.items() if type(v) is int]
        nums = [k for k, v in node.items() if type(v) is float]
        bools = [k for k, v in node.items() if type(v) is bool]
        if ints:
            add(Case(f"bool for int {section}.{ints[0]}", f"{section}.{ints[0]}", edited(f"{section}.{ints[0]}", True)))
            add(Case(f"float for int {section}.{ints[-1]}", f"{section}.{ints[-1]}",
                     edited(f"{section}.{ints[-1]}", float(node[ints[-1]]) + 0.5)))
        if nums:  # a quoted number ("0.5": PyYAML quotes it), which lax types would have converted
            add(Case(f"string for float {section}.{nums[0]}", f"{section}.{nums[0]}",
                     edited(f"{section}.{nums[0]}", "0.5")))
        if bools:
            add(Case(f"int for bool {section}.{bools[0]}", f"{section}.{bools[0]}", edited(f"{section}.{bools[0]}", 1)))
    add(Case("steps: true", "datasets.toy2d.train.steps", edited("datasets.toy2d.train.steps", True)))
    add(Case("psi: true", "methods.labels.psi", edited("methods.labels.psi", True)))
    add(Case("seeds: 0 (not a list)", "seeds", edited("seeds", 0)))
    add(Case("method: 3", "method", edited("method", 3)))

    # -- 4. integers out of range ---------------------------------------------------------------------------------
    add(Case("seeds: [1e23]", "seeds", edited("seeds", [1e23])))
    add(Case("seeds: [10**23]", "seeds", edited("seeds", [10**23])))
    add(Case("seeds: [-1]", "seeds", edited("seeds", [-1])))
    add(Case("seeds: [0, 0]", "seeds", edited("seeds", [0, 0])))
    for path, kind in kinds.items():
        if kind is int and path.rsplit(".", 1)[-1].endswith("seed"):
            add(Case(f"negative seed {path}", path, edited(path, -1)))
    for path in ("datasets.toy2d.train.steps", "datasets.cub.prepare.standin_images_per_class", "threads",
                 "methods.mgda.max_iter"):
        add(Case(f"2**70 {path}", path, edited(path, 2**70)))
    for path, value in (("datasets.toy2d.train.steps", 0), ("threads", 0), ("datasets.toy2d.train.batch_size", -1),
                        ("methods.bilevel.hyper_every", 0), ("datasets.nyuv2.model.stages", 9),
                        ("methods.auxilearn.kernel_size", 4), ("datasets.toy2d.train.momentum", 1.0)):
        add(Case(f"out of bounds {path}={value}", path, edited(path, value)))

    # -- 5. incompatible pairs ------------------------------------------------------------------------------------
    for name, spec in METHODS.items():
        misfit = next((d for d, cls in DATASETS.items() if spec.missing(cls)), None)
        if misfit is not None:
            add(Case(f"method {name} on {misfit}", f"method {name} needs", yaml.safe_dump(
                with_top(method=name, dataset=misfit), sort_keys=False)))
    for ds, groups in (("cifar10", 10), ("svhn", 10), ("cifar100", 10), ("shapenet_part", 6)):
        params = with_top(method="maxl", dataset=ds)
        params["methods"]["labels"]["psi"] = [2, 3, 4]
        if "labels" in params["datasets"][ds]["methods"]:  # the dataset's own ψ wins: make that one wrong
            params["datasets"][ds]["methods"]["labels"]["psi"] = [2, 3, 4]
        add(Case(f"maxl psi [2,3,4] on {ds}", "labels.psi: 3 entries", yaml.safe_dump(params, sort_keys=False)))
    params = with_top(method="auxilearn_labels", dataset="cifar100")
    params["datasets"]["cifar100"]["prepare"]["primary_level"] = "coarse"
    params["datasets"]["cifar100"]["methods"]["labels"] = {"psi": [2] * 10}
    add(Case("psi of 10 on cifar100 coarse (5 groups)", "datasets.cifar100.methods.labels.psi",
             yaml.safe_dump(params, sort_keys=False)))
    add(Case("toy2d sigma_main <= sigma_aux", "sigma_main must be larger",
             edited("datasets.toy2d.prepare.sigma_main", 0.5)))
    add(Case("toy2d split leaves no training data", "leaves no training data",
             edited("datasets.toy2d.split.test", 1250)))
    add(Case("cifar10 resnet18 with width", "datasets.cifar10.model", edited("datasets.cifar10.model",
                                                                            {"backbone": "resnet18", "width": 0.5})))
    add(Case("cub pretrained weights without resnet18", "datasets.cub.model",
             edited("datasets.cub.model.pretrained_weights", "w.pth")))

    # -- 6. selection ---------------------------------------------------------------------------------------------
    add(Case("dataset: mnist", "dataset: unknown dataset 'mnist'", edited("dataset", "mnist")))
    add(Case("method: magic", "method: unknown method 'magic'", edited("method", "magic")))
    add(Case("device: tpu", "device", edited("device", "tpu")))

    # -- 7. bad values in datasets that are not selected ----------------------------------------------------------
    for path, value in (("datasets.cub.split.k_shot", -1), ("datasets.cifar10.split.train_fraction", 0.0),
                        ("datasets.nyuv2.split.val_fraction", 1.5), ("datasets.shapenet_part.prepare.standin_categories", 9),
                        ("datasets.cub.prepare.standin_attribute_noise", 0.7), ("datasets.noisy_aux.prepare.num_samples", 2),
                        ("datasets.svhn.model.backbone", "lenet"), ("datasets.cifar100.prepare.primary_level", "medium"),
                        ("datasets.nyuv2.prepare.image_size", [1, 40])):
        add(Case(f"unselected {path}={value}", path.rsplit(".", 1)[0], edited(path, value)))

    # -- 8. whole files -------------------------------------------------------------------------------------------
    for label, text in (("empty file", ""), ("only a comment", "# nothing\n"), ("document marker only", "---\n")):
        add(Case(label, "params.yaml: the file is empty", text, dvc_ok=False))
    for label, text in (("a list", "- a\n- b\n"), ("a scalar", "42\n"), ("a string", "hello\n")):
        add(Case(f"top level is {label}", "params.yaml: the top level must be a mapping", text, dvc_ok=False))
    add(Case("invalid YAML", "params.yaml: not valid YAML", "method: [unclosed\n", dvc_ok=False))
    add(Case("tab indentation", "params.yaml: not valid YAML", "datasets:\n\ttoy2d: {}\n", dvc_ok=False))
    return cases


# -- running -------------------------------------------------------------------------------------------------------

SENTINELS = {"data/params_valid.txt": b"valid\n", "data/prepared/toy2d/data.npz": b"old data",
             "data/splits/train.npy": b"old split", "models/seed_0/model.pt": b"old model",
             "reports/metrics.json": b"{}"}


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for top in ("data", "models", "reports"):
        for p in sorted((root / top).rglob("*")):
            if p.is_file() and "raw" not in p.relative_to(root).parts[:2]:
                h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def judge(case: Case, code: int, output: str, same: bool) -> str | None:
    """None when the case behaved well, else why not."""
    if code == 0:
        return "exit 0"
    if "Traceback" in output:
        return "traceback"
    if sum(line.startswith(("Error:", "ERROR:")) for line in output.splitlines()) != 1:
        return "not one message"
    # a per-dataset override is named as datasets.<name>.methods: <section>.<key> (the override, then its key)
    named = case.named
    if named.startswith("datasets.") and ".methods." in named:
        named = named.replace(".methods.", ".methods: ", 1)
    if case.named not in output and named not in output:
        return f"message does not name {case.named!r}"
    if not same:
        return "outputs changed"
    return None


def workspace(root: Path, case: Case) -> Path:
    ws = Path(tempfile.mkdtemp(dir=root))
    for rel, content in SENTINELS.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(content)
    (ws / "params.yaml").write_text(case.text)
    return ws


def run_in_process(case: Case, root: Path) -> tuple[int, str, bool]:
    from click.testing import CliRunner

    from stages import validate

    ws = workspace(root, case)
    before = tree_hash(ws)
    result = CliRunner().invoke(validate.main, ["--params", str(ws / "params.yaml"),
                                                "--marker", str(ws / "data/params_valid.txt")])
    output = result.output + ("".join(__import__("traceback").format_exception(result.exc_info[1]))
                              if result.exc_info and not isinstance(result.exc_info[1], SystemExit) else "")
    return result.exit_code, output, tree_hash(ws) == before


def run_process(case: Case, root: Path) -> tuple[int, str, bool]:
    ws = workspace(root, case)
    before = tree_hash(ws)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "stages.validate"], cwd=ws, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, tree_hash(ws) == before


def dvc_copy(root: Path) -> Path:
    """A git + DVC copy of the repository's tracked (and untracked, not ignored) files, no outputs."""
    dest = root / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    (dest / "dvc.lock").unlink(missing_ok=True)
    for rel, content in SENTINELS.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(content)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def run_dvc(case: Case, repo: Path) -> tuple[int, str, bool]:
    before = tree_hash(repo)
    (repo / "params.yaml").write_text(case.text)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    ran = [line for line in out.splitlines() if line.startswith("Running stage")]
    if ran not in ([], ["Running stage 'validate':"]):
        out += f"\n[campaign: stages other than validate ran: {ran}]"
        return proc.returncode, out + "\nTraceback (stages ran)", False
    # DVC prints the stage's message and then its own "failed to reproduce" line: keep the stage's for judging
    lines = [line for line in out.splitlines() if not line.startswith("ERROR: failed to reproduce")]
    return proc.returncode, "\n".join(lines), tree_hash(repo) == before


@click.command()
@click.option("--processes", default=6, show_default=True, help="cases also run as `python -m stages.validate`")
@click.option("--dvc", "dvc_cases", default=6, show_default=True, help="cases also run through `dvc repro`")
@click.option("--verbose", is_flag=True, help="print every case's message")
def main(processes: int, dvc_cases: int, verbose: bool) -> None:
    cases = build_cases()
    assert len({c.name for c in cases}) == len(cases), "duplicate case names"
    root = Path(tempfile.mkdtemp(prefix="campaign_"))
    tried = well = 0
    try:
        step = max(1, len(cases) // max(processes, 1))
        process_sample = {c.name for c in cases[::step][:processes]} if processes else set()
        issue = ["typo foo", "typo methdo", "typo datasets.toy2d.trian", "unselected datasets.cub.split.k_shot=-1",
                 "steps: true", "seeds: [1e23]", "maxl psi [2,3,4] on cifar10", "dataset: mnist"]
        dvc_sample = [c for c in cases if c.name in issue[:dvc_cases] and c.dvc_ok]
        repo = dvc_copy(root) if dvc_sample else None
        # (case, how, runner, where): every case in-process, a sample also as a process and through dvc repro
        plan = [(case, "validate", run_in_process, root) for case in cases]
        plan += [(case, "process", run_process, root) for case in cases if case.name in process_sample]
        plan += [(case, "dvc repro", run_dvc, repo) for case in dvc_sample]
        for case, how, runner, where in plan:
            code, output, same = runner(case, where)
            why = judge(case, code, output, same)
            tried += 1
            well += why is None
            if why or verbose:
                print(f"[{how}] {case.name}: {why or 'ok'}\n    " + output.strip().replace("\n", "\n    "))
        if repo is not None:
            empty = Case("empty file", "datasets", "", dvc_ok=False)
            code, output, same = run_dvc(empty, repo)
            print(f"[dvc repro, not counted] empty params.yaml: exit {code}, outputs "
                  f"{'unchanged' if same else 'CHANGED'}; DVC parses dvc.yaml first: {output.strip()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"cases {len(cases)} (in-process validate), {min(processes, len(cases))} also as a process, "
          f"{len(dvc_sample)} also through dvc repro")
    print(f"bad inputs tried {tried} / behaved well {well}")
    sys.exit(0 if tried == well else 1)


if __name__ == "__main__":
    main()
