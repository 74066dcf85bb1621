"""Fault campaign (issue 15): inject faults into stages run as real processes, in temporary copies of a tiny
workspace, and check that each one is survived with no leftovers.

    OMP_NUM_THREADS=1 python bench/campaign_faults.py            # every case (about 10 minutes on 1 core)
    OMP_NUM_THREADS=1 python bench/campaign_faults.py -k sigkill # the cases whose name contains "sigkill"

A workspace (toy2d, 2 seeds, 60 steps; cub prepared with its stand-in for the prepare faults) is built once
with ``python -m stages.<stage>``; every case works on a fresh copy. "Survived" means:
  * a caught signal (SIGTERM, SIGINT): exit 128 + signal, no temporaries or old copies anywhere, and data/,
    models/, reports/ byte-identical to before;
  * SIGKILL (cannot be caught): the outputs byte-identical right after, and the next start of a stage removes
    what the killed process left, outputs still byte-identical;
  * a failure or bad intermediate: exit 1 with one "Error: " line naming the file or folder, no traceback,
    outputs byte-identical, no leftovers;
  * identical runs: byte-identical models/.
Printed: one line per case with what it checked, then "faults injected N / survived with no leftovers M".
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
PARAMS = {"dataset": "toy2d", "method": "auxilearn_linear", "seeds": [0, 1], "device": "cpu",
          "datasets": {"toy2d": {"train": {"steps": 60, "eval_every": 20}}}}
OUTPUTS = ("data", "models", "reports")
STEPS_LONG = 4000  # a train run long enough to be interrupted at a chosen point (about 6 s a seed)


# --- the workspace ------------------------------------------------------------------------------------------

def run_stage(ws: Path, stage: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{stage}", *args], cwd=ws, env=env or ENV,
                          capture_output=True, text=True)


def run_python(ws: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ws, env=ENV, capture_output=True, text=True)


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}


def _is_debris(part: str) -> bool:
    return part.startswith(".") and part.endswith((".tmp", ".old"))


def snapshot(ws: Path, debris: bool = True) -> dict[str, bytes]:
    """data/, models/ and reports/ byte for byte; ``debris=False`` leaves out temporaries and old copies."""
    return {p.relative_to(ws).as_posix(): p.read_bytes()
            for top in OUTPUTS if (ws / top).exists() for p in sorted((ws / top).rglob("*"))
            if p.is_file() and (debris or not any(_is_debris(part) for part in p.relative_to(ws).parts))}


def leftovers(ws: Path) -> list[str]:
    return sorted(p.relative_to(ws).as_posix()
                  for folder in (ws, ws / "data", ws / "data/prepared", ws / "reports") if folder.is_dir()
                  for p in folder.iterdir() if p.name.endswith((".tmp", ".old")))


def diff(a: dict[str, bytes], b: dict[str, bytes]) -> str:
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return "identical" if not changed else f"{len(changed)} differ: {', '.join(changed[:4])}"


def build(root: Path) -> Path:
    ws = root / "base"
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    long = json.loads(json.dumps(PARAMS))
    long["datasets"]["toy2d"]["train"]["steps"] = STEPS_LONG
    (ws / "long.yaml").write_text(yaml.safe_dump(long))
    for stage, args in (("prepare", ["--dataset", "toy2d"]), ("prepare", ["--dataset", "cub"]), ("split", []),
                        ("train", []), ("evaluate", []), ("report", [])):
        result = run_stage(ws, stage, *args)
        if result.returncode:
            raise SystemExit(f"building the workspace failed at {stage}:\n{result.stderr}")
    return ws


# --- cases ----------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    checks: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, what: str, ok: bool) -> None:
        self.checks.append((what, bool(ok)))

    @property
    def survived(self) -> bool:
        return bool(self.checks) and all(ok for _, ok in self.checks)


CASES: dict[str, Callable[[Path], Outcome]] = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


def _kill_when(ws: Path, cmd: list[str], ready: Callable[[], bool], signum: int, timeout: float = 300
               ) -> tuple[int, bool]:
    """Start ``cmd``, send ``signum`` once ``ready()`` holds; return (exit status, whether ready was reached)."""
    proc = subprocess.Popen(cmd, cwd=ws, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reached, deadline = False, time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            reached = True
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signum)
    proc.wait()
    rc = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    return rc, reached


def _glob(ws: Path, pattern: str, at_least: int = 1) -> Callable[[], bool]:
    return lambda: len(list(ws.glob(pattern))) >= at_least


TRAIN_LONG = [sys.executable, "-m", "stages.train", "--params", "long.yaml"]
PREPARE_CUB = [sys.executable, "-m", "stages.prepare", "--dataset", "cub"]
REPORT = [sys.executable, "-m", "stages.report"]
KILL_POINTS = {
    "train_seed0_running": (TRAIN_LONG, ".models.*.tmp", 1),
    "train_seed0_finished": (TRAIN_LONG, ".models.*.tmp/seed_0/history.json", 1),
    "prepare_cub_started": (PREPARE_CUB, "data/prepared/.cub.*.tmp", 1),
    "prepare_cub_300_files": (PREPARE_CUB, "data/prepared/.cub.*.tmp/**/*.*", 300),
    "report_figures": (REPORT, "reports/.figures.*.tmp", 1),
}


def _caught(signum: int, point: str) -> Callable[[Path], Outcome]:
    def run(ws: Path) -> Outcome:
        out, before = Outcome(), snapshot(ws)
        cmd, pattern, n = KILL_POINTS[point]
        rc, reached = _kill_when(ws, cmd, _glob(ws, pattern, n), signum)
        out.check(f"signal sent at {point}", reached)
        out.check(f"exit {rc} == {128 + signum}", rc == 128 + signum)
        out.check(f"leftovers {leftovers(ws)}", not leftovers(ws))
        out.check(f"outputs {diff(before, snapshot(ws))}", snapshot(ws) == before)
        return out
    return run


def _killed(point: str) -> Callable[[Path], Outcome]:
    def run(ws: Path) -> Outcome:
        out, before = Outcome(), snapshot(ws)
        cmd, pattern, n = KILL_POINTS[point]
        rc, reached = _kill_when(ws, cmd, _glob(ws, pattern, n), signal.SIGKILL)
        out.check(f"SIGKILL at {point}", reached and rc == 137)
        left = leftovers(ws)
        out.check(f"outputs intact after the kill ({diff(before, snapshot(ws, debris=False))}), debris {left}",
                  snapshot(ws, debris=False) == before)
        nxt = run_stage(ws, "evaluate")
        out.check("next start (evaluate) ok and reports the cleanup",
                  nxt.returncode == 0 and (not left or "removed the stale temporary" in nxt.stderr))
        out.check(f"leftovers after next start {leftovers(ws)}", not leftovers(ws))
        out.check(f"outputs {diff(before, snapshot(ws))}", snapshot(ws) == before)
        return out
    return run


for _sig, _points in ((signal.SIGTERM, ("train_seed0_running", "train_seed0_finished", "prepare_cub_started",
                                        "prepare_cub_300_files", "report_figures")),
                      (signal.SIGINT, ("train_seed0_finished", "prepare_cub_300_files"))):
    for _p in _points:
        case(f"{signal.Signals(_sig).name.lower()}_{_p}")(_caught(_sig, _p))
for _p in ("train_seed0_running", "train_seed0_finished", "prepare_cub_300_files", "report_figures"):
    case(f"sigkill_{_p}")(_killed(_p))


SWAP_FAILURE = """
import os, sys
from pipeline.core import io as pio
from stages import train
pio.exchange = lambda a, b: False          # the two-rename fallback ...
real = os.rename
def rename(src, dst):                       # ... with an I/O error between its renames
    if str(src).startswith('.models.') and str(src).endswith('.tmp'):
        raise OSError(5, 'Input/output error (injected)', str(dst))
    return real(src, dst)
pio.os.rename = rename
train.main()
"""

CRASH_AFTER_EXCHANGE = """
import os
from pipeline.core import io as pio
from stages import train
real = pio.swap_into_place
def swap_then_die(tmp, target):             # power cut right after the swap, before the old copy is removed
    real(tmp, target)
    os._exit(137)
pio.swap_into_place = swap_then_die
train.main()
"""


@case("io_error_between_swap_renames")
def _swap_failure(ws: Path) -> Outcome:
    out, before = Outcome(), snapshot(ws)
    r = run_python(ws, SWAP_FAILURE)
    out.check("train failed at the injected error", r.returncode != 0 and "injected" in r.stderr)
    out.check("window reproduced: models/ missing, .models.old/ holds it",
              not (ws / "models").exists() and (ws / ".models.old").is_dir())
    nxt = run_stage(ws, "evaluate")
    out.check("next start restores models/ from .models.old/", nxt.returncode == 0 and "restored models" in nxt.stderr)
    out.check(f"leftovers {leftovers(ws)}", not leftovers(ws))
    same = {k: v for k, v in snapshot(ws).items() if k != "reports/timings.json"}
    out.check(f"outputs {diff({k: v for k, v in before.items() if k != 'reports/timings.json'}, same)}",
              same == {k: v for k, v in before.items() if k != "reports/timings.json"})
    return out


@case("crash_right_after_the_swap")
def _crash_after_swap(ws: Path) -> Outcome:
    out, before = Outcome(), snapshot(ws)
    r = run_python(ws, CRASH_AFTER_EXCHANGE)
    out.check("process died after the swap", r.returncode == 137)
    out.check("models/ in place (the new, identical models)", (ws / "models/run.json").is_file())
    nxt = run_stage(ws, "evaluate")
    out.check("next start removes the previous copy", nxt.returncode == 0 and not leftovers(ws))
    out.check(f"outputs {diff(before, snapshot(ws))}", snapshot(ws) == before)
    return out


@case("legacy_temporaries_from_before_the_fix")
def _legacy(ws: Path) -> Outcome:
    out, before = Outcome(), snapshot(ws)
    (ws / ".models.x1y2z3w4.tmp/seed_0").mkdir(parents=True)
    (ws / "data/prepared/.cub.q9w8e7r6.tmp").mkdir()
    (ws / "data/prepared/.cub.q9w8e7r6.tmp/image_0.npy").write_bytes(b"x")
    nxt = run_stage(ws, "evaluate")
    out.check("next start ok", nxt.returncode == 0)
    out.check(f"leftovers {leftovers(ws)}", not leftovers(ws))
    out.check(f"outputs {diff(before, snapshot(ws))}", snapshot(ws) == before)
    return out


def _read_only(path: Path) -> Callable[[], None]:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    mode = path.stat().st_mode
    path.chmod(0o555)
    return lambda: path.chmod(mode)


def _refused(ws: Path, out: Outcome, result: subprocess.CompletedProcess, names: str, before: dict) -> Outcome:
    err = result.stderr.strip()
    out.check(f"exit {result.returncode} == 1", result.returncode == 1)
    out.check(f"one message naming {names!r}: {err[:150]!r}",
              err.startswith("Error: ") and names in err and "Traceback" not in err)
    out.check(f"leftovers {leftovers(ws)}", not leftovers(ws))
    out.check(f"outputs {diff(before, snapshot(ws))}", snapshot(ws) == before)
    return out


def _read_only_case(folder: str, stage: str, args: tuple[str, ...], names: str) -> Callable[[Path], Outcome]:
    def run(ws: Path) -> Outcome:
        out, before = Outcome(), snapshot(ws)
        undo = _read_only(ws / folder)
        try:
            started = time.time()
            result = run_stage(ws, stage, *args)
            elapsed = time.time() - started
        finally:
            undo()
        out.check("no training ran" if stage == "train" else "stage refused",
                  "trained" not in result.stdout and "seed 0" not in result.stderr)
        out.check(f"failed in {elapsed:.1f} s", True)
        return _refused(ws, out, result, names.format(ws=ws), before)
    return run


case("read_only_models")(_read_only_case("models", "train", ("--params", "long.yaml"), "models is not writable"))
case("read_only_models_seed_folder")(_read_only_case("models/seed_1", "train", ("--params", "long.yaml"),
                                                     "models/seed_1 is not writable"))
case("read_only_workspace_root")(_read_only_case(".", "train", ("--params", "long.yaml"),
                                                 "the current folder {ws} is not writable"))
case("read_only_prepared_folder")(_read_only_case("data/prepared", "prepare", ("--dataset", "toy2d"),
                                                  "data/prepared is not writable"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_split(ws: Path, name: str, edit) -> None:
    path = ws / f"data/splits/{name}.npy"
    np.save(path, edit(np.load(path)))


def _complex_data(ws: Path) -> None:
    from pipeline.core.io import sha256_file, write_manifest
    folder = ws / "data/prepared/toy2d"
    with np.load(folder / "data.npz") as npz:
        arrays = dict(npz)
    arrays["y"] = arrays["y"].astype(np.complex64) + 1j
    with open(folder / "data.npz", "wb") as fh:
        np.savez(fh, **arrays)
    write_manifest(folder)
    info = json.loads((ws / "data/splits/info.json").read_text())
    info["prepared_manifest_sha256"] = sha256_file(folder / "manifest.json")
    (ws / "data/splits/info.json").write_text(json.dumps(info))


BAD_INTERMEDIATES = {
    "split_index_out_of_range": (lambda ws: _edit_split(ws, "test", lambda a: np.append(a, 5000)),
                                 "data/splits/test.npy: index 5000 is out of range"),
    "split_test_overlaps_train": (lambda ws: _edit_split(ws, "test", lambda a: np.append(
        a, np.load(ws / "data/splits/train.npy")[:7])), "data/splits/train.npy and data/splits/test.npy share 7"),
    "split_complex_dtype": (lambda ws: _edit_split(ws, "train", lambda a: a.astype(np.complex128)),
                            "data/splits/train.npy has dtype complex128"),
    "prepared_data_complex_dtype": (_complex_data, "data/prepared/toy2d/data.npz: array 'y' has dtype complex64"),
    "truncated_model_pt": (lambda ws: _truncate(ws / "models/seed_0/model.pt"), "models/seed_0/model.pt is not a"),
    "truncated_method_pt": (lambda ws: _truncate(ws / "models/seed_1/method.pt"), "models/seed_1/method.pt is not a"),
    "truncated_history_json": (lambda ws: _truncate(ws / "models/seed_0/history.json"),
                               "models/seed_0/history.json is not a"),
}


def _bad_intermediate(name: str) -> Callable[[Path], Outcome]:
    def run(ws: Path) -> Outcome:
        edit, names = BAD_INTERMEDIATES[name]
        edit(ws)
        before = snapshot(ws)
        return _refused(ws, Outcome(), run_stage(ws, "evaluate"), names, before)
    return run


for _name in BAD_INTERMEDIATES:
    case(f"hand_edited_{_name}")(_bad_intermediate(_name))


@case("identical_runs_byte_identical")
def _identical(ws: Path) -> Outcome:
    out, before = Outcome(), snapshot(ws)
    models = lambda snap: {k: v for k, v in snap.items() if k.startswith("models/")}  # noqa: E731
    for i in (1, 2):
        r = run_stage(ws, "train")
        out.check(f"retrain {i} ok", r.returncode == 0)
        out.check(f"models/ after retrain {i}: {diff(models(before), models(snapshot(ws)))}",
                  models(snapshot(ws)) == models(before))
    out.check("history.json holds no wall-clock time",
              "epoch_seconds" not in json.loads((ws / "models/seed_0/history.json").read_text()))
    out.check(f"leftovers {leftovers(ws)}", not leftovers(ws))
    return out


@case("machine_asks_for_4_threads")
def _threads(ws: Path) -> Outcome:
    """The environment asks for 4 intra-op threads; params.threads (1) wins, so the models do not change."""
    out, before = Outcome(), snapshot(ws)
    env = {**ENV, "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    r = run_stage(ws, "train", env=env)
    out.check("train ok", r.returncode == 0)
    probe = subprocess.run([sys.executable, "-c", "import click, torch\nfrom pipeline.config.stage import stage\n"
                            "@click.command()\n@stage\ndef m(params): print(torch.get_num_threads())\nm()"],
                           cwd=ws, env=env, capture_output=True, text=True)
    out.check(f"a stage runs with {probe.stdout.strip()} thread(s) == params.threads 1", probe.stdout.strip() == "1")
    models = lambda snap: {k: v for k, v in snap.items() if k.startswith("models/")}  # noqa: E731
    out.check(f"models/ {diff(models(before), models(snapshot(ws)))}", models(snapshot(ws)) == models(before))
    return out


@click.command()
@click.option("-k", "select", default="", help="run only the cases whose name contains this")
@click.option("--keep", is_flag=True, help="keep the temporary workspaces")
def main(select: str, keep: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="campaign_faults_"))
    started = time.time()
    try:
        base = build(root)
        click.echo(f"workspace built in {time.time() - started:.0f} s ({root})")
        names = [n for n in CASES if select in n]
        survived = 0
        for name in names:
            ws = root / name
            shutil.copytree(base, ws)
            t0 = time.time()
            try:
                outcome = CASES[name](ws)
            except Exception as err:  # noqa: BLE001 - a crashed case is a failed case, reported
                outcome = Outcome([(f"case crashed: {type(err).__name__}: {err}", False)])
            survived += outcome.survived
            click.echo(f"[{'ok' if outcome.survived else 'FAILED'}] {name} ({time.time() - t0:.0f} s)")
            for what, ok in outcome.checks:
                click.echo(f"      {'+' if ok else '-'} {what}")
            if not keep:
                shutil.rmtree(ws, ignore_errors=True)
        click.echo(f"faults injected {len(names)} / survived with no leftovers {survived} "
                   f"({time.time() - started:.0f} s)")
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
