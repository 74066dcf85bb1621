"""Two processes (gloo, CPU) against one: W's DDP step on shards equals the single-process step on the whole
batch, and the outer update, averaged across processes (``pipeline.core.distributed.mean_across``), equals the
single-process hypergradient on the union of the shards."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pipeline.core import distributed
from pipeline.methods.bilevel import BilevelConfig, HyperOptimizer, neumann_hypergradient

WORLD = 2


def problem(seed: int = 0):
    """A shared tanh layer under a main and two auxiliary outputs, φ the auxiliary weights, seeded data."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    phi = torch.tensor([0.7, 0.2], requires_grad=True)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g)
    xa, ya = torch.randn(8, 4, generator=g), torch.randn(8, generator=g)
    return net, phi, (x, y), (xa, ya)


def train_loss(net: nn.Module, phi: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    per_task = ((net(x) - y) ** 2).mean(0)  # mean over samples: linear in the batch
    return per_task[0] + (phi * per_task[1:]).sum()


def aux_loss(net: nn.Module, xa: torch.Tensor, ya: torch.Tensor) -> torch.Tensor:
    return ((net(xa)[:, 0] - ya) ** 2).mean()


def run(out: Path) -> dict[str, torch.Tensor]:
    """W's SGD step through DDP (or plainly, with one process), then one hyper step and the bare hypergradient."""
    net, phi, (x, y), (xa, ya) = problem()
    rows, aux_rows = distributed.shard(torch.arange(len(x))), distributed.shard(torch.arange(len(xa)))
    model = nn.parallel.DistributedDataParallel(net) if distributed.active() else net
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    per_task = ((model(x[rows]) - y[rows]) ** 2).mean(0)
    (per_task[0] + (phi.detach() * per_task[1:]).sum()).backward()
    opt.step()
    params = list(net.parameters())  # the outer update differentiates the unwrapped network
    hypergradient = neumann_hypergradient(train_loss(net, phi, x[rows], y[rows]), aux_loss(net, xa[aux_rows], ya[aux_rows]),
                                          params, [phi], neumann_steps=3, neumann_lr=0.05)[0]
    hyper = HyperOptimizer([phi], BilevelConfig(optimizer="sgd", lr=0.5, momentum=0.0, neumann_lr="auto"))
    stats = hyper.step(train_loss(net, phi, x[rows], y[rows]), aux_loss(net, xa[aux_rows], ya[aux_rows]), params)
    return {"weights": torch.cat([p.detach().reshape(-1) for p in net.parameters()]),
            "hypergradient": hypergradient, "phi": phi.detach().clone(), "alpha": torch.tensor(stats.neumann_lr)}


def train(method: str, steps: int = 40, dataset: str = "toy2d", methods: dict | None = None
          ) -> dict[str, torch.Tensor]:
    """A whole ``train_run`` (toy2d: no augmentation; batches and hyper batches even): W and φ at the end."""
    from pipeline.engine.training import train_run
    from tests.conftest import _prepared, make_params

    ds, data, splits = _prepared(dataset)
    splits = {**splits, "aux": splits["aux"][: len(splits["aux"]) // 2 * 2]}  # the whole aux set, in even halves
    params = make_params(dataset=dataset, method=method, seeds=[0],
                         datasets={dataset: {"train": {"steps": steps, "batch_size": 16, "eval_every": 10}}},
                         methods=methods or {"bilevel": {"hyper_every": 5, "hyper_train_batch": 8}})
    result = train_run(ds, data, splits, params, 0, device=torch.device("cpu"))
    return {**{f"model.{k}": v for k, v in result.model_state.items()},
            **{f"method.{k}": v for k, v in result.method_state_final.items()}}


def worker(rank: int, init_file: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    calls = []  # W's steps that went through DDP's forward
    ddp_forward = nn.parallel.DistributedDataParallel.forward

    def counted(self, *args, **kwargs):
        calls.append(type(self.module).__name__)
        return ddp_forward(self, *args, **kwargs)

    nn.parallel.DistributedDataParallel.forward = counted
    try:
        results = {"step": run(Path(out)), "run": train("auxilearn_linear")}
        results["run_ddp_calls"] = torch.tensor(sum(name == "_Objective" for name in calls))
        calls.clear()
        for method in ("mgda", "gcs"):  # one backward of shard-weighted losses; a rewrite of the trunk's .grad
            results[method] = train(method, steps=6)
            results[f"{method}_ddp_calls"] = torch.tensor(len(calls))
            calls.clear()
        # the Hessian on 2 rows of each process's 4, the mixed term in forward mode on all 4 (curvature_batch)
        results["curvature_batch"] = train("auxilearn_linear", methods={"bilevel": {
            "hyper_every": 5, "hyper_train_batch": 8, "curvature_batch": 4}})
        # the IFT over the trunk's last block and the heads, the rest of W out of autograd in the hyper step only
        results["implicit_scope_top"] = train("auxilearn_linear", steps=6, dataset="demo", methods={"bilevel": {
            "hyper_every": 2, "hyper_train_batch": 8, "implicit_scope": "top"}})
        # θ2's update inside W's step (before_w_step), from W's DDP-averaged gradient and this shard's batch
        results["maxl_step"] = train("maxl", steps=4, dataset="demo",
                                     methods={"labels": {"maxl_meta_batch": "step", "maxl_every": 2}})
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.teardown()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.start_processes(worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, start_method="spawn")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_one_process_is_the_identity():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    v = [torch.ones(3)]
    assert distributed.mean_across(v)[0] is v[0] and torch.equal(distributed.shard(torch.arange(5)), torch.arange(5))


def test_ddp_w_step_equals_the_whole_batch(ranks):
    single = run(Path("."))
    for r in ranks:
        torch.testing.assert_close(r["step"]["weights"], single["weights"], rtol=1e-5, atol=1e-6)


def test_averaged_outer_update_equals_the_union_of_the_shards(ranks):
    single = run(Path("."))
    assert single["hypergradient"].abs().max() > 1e-3  # a real signal, not two zeros agreeing
    for r in (r["step"] for r in ranks):
        torch.testing.assert_close(r["hypergradient"], single["hypergradient"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r["alpha"], single["alpha"], rtol=1e-4, atol=0)  # the same power iteration
        torch.testing.assert_close(r["phi"], single["phi"], rtol=1e-4, atol=1e-6)


def test_a_whole_auxilearn_run_on_two_processes_equals_one(ranks):
    """40 steps of W (batch 16 as 2 × 8) and 8 hyper steps of φ: both processes end where one process ends."""
    single = train("auxilearn_linear")
    assert single.keys() == ranks[0]["run"].keys() and any(k.startswith("method.") for k in single)
    for r in ranks:
        for key, value in single.items():
            torch.testing.assert_close(r["run"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    moved = max((single[k] - train("equal").get(k, single[k])).abs().max() for k in single if k.startswith("model."))
    assert moved > 1e-3  # φ's learning changed W: the comparison covers the outer update


def test_w_steps_go_through_ddp_and_processes_stay_identical(ranks):
    """Every one of the 40 W steps of the whole run is a DDP forward of the objective. Combiners whose weights
    differ per shard (MGDA) or that rewrite the trunk's gradient after the backward (GCS, averaged after it,
    outside DDP) still leave every process with the same W."""
    for method in ("mgda", "gcs"):
        for key, value in ranks[0][method].items():
            if key.startswith("model."):
                assert torch.equal(ranks[1][method][key], value), (method, key)
    assert [int(r["run_ddp_calls"]) for r in ranks] == [40, 40]
    # MAXL with the step meta batch: θ2 (method.generator.label_net.*) and W the same on both processes (BatchNorm's
    # running statistics are per shard, as with any DDP run without SyncBatchNorm)
    weights = [k for k in ranks[0]["maxl_step"] if not any(s in k for s in ("running_", "num_batches_tracked"))]
    assert any(k.startswith("method.generator.label_net.") for k in weights)
    for key in weights:
        assert torch.equal(ranks[1]["maxl_step"][key], ranks[0]["maxl_step"][key]), key
    assert [int(r["mgda_ddp_calls"]) for r in ranks] == [6, 6] and [int(r["gcs_ddp_calls"]) for r in ranks] == [0, 0]


def test_a_curvature_batch_keeps_the_processes_identical(ranks):
    """With ``curvature_batch`` each process takes its shard's first rows for the Hessian and its whole shard for
    the forward-mode mixed term; the averaged hypergradient leaves φ and W the same on both processes."""
    runs = [r["curvature_batch"] for r in ranks]
    weights = [k for k in runs[0] if not any(s in k for s in ("running_", "num_batches_tracked"))]
    for key in weights:
        assert torch.equal(runs[1][key], runs[0][key]), key
    phi = [k for k in weights if k.startswith("method.")]
    assert phi and max(float((runs[0][k] - ranks[0]["run"][k]).abs().max()) for k in phi) > 1e-6  # not the default path


def test_the_implicit_scope_top_keeps_the_processes_identical(ranks):
    """``implicit_scope: top`` takes the trunk below its last block out of autograd inside each hyper step only;
    DDP's W steps between them and the averaged hypergradient leave both processes with the same W and φ (demo's
    network has BatchNorm, whose statistics are per shard, so a one-process run is not the reference here)."""
    runs = [r["implicit_scope_top"] for r in ranks]
    weights = [k for k in runs[0] if not any(s in k for s in ("running_", "num_batches_tracked"))]
    assert any(k.startswith("method.") for k in weights) and any(k.startswith("model.") for k in weights)
    for key in weights:
        assert torch.equal(runs[1][key], runs[0][key]), key


def test_shards_cover_the_batch_once(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    parts = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.shard(torch.arange(5)))
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4]]


@pytest.mark.slow
def test_train_stage_launches_torchrun_and_process_zero_writes(tmp_path):
    """`distributed.processes: 2` makes the train stage re-run itself under torchrun (two gloo processes on
    CPU). Sharing batches, the models equal a one-process run's to float rounding (toy2d, even batches);
    sharing seeds (each process trains one of the two seeds), they are the same bytes. Written once each."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import copy_repository, small_default_params

    params = small_default_params()
    params.update(method="auxilearn_linear", dataset="toy2d", seeds=[0, 1])
    params["datasets"]["toy2d"]["train"] = {"steps": 30, "batch_size": 16, "eval_every": 10}
    params["methods"]["bilevel"] = {"hyper_every": 5, "hyper_train_batch": 8, "hyper_aux_batch": 8}
    repo = copy_repository(tmp_path, params)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def stage(name: str) -> str:
        done = subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def models() -> dict[int, dict[str, torch.Tensor]]:
        assert sorted(p.name for p in (repo / "models").iterdir()) == ["run.json", "seed_0", "seed_1"]
        return {s: torch.load(repo / f"models/seed_{s}/model.pt", weights_only=True) for s in (0, 1)}

    for name in ("prepare", "split", "train"):
        stage(name)
    one = models()
    one_bytes = {s: (repo / f"models/seed_{s}/model.pt").read_bytes() for s in (0, 1)}
    for parallel in ("batches", "seeds"):
        (repo / "params.yaml").write_text(yaml.safe_dump(
            {**params, "distributed": {"processes": 2, "parallel": parallel}}, sort_keys=False))
        assert "torch.distributed.run --standalone --nproc-per-node=2" in stage("train")
        two = models()
        for seed, state in one.items():
            for key, value in state.items():
                torch.testing.assert_close(two[seed][key], value, rtol=1e-4, atol=1e-5, msg=f"{parallel} {key}")
        assert not (repo / ".dvc/tmp/train_seeds").exists()
    assert {s: (repo / f"models/seed_{s}/model.pt").read_bytes() for s in (0, 1)} == one_bytes  # seeds: exact
    curves = (repo / "reports/live/task_loss.tsv").read_text().splitlines()
    assert curves[0] == "step\tvalue\tseries" and curves.count(curves[0]) == 1  # one header, both seeds' rows
    assert {line.split("\t")[2].rsplit(" ", 1)[-1] for line in curves[1:]} == {"0", "1"}


def test_auto_device_takes_the_gpu_with_most_free_memory(monkeypatch):
    """Concurrent queue workers spread over the GPUs: `auto` (and `cuda`) picks the freest one."""
    from pipeline.engine.training import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    free = {0: 5, 1: 9, 2: 9}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 10))
    assert resolve_device("auto") == torch.device("cuda", 1)  # the first of the freest
    free[2] = 10
    assert resolve_device("cuda") == torch.device("cuda", 2)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_device("auto") == torch.device("cuda")  # torchrun: distributed.setup picks the local rank's
