"""MAXL's class-hierarchy experiments on CIFAR-100: the 4-level hierarchy read from pickles in the real format,
ψ from the levels, the Human baseline's targets, the Nearest Neighbour labeller (prototypes and assignment on a
hand case, its weights file), and the ψ-sweep table of ``pipeline.compare``."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import compare
from pipeline.config.params import ParamsError, parse_params
from pipeline.datasets.cifar100.hierarchy import COARSE_TO_GROUP, GROUP_TO_DOMAIN, standin_counts
from pipeline.datasets.cifar100.task import Cifar100
from pipeline.datasets.shared.base import DataError
from pipeline.methods.base import Batch, build_method
from pipeline.methods.generators.hierarchy import (balanced_psi, human_hierarchy, prototype_logits, prototype_rows,
                                                   resolve_psi)
from pipeline.methods.generators.labels import mask_softmax

# CIFAR-100's 20 superclass names, in the pickles' (alphabetical) order.
COARSE_NAMES = ["aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
                "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
                "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
                "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
                "vehicles_1", "vehicles_2"]
# MAXL Appendix A, Table 2, read by hand: each superclass's 10-class and 3-class level.
TABLE_2 = {"aquatic_mammals": ("medium animals", "animals"), "fish": ("small animals", "animals"),
           "flowers": ("vegetations", "vegetations"), "food_containers": ("household objects", "objects and scenes"),
           "fruit_and_vegetables": ("vegetations", "vegetations"),
           "household_electrical_devices": ("household objects", "objects and scenes"),
           "household_furniture": ("household objects", "objects and scenes"),
           "insects": ("invertebrates", "animals"), "large_carnivores": ("large animals", "animals"),
           "large_man-made_outdoor_things": ("construction", "objects and scenes"),
           "large_natural_outdoor_scenes": ("natural scenes", "objects and scenes"),
           "large_omnivores_and_herbivores": ("large animals", "animals"), "medium_mammals": ("medium animals", "animals"),
           "non-insect_invertebrates": ("invertebrates", "animals"), "people": ("people", "animals"),
           "reptiles": ("large animals", "animals"), "small_mammals": ("small animals", "animals"),
           "trees": ("vegetations", "vegetations"), "vehicles_1": ("vehicles", "objects and scenes"),
           "vehicles_2": ("vehicles", "objects and scenes")}
SPLIT = {"train_fraction": 0.5, "aux_fraction": 0.1, "val": 20}


def dump(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar100(root: Path, coarse_names=COARSE_NAMES) -> dict:
    """cifar-100-python in the real format: 2 training rows per fine class f (coarse f % 20, so superclass c holds
    fine classes c, c+20, ..., c+80) and one test row for each of 20 classes; tiny random images."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    fine = {"train": np.repeat(np.arange(100), 2), "test": np.arange(0, 100, 5)}
    for name, f in fine.items():
        dump(root / name, {b"batch_label": name.encode(), b"filenames": [b"x.png"] * len(f),
                           b"fine_labels": f.tolist(), b"coarse_labels": (f % 20).tolist(),
                           b"data": rng.integers(0, 256, size=(len(f), 3072), dtype=np.uint8)})
    dump(root / "meta", {b"fine_label_names": [f"fine_{k}".encode() for k in range(100)],
                         b"coarse_label_names": [n.encode() for n in coarse_names]})
    return {k: np.concatenate([fine["train"], fine["test"]]) for k in ("fine",)}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("c100") / "cifar-100-python"
    write_cifar100(root)
    return root


def prepared(root: Path, out: Path, **prepare):
    ds = Cifar100()
    out.mkdir(parents=True, exist_ok=True)
    ds.prepare(ds.Config(source="path", root=str(root), **prepare), out)
    return ds, ds.load(out)


def params_for(method: str, root: Path, **extra) -> object:
    prepare = {"source": "path", "root": str(root), **extra.pop("prepare", {})}
    return parse_params({"method": method, "dataset": "cifar100", "methods": {"labels": extra},
                         "datasets": {"cifar100": {"prepare": prepare, "split": SPLIT,
                                                   "model": {"backbone": "convnet4", "width": 0.25}}}})


# ---------------------------------------------------------------------------------------------- the levels


def test_four_levels_follow_maxl_table_2(cifar_root, tmp_path):
    _, data = prepared(cifar_root, tmp_path / "p", primary_level="group")
    meta = data.meta
    fine = meta["fine_labels"]
    assert np.array_equal(meta["coarse_labels"], fine % 20)
    for row in range(len(fine)):
        coarse_name = COARSE_NAMES[meta["coarse_labels"][row]]
        assert meta["group_names"][meta["group_labels"][row]] == TABLE_2[coarse_name][0]
        assert meta["domain_names"][meta["domain_labels"][row]] == TABLE_2[coarse_name][1]
    assert [len(meta[f"{k}_names"]) for k in ("domain", "group", "coarse", "fine")] == [3, 10, 20, 100]
    assert data.meta["num_classes"] == 10 and np.array_equal(data.targets[:, 0].numpy(), meta["group_labels"])
    assert meta["main_label"] == "group" and meta["auxiliary_label"] == "coarse"  # the next finer by default
    assert sorted(np.bincount(COARSE_TO_GROUP)) == [1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert np.bincount(GROUP_TO_DOMAIN).tolist() == [5, 1, 4]


def test_levels_need_the_20_superclasses(tmp_path):
    root = tmp_path / "bad"
    write_cifar100(root, coarse_names=COARSE_NAMES[:19] + ["extra_a", "extra_b"])
    with pytest.raises(DataError, match=r"bad: MAXL's 4-level hierarchy needs CIFAR-100's 20 superclasses.*found 21"):
        prepared(root, tmp_path / "p")


def test_standin_has_four_levels(tmp_path):
    ds = Cifar100()
    cfg = ds.Config(standin_num_classes=10, standin_subclasses=2, standin_train_per_class=4, standin_test_per_class=2,
                    primary_level="coarse")
    ds.prepare(cfg, tmp_path)
    data = ds.load(tmp_path)
    fine = data.meta["fine_labels"]
    assert np.array_equal(data.targets[:, 0].numpy(), fine // 2)
    assert np.array_equal(data.meta["group_labels"], fine // 4)
    assert np.array_equal(data.meta["domain_labels"], fine // 8)
    assert [len(data.meta[f"{k}_names"]) for k in ("domain", "group", "coarse", "fine")] == [2, 3, 5, 10]
    assert standin_counts(10) == {"fine": 10, "coarse": 5, "group": 3, "domain": 2}
    assert cfg.known_label_groups() == 5 and data.meta["auxiliary_label"] == "fine"


def test_level_settings_are_checked():
    with pytest.raises(ParamsError, match="main_label was replaced by primary_level.*primary_level: coarse"):
        parse_params({"dataset": "cifar100", "datasets": {"cifar100": {"prepare": {"main_label": "coarse"}}}})
    with pytest.raises(ParamsError, match="auxiliary_level domain must be finer than primary_level group"):
        parse_params({"datasets": {"cifar100": {"prepare": {"primary_level": "group", "auxiliary_level": "domain"}}}})
    with pytest.raises(ParamsError, match="method human needs a dataset with finer_labels.*datasets that fit: cifar100, demo$"):
        parse_params({"method": "human", "dataset": "cifar10"})
    with pytest.raises(ParamsError, match="method human: .*primary_level is fine, the finest level"):
        parse_params({"method": "human", "dataset": "cifar100"})
    cfg = parse_params({"method": "human", "dataset": "cifar100", "datasets": {"cifar100": {"prepare": {
        "primary_level": "domain", "auxiliary_level": "fine"}}}}).dataset_config
    assert cfg.auxiliary == "fine" and cfg.known_label_groups() == 2  # the stand-in's 2 domains (CIFAR-100: 3)


# ---------------------------------------------------------------------------------------------- ψ


def test_psi_follows_the_hierarchy(cifar_root, tmp_path):
    ds, data = prepared(cifar_root, tmp_path / "a", primary_level="coarse")
    assert resolve_psi(None, ds, data, 20) == [5] * 20  # 100 fine classes over 20 superclasses
    assert resolve_psi(3, ds, data, 20) == [3] * 20 and resolve_psi([1, 2], ds, data, 2) == [1, 2]
    ds, data = prepared(cifar_root, tmp_path / "b", primary_level="domain")  # auxiliary: the 10 groups
    torch.manual_seed(0)
    psi = resolve_psi(None, ds, data, 3)
    assert sorted(psi) == [3, 3, 4]
    torch.manual_seed(0)
    assert resolve_psi(None, ds, data, 3) == psi  # the extra class drawn from the method's seeded stream
    draws = set()
    for seed in range(20):
        torch.manual_seed(seed)
        draws.add(tuple(balanced_psi(10, 3)))
    assert draws == {(4, 3, 3), (3, 4, 3), (3, 3, 4)}
    ds, data = prepared(cifar_root, tmp_path / "c", primary_level="fine")  # no finer level: the old default
    assert resolve_psi(None, ds, data, 100) == [5] * 100
    gen = build_method("maxl", 1, params_for("maxl", cifar_root, prepare={"primary_level": "group",
                                                                           "auxiliary_level": "fine"}),
                       *prepared(cifar_root, tmp_path / "d", primary_level="group", auxiliary_level="fine")).generator
    assert gen.mask.sum(1).tolist() == [10] * 10 and gen.num_aux_classes == 100


# ---------------------------------------------------------------------------------------------- human


def test_human_targets_are_the_finer_labels(cifar_root, tmp_path):
    ds, data = prepared(cifar_root, tmp_path / "p", primary_level="coarse")
    method = build_method("human", 1, params_for("human", cifar_root, prepare={"primary_level": "coarse"}), ds, data)
    gen = method.generator
    assert method.head_outputs() == 100 and gen.mask.sum(1).tolist() == [5] * 20
    rows = torch.arange(len(data))
    batch = Batch(torch.zeros(len(rows), 3, 32, 32), data.targets[rows], rows, torch.ones(len(rows), dtype=torch.bool))
    soft = gen.soft_labels(batch)
    fine = torch.as_tensor(data.meta["fine_labels"])
    # superclass c's block holds its fine classes c, c+20, ..., c+80 in id order: fine f sits at 5·(f % 20) + f // 20
    assert torch.equal(soft.argmax(1), 5 * (fine % 20) + fine // 20)
    assert torch.equal(soft.sum(1), torch.ones(len(rows)))
    assert bool(gen.mask[data.targets[:, 0].long(), soft.argmax(1)].all())  # inside the row's own block
    assert gen.hyper_parameters() == [] and method.spec.group == "generated"


def test_human_hierarchy_of_domains_over_groups():
    group = torch.tensor(COARSE_TO_GROUP)
    domain = torch.tensor(GROUP_TO_DOMAIN)[group]
    psi, block = human_hierarchy(domain, group, 3, 10)
    assert psi == [5, 1, 4]  # animals: 5 groups; vegetations: 1; objects and scenes: 4
    assert block.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="finer class 1 has rows under main classes 0 and 1"):
        human_hierarchy(torch.tensor([0, 1]), torch.tensor([1, 1]), 2, 2)


# ---------------------------------------------------------------------------------------------- nearest neighbour


def test_prototypes_and_assignment_on_a_hand_case():
    proto = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0], [0.0, 4.0]])
    proto_class = torch.tensor([0, 0, 1, 1, 2])  # centres (1, 0), (11, 10), (0, 4); class 3 has no prototype
    queries = torch.tensor([[1.0, 1.0], [9.0, 9.0], [1.0, 3.0]])
    logits = prototype_logits(queries, proto, proto_class, 4)
    expected = -torch.tensor([[1.0, 181.0, 10.0], [145.0, 5.0, 106.0], [9.0, 149.0, 2.0]])
    assert torch.allclose(logits[:, :3], expected)
    assert logits.argmax(1).tolist() == [0, 1, 2]
    assert bool((logits[:, 3] < -1e30).all()) and bool(logits.isfinite().all())  # never assigned, finite
    mask = torch.tensor([[True, True, False, False], [False, False, True, True]])  # blocks {0, 1} and {2, 3}
    soft = mask_softmax(logits, torch.tensor([0, 0, 1]), mask)
    assert soft.argmax(1).tolist() == [0, 1, 2]  # query 2 is nearest class 0 overall, but its block is {2, 3}
    assert torch.allclose(soft[0, :2], torch.softmax(torch.tensor([-1.0, -181.0]), 0))
    assert soft[1, 1] == pytest.approx(1.0) and soft[2, 2] == pytest.approx(1.0)
    lone = mask_softmax(prototype_logits(queries, proto[:4], proto_class[:4], 4), torch.tensor([1, 1, 1]), mask)
    assert torch.equal(lone[:, 2:], torch.full((3, 2), 0.5))  # a block without any prototype: uniform, not NaN
    empty = torch.tensor([[True, True, False, False], [False, False, False, True]])
    assert torch.equal(mask_softmax(logits, torch.tensor([1]), empty)[0], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_prototype_rows_take_a_seeded_tenth_of_each_class():
    finer = np.array([0] * 40 + [1] * 3 + [2] * 10)
    train = np.arange(0, 53, dtype=np.int64)[::-1]
    rows = prototype_rows(finer, train[train != 50], 0.1, seed=4)
    assert np.bincount(finer[rows]).tolist() == [4, 1, 1] and 50 not in rows
    assert np.array_equal(rows, prototype_rows(finer, train[train != 50], 0.1, seed=4))
    assert not np.array_equal(rows, prototype_rows(finer, train[train != 50], 0.1, seed=5))


def backbone_file(path: Path, seed: int = 0) -> dict:
    """What a user provides: a state dict of the project's backbone (here random, as a fixture)."""
    from pipeline.models.classifiers import build_backbone

    torch.manual_seed(seed)
    state = build_backbone("convnet4", 0.25).state_dict()
    torch.save({f"net.backbone.{k}": v for k, v in state.items()}, path)  # as in a run's model.pt
    return state


def test_nearest_neighbour_labeller(cifar_root, tmp_path):
    ds, data = prepared(cifar_root, tmp_path / "p", primary_level="coarse")
    state = backbone_file(tmp_path / "w.pt")
    params = params_for("nearest_neighbour", cifar_root, prepare={"primary_level": "coarse"},
                        nn_weights=str(tmp_path / "w.pt"), nn_fraction=0.5)
    method = build_method("nearest_neighbour", 1, params, ds, data)
    gen = method.generator
    for k, v in gen.label_net.net.backbone.state_dict().items():
        assert torch.equal(v, state[k])  # the embedding starts from the file
    splits = ds.make_splits(data, params.split)
    train = set(np.concatenate([splits["train"], splits["aux"]]).tolist())
    known = torch.nonzero(gen.known_class >= 0).flatten()
    assert len(known) == len(gen.proto_x) and set(known.tolist()) <= train
    fine = torch.as_tensor(data.meta["fine_labels"])
    assert torch.equal(gen.known_class[known], 5 * (fine[known] % 20) + fine[known] // 20)  # human labels kept

    rows = torch.arange(len(data))
    x, y = ds.batch_transform(data.inputs[rows], data.targets[rows], train=False)
    batch = Batch(x, y, rows, torch.ones(len(rows), dtype=torch.bool))
    soft = gen.soft_labels(batch, train_mode=False)
    assert torch.allclose(soft.sum(1), torch.ones(len(rows)))
    assert bool((soft[~gen.mask[y[:, 0].long()]] == 0).all())  # Mask SoftMax: only the row's own block
    assert torch.equal(soft[known].argmax(1), gen.known_class[known])
    # the others: the nearest class mean of the prototype images' embeddings, by hand
    gen.label_net.eval()
    with torch.no_grad():
        emb, proto = gen.label_net(x), gen.label_net(gen.proto_x)
    centres = {int(c): proto[gen.proto_class == c].mean(0) for c in gen.proto_class.unique()}
    other = [r for r in range(len(data)) if gen.known_class[r] < 0]
    for r in other[:12]:
        block = torch.nonzero(gen.mask[int(y[r, 0])]).flatten().tolist()
        dist = {c: float(((emb[r] - centres[c]) ** 2).sum()) for c in block if c in centres}
        assert int(soft[r].argmax()) == min(dist, key=dist.get)
    # refined like MAXL: θ2 is the embedding, trained by the look-ahead through queries and prototypes
    theta2 = gen.hyper_parameters()
    assert theta2 and all(p.requires_grad for p in theta2) and method.outer.__class__.__name__ == "LookAheadUpdate"
    soft = gen.soft_labels(batch, track_hparams=True)
    (soft[other] * torch.randn_like(soft[other])).sum().backward()
    assert all(p.grad is not None for p in theta2) and sum(float(p.grad.abs().sum()) for p in theta2) > 0


def test_nearest_neighbour_weights_file_errors(cifar_root, tmp_path):
    missing = tmp_path / "absent.pt"
    with pytest.raises(ParamsError, match=f"methods.labels.nn_weights: {missing} does not exist"):
        params_for("nearest_neighbour", cifar_root, prepare={"primary_level": "coarse"}, nn_weights=str(missing))
    with pytest.raises(ParamsError, match="methods.labels.nn_weights: nearest_neighbour needs a local file"):
        params_for("nearest_neighbour", cifar_root, prepare={"primary_level": "coarse"})
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, wrong)
    ds, data = prepared(cifar_root, tmp_path / "p", primary_level="coarse")
    params = params_for("nearest_neighbour", cifar_root, prepare={"primary_level": "coarse"}, nn_weights=str(wrong))
    with pytest.raises(ValueError, match=f"methods.labels.nn_weights: {wrong} is not a state dict of this backbone"):
        build_method("nearest_neighbour", 1, params, ds, data)


# ---------------------------------------------------------------------------------------------- the ψ sweep table


def sweep_row(method, acc, psi=None, created="Dec 01, 2026"):
    r = {"Experiment": f"{method}-{psi}", "rev": f"r{method}{psi}", "typ": "branch_commit", "Created": created,
         "reports/metrics.json:dataset": "cifar10", "reports/metrics.json:method": method,
         "params.yaml:method": method, "params.yaml:dataset": "cifar10", "main_metric": "accuracy",
         "test.accuracy.mean": acc, "test.accuracy.sem": 0.5, "seeds": "[0, 1, 2]",
         "datasets.cifar10.train.steps": 400.0, "methods.labels.psi": psi}
    return r


def test_psi_sweep_table(monkeypatch):
    monkeypatch.setattr(compare, "read_details", lambda row: None)
    rows = compare.with_commits([sweep_row("stl", 70.0), *[sweep_row("maxl", 70.0 + p, float(p)) for p in (20, 2, 5)],
                                 sweep_row("maxl", 50.0, 2.0, created="Nov 01, 2026"), sweep_row("maxl", 60.0)])
    table = compare.render_table(compare.latest_per_setting(rows, "cifar10", "methods.labels.psi"), "cifar10")
    lines = table.splitlines()[2:]
    assert [line.split(" | ")[0:2] for line in lines] == [
        ["| stl", "70.00 ± 0.50"], ["| maxl (psi=2)", "72.00 ± 0.50"], ["| maxl (psi=5)", "75.00 ± 0.50"],
        ["| maxl (psi=20)", "90.00 ± 0.50"], ["| maxl (psi=default)", "60.00 ± 0.50"]]


def test_a_dataset_setting_groups_every_method(monkeypatch):
    """--by datasets.<d>.split.<key> (AuxiLearn's C.10 data-fraction grid): a dataset setting is read by every
    method, so each method gets a row per value, and an unwritten value shows the dataset's own default."""
    monkeypatch.setattr(compare, "read_details", lambda row: None)
    key = "datasets.cifar10.split.train_fraction"
    rows = [{**sweep_row(m, acc), key: frac} for m, acc, frac in (
        ("stl", 60.0, 0.1), ("stl", 70.0, None), ("auxilearn_labels", 61.0, 0.1), ("auxilearn_labels", 80.0, 1.0))]
    table = compare.render_table(compare.latest_per_setting(compare.with_commits(rows), "cifar10", key), "cifar10")
    default = compare.default_value(key, "cifar10", "stl")
    assert default == parse_params({"dataset": "cifar10", "method": "stl"}).profile.split.train_fraction
    assert sorted(line.split(" | ")[0:2] for line in table.splitlines()[2:]) == sorted([
        ["| stl (train_fraction=0.1)", "60.00 ± 0.50"], [f"| stl (train_fraction={default} (default))", "70.00 ± 0.50"],
        ["| auxilearn_labels (train_fraction=0.1)", "61.00 ± 0.50"],
        ["| auxilearn_labels (train_fraction=1)", "80.00 ± 0.50"]])


# ---------------------------------------------------------------------------------------------- the stages


def test_stage_chain_with_nearest_neighbour(tmp_path, monkeypatch):
    """prepare, split, train, evaluate and report without DVC on a tiny cifar100 stand-in at the coarse level, the
    embedding read from a file the test writes: the method is rebuilt from it in evaluate and report too."""
    import yaml
    from click.testing import CliRunner

    from pipeline.models.classifiers import build_backbone
    from stages import evaluate, prepare, report, split, train

    monkeypatch.chdir(tmp_path)
    torch.save(build_backbone("convnet4", 0.25).state_dict(), tmp_path / "emb.pt")  # bare backbone keys
    params = {"dataset": "cifar100", "method": "nearest_neighbour", "seeds": [0],
              "datasets": {"cifar100": {
                  "prepare": {"primary_level": "coarse", "standin_num_classes": 4, "standin_subclasses": 2,
                              "standin_train_per_class": 40, "standin_test_per_class": 5},
                  "split": {"train_fraction": 0.5, "val": 10}, "model": {"backbone": "convnet4", "width": 0.25},
                  "train": {"steps": 3, "eval_every": 3, "batch_size": 8}}},
              "methods": {"labels": {"nn_weights": "emb.pt", "diagnose_every": 3}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runner = CliRunner()
    for cmd, args in ((prepare.main, ["--dataset", "cifar100"]), (split.main, []), (train.main, []),
                      (evaluate.main, []), (report.main, [])):
        result = runner.invoke(cmd, args)
        assert result.exit_code == 0, result.output
    text = (tmp_path / "reports/report.md").read_text()
    assert "# nearest_neighbour on cifar100" in text and (tmp_path / "reports/figures/soft_labels.png").is_file()
