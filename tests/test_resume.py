"""Issue 16, parts 2 and 4: the hot loop logs every ``train.log_every`` steps (the values it logs are those of
per-step logging), AMP and compile are params, and a run killed by SIGTERM resumes from its checkpoint to the
bit-identical result of an uninterrupted run (an AuxiLearn method with φ and its hyper optimiser; MAXL with its
label network), through ``train_run`` and through the train stage; a checkpoint of other params is refused."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.engine.checkpoint import Checkpointer, checkpoint_path, fingerprint
from pipeline.core.io import Interrupted, interrupt_handler, reset_interrupts
from pipeline.engine.live import LiveLogger, read_series, reset
from pipeline.engine.training import CompiledNetwork, train_run
from tests.conftest import _prepared, make_params

CPU = torch.device("cpu")
TRAIN = {"steps": 12, "eval_every": 4, "log_every": 3, "checkpoint_every": 5}
# (dataset, method, methods overrides): φ with its hyper optimiser; a label network with its look-ahead
RESUME_CASES = {
    "auxilearn_nonlinear": ("toy2d", "auxilearn_nonlinear", {"bilevel": {"hyper_every": 2}}),
    "maxl": ("demo", "maxl", {"labels": {"maxl_every": 2}}),
}


def _params(dataset: str, method: str, methods: dict | None = None, **train):
    return make_params(dataset=dataset, method=method, seeds=[0], methods=methods or {},
                       datasets={dataset: {"train": {**TRAIN, **train}}})


def _run(dataset, params, folder: Path, kill_at: int | None = None, live_dir: Path | None = None):
    """``train_run`` with a checkpoint in ``folder``, under the stages' SIGTERM handler; ``kill_at``: the
    process sends itself SIGTERM once that step has ended. Returns (result, the steps this call ran)."""
    ds, data, splits = _prepared(dataset)
    checkpoint = Checkpointer(checkpoint_path(0, folder), params.train.checkpoint_every,
                              fingerprint(params, 0, splits))
    live = None
    if live_dir is not None:  # as the stage does: the files start empty, a resumed run writes them again
        reset(live_dir, live_dir / "metrics.json")
        live = LiveLogger(0, data.task_names, params.train.steps, 1, live_dir=live_dir,
                          metrics_path=live_dir / "metrics.json")
    ran: list[int] = []

    def after_step(step: int) -> None:
        ran.append(step)
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, interrupt_handler)
    reset_interrupts()
    try:
        return train_run(ds, data, splits, params, 0, device=CPU, live=live, checkpoint=checkpoint,
                         after_step=after_step), ran
    finally:
        signal.signal(signal.SIGTERM, previous)
        reset_interrupts()


def _live_files(folder: Path) -> dict[str, object]:
    """Every live series (step, value) and the combined files as written (dvclive's timestamps left out)."""
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*.tsv")):
        rel = path.relative_to(folder).as_posix()
        out[rel] = path.read_text() if "/" not in rel else read_series(path)
    out["metrics.json"] = (folder / "metrics.json").read_text()
    return out


def _same(a, b) -> None:
    assert a.history.keys() == b.history.keys()
    for key in a.history:
        if key != "epoch_seconds":  # wall-clock
            assert a.history[key] == b.history[key], key
    for mine, theirs in ((a.model_state, b.model_state), (a.method_state_final, b.method_state_final),
                         (a.method_state_initial, b.method_state_initial)):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.parametrize("case", RESUME_CASES, ids=list(RESUME_CASES))
def test_a_killed_run_resumes_to_the_bitwise_result_of_an_uninterrupted_one(case, tmp_path):
    dataset, method, methods = RESUME_CASES[case]
    params = _params(dataset, method, methods)
    whole, ran = _run(dataset, params, tmp_path / "whole", live_dir=tmp_path / "live_whole")
    assert ran == list(range(1, 13))

    with pytest.raises(Interrupted):  # killed after step 7: the periodic checkpoint was at 5, SIGTERM writes 7
        _run(dataset, params, tmp_path / "killed", kill_at=7, live_dir=tmp_path / "live_killed")
    saved = torch.load(checkpoint_path(0, tmp_path / "killed"), weights_only=True)
    assert saved["step"] == 7 and not saved["done"]
    assert set(saved["rng"]["streams"]) == {"weights", "outer", "diagnostics"}

    resumed, ran = _run(dataset, params, tmp_path / "killed", live_dir=tmp_path / "live_killed")
    assert ran == list(range(8, 13))  # continued, not restarted
    _same(whole, resumed)
    assert resumed.history["step"] == [1, 3, 6, 9, 12] and resumed.history["method_log"]  # φ / θ2 moved
    assert _live_files(tmp_path / "live_killed") == _live_files(tmp_path / "live_whole")  # each step once
    assert torch.load(checkpoint_path(0, tmp_path / "killed"), weights_only=True)["done"]  # superseded


def test_a_run_killed_between_checkpoints_resumes_from_the_periodic_one(tmp_path):
    """SIGKILL leaves no time to write: the periodic checkpoint (step 5) is where the re-run starts."""
    dataset, method, methods = RESUME_CASES["auxilearn_nonlinear"]
    params = _params(dataset, method, methods)
    whole, _ = _run(dataset, params, tmp_path / "whole")
    folder = tmp_path / "killed"

    def stop(step: int) -> None:
        if step == 7:
            raise KeyboardInterrupt  # not Interrupted: nothing is written on the way out, as with SIGKILL

    ds, data, splits = _prepared(dataset)
    checkpoint = Checkpointer(checkpoint_path(0, folder), 5, fingerprint(params, 0, splits))
    with pytest.raises(KeyboardInterrupt):
        train_run(ds, data, splits, params, 0, device=CPU, checkpoint=checkpoint, after_step=stop)
    assert torch.load(checkpoint_path(0, folder), weights_only=True)["step"] == 5
    resumed, ran = _run(dataset, params, folder)
    assert ran == list(range(6, 13))
    _same(whole, resumed)


def test_a_checkpoint_of_other_params_is_refused_naming_the_file_and_the_difference(tmp_path):
    dataset, method, methods = RESUME_CASES["auxilearn_nonlinear"]
    with pytest.raises(Interrupted):
        _run(dataset, _params(dataset, method, methods), tmp_path, kill_at=3)
    other = _params(dataset, method, {"bilevel": {"hyper_every": 2, "lr": 0.05}}, lr=0.02)
    with pytest.raises(ValueError) as info:
        _run(dataset, other, tmp_path)
    message = str(info.value)
    assert str(checkpoint_path(0, tmp_path)) in message and "not resumed" in message
    assert "datasets.toy2d.train.lr: 0.01 -> 0.02" in message and "methods.bilevel.lr: 0.01 -> 0.05" in message
    # a setting that changes no result (how often to checkpoint) still resumes
    resumed, ran = _run(dataset, _params(dataset, method, methods, checkpoint_every=4), tmp_path)
    assert ran[0] == 4


@pytest.mark.parametrize("method", ["auxilearn_linear", "gradnorm"])
def test_logging_every_k_steps_logs_the_per_step_values_at_those_steps(method):
    dataset = "toy2d"
    methods = {"bilevel": {"hyper_every": 2}}
    ds, data, splits = _prepared(dataset)
    every = train_run(ds, data, splits, _params(dataset, method, methods, log_every=1), 0, device=CPU).history
    sparse = train_run(ds, data, splits, _params(dataset, method, methods, log_every=5), 0, device=CPU).history
    assert every["step"] == list(range(1, 13)) and sparse["step"] == [1, 5, 10, 12]
    at = {s: i for i, s in enumerate(every["step"])}
    for key in ("train_loss", "main_loss", "weights"):
        assert sparse[key] == [every[key][at[s]] for s in sparse["step"]], key
    for key in ("val_step", "val_main_loss", "hyper_step", "hypergrad_norm", "method_log"):
        assert sparse[key] == every[key], key  # method logs and validations: every one, as before


def test_amp_is_a_param_and_fp16_is_refused_where_its_scaler_would_be_wrong():
    ds, data, splits = _prepared("toy2d")
    assert _params("toy2d", "equal").train.amp == "none"
    plain = train_run(ds, data, splits, _params("toy2d", "equal", steps=4), 0, device=CPU)
    for amp in ("bf16", "fp16"):
        result = train_run(ds, data, splits, _params("toy2d", "equal", steps=4, amp=amp), 0, device=CPU)
        assert all(torch.isfinite(v).all() for v in result.model_state.values())
        assert result.history["train_loss"][0] != plain.history["train_loss"][0]  # the forward ran in low precision
    with pytest.raises(ValueError, match=r"datasets\.toy2d\.train\.amp: fp16 .* gradnorm .* bf16"):
        train_run(ds, data, splits, _params("toy2d", "gradnorm", amp="fp16"), 0, device=CPU)
    with pytest.raises(Exception, match="amp"):
        _params("toy2d", "equal", amp="fp32")


def test_compile_is_off_by_default_and_wraps_w_steps_network(monkeypatch):
    """The plumbing only: inductor takes about a minute to compile on this CPU (measured: 68 s for toy2d's
    network, cold cache), so torch.compile is replaced by a recorder that returns the function as it is."""
    ds, data, splits = _prepared("toy2d")
    assert _params("toy2d", "equal").train.compile is False
    compiled: list[str] = []

    def record(fn):
        compiled.append(fn.__name__)
        return fn

    monkeypatch.setattr(torch, "compile", record)
    eager = train_run(ds, data, splits, _params("toy2d", "auxilearn_linear", steps=4), 0, device=CPU)
    assert compiled == []
    wrapped = train_run(ds, data, splits, _params("toy2d", "auxilearn_linear", steps=4, compile=True), 0, device=CPU)
    assert compiled == ["encode", "decode"]
    _same(eager, wrapped)
    net = ds.build_model(data, make_params(dataset="toy2d").profile.model)
    assert CompiledNetwork(net).shared_parameters() == net.shared_parameters()  # everything else is the network's


def test_the_train_stage_resumes_after_sigterm_to_the_same_outputs(tmp_path, monkeypatch):
    """Two seeds, SIGTERM in the second: the re-run takes the first from its finished checkpoint, resumes the
    second, and writes models/ and reports/live/ as an uninterrupted run does; the checkpoints are gone."""
    from stages import prepare, split, train

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump({
        "dataset": "toy2d", "method": "auxilearn_linear", "seeds": [0, 1],
        "methods": {"bilevel": {"hyper_every": 2}},
        "datasets": {"toy2d": {"prepare": {"num_samples": 400}, "split": {"aux": 20, "val": 20, "test": 40},
                               "train": TRAIN}}}))
    runner = CliRunner()
    assert runner.invoke(prepare.main, ["--dataset", "toy2d"]).exit_code == 0
    assert runner.invoke(split.main, []).exit_code == 0

    def outputs() -> dict[str, object]:
        files = {p.as_posix(): p.read_bytes() for p in sorted(Path("models").rglob("*")) if p.is_file()}
        return {**files, **_live_files(Path("reports/live"))}

    assert runner.invoke(train.main, []).exit_code == 0
    whole = outputs()
    assert not Path("models/checkpoints").exists()

    real = train.train_run

    def killed_in_seed_1(*args, **kwargs):
        seed = args[4]
        kwargs["after_step"] = lambda step: os.kill(os.getpid(), signal.SIGTERM) if seed == 1 and step == 7 else None
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_run", killed_in_seed_1)
    result = runner.invoke(train.main, [])
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    states = {s: torch.load(f"models/checkpoints/seed_{s}.pt", weights_only=True) for s in (0, 1)}
    assert (states[0]["done"], states[1]["done"], states[1]["step"]) == (True, False, 7)
    monkeypatch.setattr(train, "train_run", real)
    assert runner.invoke(train.main, []).exit_code == 0
    assert outputs() == whole
    assert not Path("models/checkpoints").exists()
    assert json.loads(Path("reports/live/metrics.json").read_text())["live"]["step"] == 12


@pytest.mark.slow
def test_compile_true_trains_with_torch_compile_as_the_eager_loop_does():
    """The real torch.compile (inductor builds C++ kernels: about a minute on this CPU with a cold cache)."""
    ds, data, splits = _prepared("toy2d")
    methods = {"bilevel": {"hyper_every": 2}}
    eager = train_run(ds, data, splits, _params("toy2d", "auxilearn_linear", methods, steps=4), 0, device=CPU)
    compiled = train_run(ds, data, splits, _params("toy2d", "auxilearn_linear", methods, steps=4, compile=True),
                         0, device=CPU)
    assert compiled.history["step"] == eager.history["step"]
    assert compiled.history["train_loss"] == pytest.approx(eager.history["train_loss"], rel=1e-5)
    assert torch.allclose(torch.tensor(compiled.history["weights"]), torch.tensor(eager.history["weights"]),
                          rtol=1e-5)
    assert compiled.history["hypergrad_norm"]  # the outer update ran on the eager network
