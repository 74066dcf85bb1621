"""Faults at the stage level (issue 15): interrupted stages leave no debris and keep the last good outputs,
a swap cut between its renames is undone at the next start, read-only outputs fail before training,
hand-edited intermediates are refused naming the file, identical runs write identical bytes, and every
stage runs with ``params.threads`` intra-op threads.

Each case asserts the message names the file or folder and that data/, models/ and reports/ are
byte-identical afterwards (or, for an interrupted write, identical to the last good outputs)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.core import io as pio
from pipeline.config.stage import stage
from pipeline.core.io import sha256_file, write_manifest
from stages import evaluate, prepare, report, split, train

from tests.test_io import read_only

REPO = Path(__file__).resolve().parents[1]
PARAMS = {"dataset": "toy2d", "method": "auxilearn_linear", "seeds": [0, 1], "device": "cpu",
          "datasets": {"toy2d": {"train": {"steps": 60, "eval_every": 20}}}}
OUTPUTS = ("data", "models", "reports")


def snapshot(root: Path) -> dict[str, bytes]:
    """data/, models/ and reports/ byte for byte, hidden entries (temporaries, .old copies) included; not
    reports/live/, the live log of the latest training attempt (kept on purpose when that attempt fails), nor
    models/checkpoints/, what an unfinished training leaves on purpose to resume from (``checkpoints``)."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for top in OUTPUTS if (root / top).exists() for p in sorted((root / top).rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith(("reports/live/", "models/checkpoints/"))}


def checkpoints(root: Path) -> dict[str, tuple[int, bool]]:
    """The resumable checkpoints an unfinished train stage left: (step, finished) per file."""
    found = sorted((root / "models/checkpoints").glob("*.pt")) if (root / "models/checkpoints").is_dir() else []
    return {p.name: (s["step"], s["done"]) for p in found for s in [torch.load(p, weights_only=True)]}


def debris(root: Path) -> list[str]:
    """Temporaries and old copies anywhere a stage writes."""
    return sorted(p.relative_to(root).as_posix() for folder in (root, root / "data", root / "data/prepared", root / "reports")
                  if folder.is_dir() for p in folder.iterdir() if p.name.endswith((".tmp", ".old")))


def invoke(command, *args):
    return CliRunner().invoke(command, list(args))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """prepare, split, train, evaluate and report once, on tiny settings."""
    root = tmp_path_factory.mktemp("workspace")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for command, args in ((prepare.main, ["--dataset", "toy2d"]), (split.main, []), (train.main, []),
                              (evaluate.main, []), (report.main, [])):
            result = invoke(command, *args)
            assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def ws(built, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the built workspace, as the current folder."""
    root = tmp_path / "ws"
    shutil.copytree(built, root)
    monkeypatch.chdir(root)
    return root


# --- hand-edited intermediates, run through a stage directly --------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_split(name: str, edit) -> None:
    path = Path(f"data/splits/{name}.npy")
    np.save(path, edit(np.load(path)))


def _complex_data() -> None:
    folder = Path("data/prepared/toy2d")
    with np.load(folder / "data.npz") as npz:
        arrays = dict(npz)
    arrays["y"] = arrays["y"].astype(np.complex64) + 1j
    with open(folder / "data.npz", "wb") as fh:
        np.savez(fh, **arrays)
    write_manifest(folder)  # a consistent hand-edit: the hash checks alone would not catch it
    info = json.loads(Path("data/splits/info.json").read_text())
    info["prepared_manifest_sha256"] = sha256_file(folder / "manifest.json")
    Path("data/splits/info.json").write_text(json.dumps(info))


def _foreign_model() -> None:
    torch.save({"weight": torch.zeros(3, 3)}, "models/seed_0/model.pt")


HAND_EDITS = {  # case -> (edit, the file(s) the message must name, what else it says)
    "split_index_out_of_range": (lambda: _edit_split("test", lambda a: np.append(a, 5000)),
                                 "data/splits/test.npy: index 5000 is out of range", "[0, 1300)"),
    "split_negative_index": (lambda: _edit_split("val", lambda a: np.append(a, -3)),
                             "data/splits/val.npy: index -3 is out of range", ""),
    "test_overlaps_train": (lambda: _edit_split("test", lambda a: np.append(a, np.load("data/splits/train.npy")[:7])),
                            "data/splits/train.npy and data/splits/test.npy share 7 sample(s)", "disjoint"),
    "complex_split": (lambda: _edit_split("train", lambda a: a.astype(np.complex128)),
                      "data/splits/train.npy has dtype complex128", "integers"),
    "truncated_split": (lambda: _truncate(Path("data/splits/aux.npy")),
                        "data/splits/aux.npy is not a readable .npy file", ""),
    "complex_prepared_data": (_complex_data, "data/prepared/toy2d/data.npz: array 'y' has dtype complex64",
                              "only real numbers"),
    "truncated_model": (lambda: _truncate(Path("models/seed_0/model.pt")),
                        "models/seed_0/model.pt is not a readable model checkpoint", "truncated"),
    "truncated_method": (lambda: _truncate(Path("models/seed_1/method.pt")),
                         "models/seed_1/method.pt is not a readable method checkpoint", "truncated"),
    "truncated_history": (lambda: _truncate(Path("models/seed_0/history.json")),
                          "models/seed_0/history.json is not a readable training history", "JSONDecodeError"),
    "history_not_an_object": (lambda: Path("models/seed_1/history.json").write_text("[1, 2]\n"),
                              "models/seed_1/history.json is not a readable training history", "'step'"),
    "model_of_another_shape": (_foreign_model, "models/seed_0/model.pt is not a readable model checkpoint for toy2d",
                               "state_dict"),
}


@pytest.mark.parametrize("case", sorted(HAND_EDITS))
@pytest.mark.parametrize("command", [evaluate.main, report.main], ids=["evaluate", "report"])
def test_hand_edited_intermediate_is_refused_naming_the_file(ws, case, command):
    edit, names, also = HAND_EDITS[case]
    edit()
    before = snapshot(ws)
    result = invoke(command)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and names in result.output and also in result.output, result.output
    assert "Traceback" not in result.output
    assert snapshot(ws) == before


# --- interrupted stages: SIGTERM / SIGINT clean up, the last good outputs stay ----------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_train_removes_the_temporary_and_keeps_models(ws, monkeypatch, signum):
    """The signal arrives after seed 0 finished (its files are in the temporary folder) while seed 1 trains."""
    before = snapshot(ws)
    real = train.train_run

    def train_then_signal(*args, **kwargs):
        result = real(*args, **kwargs)
        assert any(p.name.startswith(".models.") for p in ws.iterdir())  # the temporary exists now
        if args[4] == 1:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # interrupted well before this ends
        return result

    monkeypatch.setattr(train, "train_run", train_then_signal)
    result = invoke(train.main)
    assert result.exit_code == 128 + signum, result.output
    assert f"interrupted by {signal.Signals(signum).name}" in result.output
    assert debris(ws) == [] and snapshot(ws) == before
    assert checkpoints(ws) == {"seed_0.pt": (60, True), "seed_1.pt": (60, True)}  # a re-run trains neither again
    assert signal.getsignal(signal.SIGTERM) is not pio.interrupt_handler  # handlers put back afterwards


def test_sigterm_during_prepare_keeps_the_prepared_data(ws, monkeypatch):
    before = snapshot(ws)
    from pipeline.core.registry import DATASETS
    cls = DATASETS.get("toy2d")
    real = cls.prepare

    def prepare_then_signal(self, cfg, out_dir):
        real(self, cfg, out_dir)  # all files written into the temporary folder, then the signal
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(cls, "prepare", prepare_then_signal)
    result = invoke(prepare.main, "--dataset", "toy2d")
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert debris(ws) == [] and snapshot(ws) == before


def test_next_start_removes_what_a_killed_run_left(ws):
    """What SIGKILL leaves (it cannot be caught): temporaries of a process that is gone. Any stage's next start
    removes them, and puts models/ back from .models.old/ when a swap was cut between its renames."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    before = snapshot(ws)
    (ws / f".models.{gone.pid}-k1ll3d00.tmp" / "seed_0").mkdir(parents=True)
    (ws / f".models.{gone.pid}-k1ll3d00.tmp" / "seed_0" / "model.pt").write_bytes(b"finished seed")
    (ws / f"data/prepared/.toy2d.{gone.pid}-k1ll3d00.tmp").mkdir()
    (ws / f"reports/.metrics.json.{gone.pid}-k1ll3d00.tmp").write_text("{")
    os.rename(ws / "models", ws / ".models.old")
    result = invoke(evaluate.main)
    assert result.exit_code == 0, result.output
    assert "restored models from .models.old" in result.output
    assert "removed the stale temporary data/prepared/.toy2d." in result.output
    assert debris(ws) == [] and snapshot(ws) == before  # evaluate rewrote metrics.json with the same bytes


def test_swap_failing_between_its_renames_is_undone_at_next_start(ws, monkeypatch):
    """Force the two-rename fallback and an I/O error between the renames: models/ is missing until the next
    start of any stage restores the last good copy, byte for byte."""
    before = snapshot(ws)
    monkeypatch.setattr(pio, "exchange", lambda a, b: False)
    real_rename = os.rename

    def failing(src, dst):
        if str(src).startswith(".models.") and str(src).endswith(".tmp"):
            raise OSError(5, "Input/output error (injected)", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(pio.os, "rename", failing)
    result = invoke(train.main)
    assert result.exit_code != 0 and not (ws / "models").exists() and (ws / ".models.old").is_dir()
    monkeypatch.setattr(pio.os, "rename", real_rename)
    result = invoke(evaluate.main)
    assert result.exit_code == 0, result.output
    after = snapshot(ws)
    assert debris(ws) == [] and {k: v for k, v in after.items() if k != "reports/timings.json"} == {
        k: v for k, v in before.items() if k != "reports/timings.json"}
    assert checkpoints(ws) == {"seed_0.pt": (60, True), "seed_1.pt": (60, True)}  # the swap did not complete


@pytest.mark.parametrize("folder", ["models", "models/seed_1", "."])
def test_read_only_output_fails_before_any_training_naming_the_folder(ws, monkeypatch, folder):
    before = snapshot(ws)
    calls = []
    monkeypatch.setattr(train, "train_run", lambda *a, **k: calls.append(a) or pytest.fail("trained"))
    with read_only(ws / folder):
        result = invoke(train.main)
    assert result.exit_code == 1, result.output
    named = f"the current folder {ws}" if folder == "." else folder
    assert f"Error: {named} is not writable" in result.output and not calls
    assert debris(ws) == [] and snapshot(ws) == before


@pytest.mark.slow
def test_sigkill_during_train_then_next_start_cleans(ws):
    """A real SIGKILL of `python -m stages.train` after seed 0 finished: models/ is untouched; the temporary
    with the finished seed is left, and the next start removes it."""
    params = json.loads(json.dumps(PARAMS))
    params["datasets"]["toy2d"]["train"]["steps"] = 20000
    (ws / "long.yaml").write_text(yaml.safe_dump(params))
    before = snapshot(ws)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", "--params", "long.yaml"], cwd=ws, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not list(ws.glob(".models.*.tmp/seed_0/history.json")) and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in ws.glob(".models.*.tmp")] and snapshot(ws) == before  # debris, outputs intact
    result = invoke(evaluate.main)
    assert result.exit_code == 0 and "removed the stale temporary .models." in result.output
    assert debris(ws) == [] and snapshot(ws) == before


# --- byte-stable outputs and the thread count -----------------------------------------------------------

def test_identical_retrain_writes_identical_models(ws):
    """No wall-clock time in models/ (history.json holds none; reports/timings.json has them), so a retrain
    with the same inputs is byte-identical and DVC sees no change; the report still gives the epoch time."""
    first = {k: v for k, v in snapshot(ws).items() if k.startswith("models/")}
    assert invoke(train.main).exit_code == 0
    second = {k: v for k, v in snapshot(ws).items() if k.startswith("models/")}
    assert first == second and len(first) == 7
    history = json.loads((ws / "models/seed_0/history.json").read_text())
    assert "epoch_seconds" not in history
    timings = json.loads((ws / "reports/timings.json").read_text())
    assert timings["per_seed"]["seed_0"]["epoch_seconds"] and timings["threads"] == 1
    assert invoke(report.main).exit_code == 0
    assert "Mean wall time of a training epoch:" in (ws / "reports/report.md").read_text()


def test_report_omits_epoch_time_of_other_runs(ws):
    timings = json.loads((ws / "reports/timings.json").read_text())
    (ws / "reports/timings.json").write_text(json.dumps({**timings, "method": "stl"}))
    assert invoke(report.main).exit_code == 0
    assert "Mean wall time" not in (ws / "reports/report.md").read_text()


@pytest.mark.slow
def test_two_identical_train_processes_write_identical_bytes(ws):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    runs = []
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "stages.train"], cwd=ws, env=env, check=True, capture_output=True)
        runs.append({k: v for k, v in snapshot(ws).items() if k.startswith("models/")})
    assert runs[0] == runs[1] and len(runs[0]) == 7


@click.command()
@stage
def _probe_threads(params) -> None:
    click.echo(f"threads={torch.get_num_threads()} handler={signal.getsignal(signal.SIGTERM) is pio.interrupt_handler}")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_stage_runs_with_params_threads(tmp_path, monkeypatch, threads):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"threads: {threads}\n")
    previous = torch.get_num_threads()
    result = invoke(_probe_threads)
    assert result.exit_code == 0, result.output
    assert f"threads={threads} handler=True" in result.output
    assert torch.get_num_threads() == previous  # put back for the caller


def test_all_stages_use_the_stage_decorator():
    """So each one validates params first, applies `threads` and cleans up on SIGTERM."""
    for name in ("prepare", "split", "train", "evaluate", "report", "usefulness"):
        module = REPO / "stages" / name  # a stage is stages/<name>.py or the package stages/<name>/
        entry = module / "__init__.py" if module.is_dir() else module.with_suffix(".py")
        assert "@stage\n" in entry.read_text(), name
