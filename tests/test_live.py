"""Live logging while training runs (pipeline.engine.live) and the plain progress lines (pipeline.core.progress)."""
import io
import json

import torch

from pipeline.engine.live import LiveLogger, read_metrics, read_series
from pipeline.core.progress import ProgressLines
from pipeline.engine.training import train_run
from tests.conftest import _prepared, make_params


def _params(method="auxilearn_linear", steps=12, eval_every=4, log_every=4):
    return make_params(dataset="toy2d", method=method, seeds=[0],
                       datasets={"toy2d": {"train": {"steps": steps, "eval_every": eval_every,
                                                     "log_every": log_every}}},
                       methods={"bilevel": {"hyper_every": 2}})


class Spy(LiveLogger):
    """Reads the files from disk at one step of the run, before training has ended."""

    def __init__(self, *args, look_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.look_at, self.seen = look_at, None

    def train_step(self, step, task_losses, weights):
        super().train_step(step, task_losses, weights)
        if step == self.look_at:
            seed_dir = self.dir / "seed_0"
            self.seen = {
                "metrics": json.loads((seed_dir / "metrics.json").read_text()),
                "main": read_series(seed_dir / "plots/metrics/train/loss/main.tsv"),
                "weight": read_series(seed_dir / "plots/metrics/train/weight/helpful.tsv"),
                "val": read_series(seed_dir / "plots/metrics/val/main_loss.tsv"),
                "live": read_metrics(self.metrics_path),
                "combined": (self.dir / "task_loss.tsv").read_text().splitlines(),
            }


def test_series_are_on_disk_during_training(tmp_path):
    ds, data, splits = _prepared("toy2d")
    params = _params()
    spy = Spy(0, data.task_names, 12, 4, live_dir=tmp_path / "live", metrics_path=tmp_path / "live.json",
              look_at=6)  # after the logged steps 1 and 4 (validation at 4), before the end (12)
    result = train_run(ds, data, splits, params, 0, device=torch.device("cpu"), live=spy)
    seen = spy.seen
    assert seen is not None
    assert [s for s, _ in seen["main"]] == [1, 4] and seen["metrics"]["step"] == 4
    assert [s for s, _ in seen["weight"]] == [1, 4] and [s for s, _ in seen["val"]] == [4]
    assert seen["live"] == {"seed": 0, "step": 4, "main_loss": seen["main"][-1][1], "val_loss": seen["val"][0][1]}
    assert seen["combined"][0] == "step\tvalue\tseries" and len(seen["combined"]) == 1 + 2 * 3  # 3 tasks, 2 steps
    # at the end: every logged step, values that are the run's own (weights as history.json records them)
    seed_dir = tmp_path / "live/seed_0/plots/metrics"
    assert [s for s, _ in read_series(seed_dir / "train/loss/main.tsv")] == [1, 4, 8, 12]
    weights = dict(read_series(seed_dir / "train/weight/harmful.tsv"))
    assert result.history["step"] == [1, 4, 8, 12]  # train.log_every 4: history.json's steps are the logged ones
    assert weights[12] == result.history["weights"][3][2]
    assert dict(read_series(seed_dir / "val/main_loss.tsv")) == dict(zip(result.history["val_step"],
                                                                        result.history["val_main_loss"]))
    main = dict(read_series(seed_dir / "train/loss/main.tsv"))
    every_step = train_run(ds, data, splits, _params(log_every=1), 0, device=torch.device("cpu")).history
    assert abs(main[12] - sum(every_step["main_loss"][8:12]) / 4) < 1e-6  # mean since the last logged step


def test_logging_changes_no_result(tmp_path):
    ds, data, splits = _prepared("toy2d")
    params = _params()
    plain = train_run(ds, data, splits, params, 0, device=torch.device("cpu"))
    logged = train_run(ds, data, splits, params, 0, device=torch.device("cpu"), progress=True,
                       live=LiveLogger(0, data.task_names, 12, 4, live_dir=tmp_path, metrics_path=None))
    assert plain.history == {**logged.history, "epoch_seconds": plain.history["epoch_seconds"]}
    for k in plain.model_state:
        assert torch.equal(plain.model_state[k], logged.model_state[k])


def test_plain_progress_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("AUXBENCH_PROGRESS_SECONDS", "0")
    monkeypatch.setenv("AUXBENCH_PROGRESS_STEPS", "5")
    ds, data, splits = _prepared("toy2d")
    train_run(ds, data, splits, _params(steps=12, eval_every=4), 0, device=torch.device("cpu"), progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("auxilearn_linear seed 0:")]
    assert [line.split("step ")[1].split(",")[0] for line in lines] == ["1/12", "5/12", "10/12", "12/12"]
    assert "main_loss " in lines[0] and "val_loss –" in lines[0]  # no validation before step 4
    assert float(lines[-1].split("val_loss ")[1]) > 0


def test_progress_cadence_by_time_and_never_on_a_terminal():
    now = [0.0]
    out = io.StringIO()
    lines = ProgressLines("x", 100, stream=out, every_seconds=10, every_steps=0, clock=lambda: now[0])
    printed = []
    for step in range(1, 101):
        now[0] += 1.5
        printed.append(lines.update(step, loss=1.0))
    assert [i + 1 for i, p in enumerate(printed) if p] == [1, 8, 15, 22, 29, 36, 43, 50, 57, 64, 71, 78, 85, 92, 99, 100]

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert not ProgressLines("x", 3, stream=Tty(), every_steps=1).update(1)


def test_prepare_counts_what_it_reads_off_a_terminal(monkeypatch, capsys):
    from pipeline.core.progress import counted

    monkeypatch.setenv("AUXBENCH_PROGRESS_SECONDS", "0")
    monkeypatch.setenv("AUXBENCH_PROGRESS_STEPS", "4")
    assert list(counted(iter(range(10)), "prepare x: images read", 10, "images")) == list(range(10))
    err = capsys.readouterr().err.splitlines()
    assert err == ["prepare x: images read: 1/10 images", "prepare x: images read: 4/10 images",
                   "prepare x: images read: 8/10 images", "prepare x: images read: 10/10 images"]


def test_the_device_recorded_is_the_one_used(monkeypatch):
    from pipeline.engine import training

    assert training.device_name(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert training.device_name(torch.device("cuda")) == "cuda:3"
    assert training.device_name(torch.device("cuda:1")) == "cuda:1"
