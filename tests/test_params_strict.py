"""Strict, finite params (issue 15): no coercion, no NaN/inf, integers in range, each method's own settings checked
against the dataset before any stage writes, and the `validate` stage that checks the whole file on every repro."""
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.config.params import ParamsError, default_params_yaml, load_params, parse_params, read_yaml
from pipeline.core.schema import StrictModel
from stages import validate

DEFAULTS = yaml.safe_load(default_params_yaml())


def nested(path: str, value):
    """{"a": {"b": value}} from "a.b"."""
    out = value
    for key in reversed(path.split(".")):
        out = {key: out}
    return out


# (raw params, the key the message must name, a phrase of the message)
BAD = [
    # typos at every level, anywhere (unselected datasets included)
    ({"foo": 1}, "foo", "unknown key"),
    ({"methdo": "stl"}, "methdo", "unknown key"),
    (nested("datasets.toy2d.trian", {"steps": 10}), "datasets.toy2d.trian", "unknown key"),
    (nested("datasets.cub.prepare.standin_sed", 1), "datasets.cub.prepare.standin_sed", "unknown key"),
    (nested("methods.bilevel.lrr", 0.1), "methods.bilevel.lrr", "unknown key"),
    (nested("usefulness.damp", 0.1), "usefulness.damp", "unknown key"),
    # bad values in a dataset that is not selected
    (nested("datasets.cub.split.k_shot", -1), "datasets.cub.split.k_shot", "greater than or equal to 0"),
    (nested("datasets.nyuv2.model.stages", 0), "datasets.nyuv2.model.stages", "greater than or equal to 1"),
    # NaN and inf, in every float family
    (nested("datasets.noisy_aux.prepare.input_mean", math.nan), "datasets.noisy_aux.prepare.input_mean", "finite"),
    (nested("datasets.toy2d.prepare.sigma_main", math.inf), "datasets.toy2d.prepare.sigma_main", "finite"),
    (nested("datasets.toy2d.prepare.w_main", [math.nan, 1.0]), "datasets.toy2d.prepare.w_main.0", "finite"),
    (nested("datasets.toy2d.train.lr", math.inf), "datasets.toy2d.train.lr", "finite"),
    (nested("datasets.toy2d.train.weight_decay", math.nan), "datasets.toy2d.train.weight_decay", "finite"),
    (nested("datasets.cifar10.model.width", math.inf), "datasets.cifar10.model.width", "finite"),
    (nested("methods.bilevel.neumann_lr", math.inf), "methods.bilevel.neumann_lr", "finite"),
    (nested("methods.bilevel.max_hypergrad_norm", math.inf), "methods.bilevel.max_hypergrad_norm", "finite"),
    (nested("methods.uncertainty.init_log_variance", -math.inf), "methods.uncertainty.init_log_variance", "finite"),
    (nested("methods.labels.lookahead_lr", math.nan), "methods.labels.lookahead_lr", "finite"),
    (nested("usefulness.damping", math.nan), "usefulness.damping", "finite"),
    (nested("datasets.toy2d.methods.bilevel.lr", math.inf), "datasets.toy2d.methods: bilevel.lr", "finite"),
    # no coercion: bool -> int, float -> int, str -> number, int -> bool
    (nested("datasets.toy2d.train.steps", True), "datasets.toy2d.train.steps", "valid integer"),
    (nested("datasets.toy2d.train.steps", 10.0), "datasets.toy2d.train.steps", "valid integer"),
    (nested("datasets.toy2d.train.lr", "0.1"), "datasets.toy2d.train.lr", "valid number"),
    (nested("datasets.toy2d.train.lr", True), "datasets.toy2d.train.lr", "valid number"),
    (nested("datasets.shapenet_part.prepare.normalize", 1), "datasets.shapenet_part.prepare.normalize", "boolean"),
    (nested("methods.labels.psi", True), "methods.labels.psi", "valid integer"),
    (nested("datasets.toy2d.prepare.w_main", [True, 1.0]), "datasets.toy2d.prepare.w_main.0", "valid number"),
    (nested("datasets.nyuv2.prepare.image_size", [30.0, 40]), "datasets.nyuv2.prepare.image_size.0", "valid integer"),
    ({"threads": True}, "threads", "valid integer"),
    # integers in range
    ({"seeds": [1e23]}, "seeds.0", "valid integer"),
    ({"seeds": [10**23]}, "seeds", "out of range"),
    ({"seeds": [-1]}, "seeds", "out of range"),
    (nested("datasets.toy2d.split.seed", -3), "datasets.toy2d.split.seed", "out of range"),
    (nested("datasets.toy2d.train.steps", 2**64), "datasets.toy2d.train.steps", "out of range"),
    # selection and compatibility
    ({"dataset": "imagenet"}, "dataset", "unknown dataset 'imagenet'"),
    ({"method": "maxl", "dataset": "cifar10", **nested("methods.labels.psi", [2, 3, 4])},
     "methods.labels.psi", "3 entries, but dataset cifar10 has 10 label groups"),
    ({"method": "auxilearn_labels", "dataset": "cifar10", **nested("datasets.cifar10.methods.labels.psi", [2, 3])},
     "datasets.cifar10.methods.labels.psi", "2 entries"),
    ({"method": "random", "dataset": "cifar100", **nested("datasets.cifar100.prepare.primary_level", "coarse"),
      **nested("methods.labels.psi", [2] * 10)}, "methods.labels.psi", "has 5 label groups"),
    ({"method": "maxl", "dataset": "shapenet_part", **nested("datasets.shapenet_part.methods.labels.psi", [6] * 5)},
     "datasets.shapenet_part.methods.labels.psi", "has 6 label groups"),
    ({"method": "maxl", "dataset": "toy2d"}, "method maxl", "datasets that fit"),
]


@pytest.mark.parametrize("raw, key, text", BAD, ids=[f"{i}-{case[1]}" for i, case in enumerate(BAD)])
def test_bad_values_are_refused_naming_the_key(raw, key, text):
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "params.yaml")
    msg = str(err.value)
    assert msg.startswith("params.yaml: invalid parameters"), msg
    assert key in msg and text in msg, msg


@pytest.mark.parametrize("raw", [
    nested("datasets.toy2d.train.lr", 1),  # an integer is a valid float
    nested("datasets.toy2d.prepare.w_main", [2, 1]),  # YAML's list for a tuple
    nested("datasets.nyuv2.prepare.image_size", [30, 40]),
    nested("methods.labels.psi", [3, 4]),  # toy2d does not run the label methods: ψ's length is not its business
    {"method": "maxl", "dataset": "cifar10", **nested("methods.labels.psi", list(range(1, 11)))},
    {"method": "maxl", "dataset": "cifar10", **nested("datasets.cifar10.prepare.standin_num_classes", 3),
     **nested("methods.labels.psi", [2, 2, 2])},
    {"method": "maxl", "dataset": "cifar100", **nested("datasets.cifar100.prepare.primary_level", "coarse"),
     **nested("methods.labels.psi", [2] * 5)},
    # a real ShapeNet release's categories come from its folder: checked when training starts, not here
    {"method": "maxl", "dataset": "shapenet_part",
     "datasets": {"shapenet_part": {"prepare": {"source": "hdf5", "root": "data/raw/shapenet_part"}, "methods": {"labels": {"psi": [2, 2]}}}}},
    {"seeds": [0, 2**32 - 1]},
])
def test_valid_values_still_parse(raw):
    parse_params(raw)


def test_errors_of_a_union_make_one_line_for_the_key():
    with pytest.raises(ParamsError) as err:
        parse_params(nested("methods.bilevel.neumann_lr", math.nan))
    lines = str(err.value).splitlines()[1:]
    assert lines == ["  methods.bilevel.neumann_lr: Input should be a finite number; or Input should be 'auto'"]


def test_every_section_is_strict_and_finite():
    """Every schema class of params.yaml inherits the strict, finite settings."""
    from pipeline.config.params import params_model

    seen, todo = set(), [params_model()]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        assert issubclass(cls, StrictModel), cls
        assert cls.model_config["strict"] and cls.model_config["allow_inf_nan"] is False, cls
        for field in cls.model_fields.values():
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, StrictModel):
                todo.append(sub)
    assert len(seen) > 20


def test_yaml_reads_floats_as_dvc_does():
    """`lr: 1e-3` is a number (YAML 1.2, as DVC reads it), not the string PyYAML's YAML 1.1 makes of it."""
    raw = read_yaml("a: 1e-3\nb: 1.5e+2\nc: .nan\nd: -.inf\ne: 10\nf: '1e-3'\ng: 1_000\n")
    assert raw["a"] == 1e-3 and raw["b"] == 150.0 and math.isnan(raw["c"]) and raw["d"] == -math.inf
    assert raw["e"] == 10 and isinstance(raw["e"], int) and raw["f"] == "1e-3" and raw["g"] == 1000


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_yaml_given_values(tmp_path):
    ok = load_params(write(tmp_path, "datasets:\n  toy2d:\n    train: {lr: 1e-3, steps: 10}\n"))
    assert ok.datasets.toy2d.train.lr == 1e-3
    for text, key in [("seeds: [1e23]\n", "seeds.0"), ("datasets: {toy2d: {train: {steps: true}}}\n",
                                                      "datasets.toy2d.train.steps"),
                      ("datasets: {noisy_aux: {prepare: {input_mean: .nan}}}\n",
                       "datasets.noisy_aux.prepare.input_mean")]:
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            load_params(write(tmp_path, text))


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_file_is_named_with_the_way_out(tmp_path, text):
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, text))
    assert "params.yaml: the file is empty" in str(err.value) and "python -m pipeline.config" in str(err.value)


# -- the validate stage -------------------------------------------------------------------------------------------

def run_validate(tmp_path: Path, text: str):
    (tmp_path / "params.yaml").write_text(text)
    marker = tmp_path / "data/params_valid.txt"
    return CliRunner().invoke(validate.main, ["--params", str(tmp_path / "params.yaml"), "--marker", str(marker)]), marker


def test_a_refused_experiment_puts_back_the_file_it_started_from_of_the_last_accepted_and_the_baseline(
        tmp_path, monkeypatch):
    """After a successful experiment the workspace holds its params (the last accepted file); after `git
    checkout params.yaml` it holds the baseline's. A -S that is then refused changes only its own key, so the file
    put back is, in each case, the one the run started from, not the other."""
    import subprocess

    monkeypatch.chdir(tmp_path)
    baseline = default_params_yaml()
    experiment = yaml.safe_load(baseline)
    experiment.update(method="auxilearn_convnet", seeds=[0])
    experiment = yaml.safe_dump(experiment)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], check=True)
    Path("params.yaml").write_text(baseline)
    subprocess.run([*git, "add", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], check=True)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.setenv("DVC_EXP_NAME", "an-experiment")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", rev)
    last_valid = Path(".dvc/tmp/params.last_valid.yaml")
    monkeypatch.setattr(validate, "LAST_VALID", last_valid)

    for started_from in (experiment, baseline):  # the experiment's file accepted first, the baseline's then
        last_valid.parent.mkdir(parents=True, exist_ok=True)
        last_valid.write_text(experiment)
        refused = yaml.safe_load(started_from)
        refused["method"] = "auxilearn_nonexistent"
        Path("params.yaml").write_text(yaml.safe_dump(refused))
        result = CliRunner().invoke(validate.main, ["--marker", "data/params_valid.txt"])
        assert result.exit_code != 0 and "unknown method 'auxilearn_nonexistent'" in result.output
        assert "is back as it was before this `dvc exp run`" in result.output
        assert Path("params.yaml").read_text() == started_from
        assert "auxilearn_nonexistent" in Path("params.rejected.yaml").read_text()


def test_validate_writes_a_constant_marker(tmp_path):
    result, marker = run_validate(tmp_path, default_params_yaml())
    assert result.exit_code == 0, result.output
    assert marker.read_text() == "valid\n"
    before = marker.stat().st_mtime_ns
    edited = yaml.safe_load(default_params_yaml())
    edited["datasets"]["toy2d"]["train"]["lr"] = 0.5
    result, marker = run_validate(tmp_path, yaml.safe_dump(edited))
    assert result.exit_code == 0 and marker.read_text() == "valid\n"
    assert marker.stat().st_mtime_ns == before  # untouched: same bytes, so DVC re-runs nothing downstream
    assert [p.name for p in marker.parent.iterdir()] == ["params_valid.txt"]  # no temporary left


@pytest.mark.parametrize("edit, key", [
    (lambda p: p.update(foo=1), "foo: unknown key"),
    (lambda p: p["datasets"]["cub"]["split"].update(k_shot=-1), "datasets.cub.split.k_shot"),
    (lambda p: p["datasets"]["noisy_aux"]["prepare"].update(input_mean=math.nan),
     "datasets.noisy_aux.prepare.input_mean"),
    (lambda p: p.update(dataset="imagenet"), "dataset: unknown dataset 'imagenet'"),
    (lambda p: p.update(method="maxl", dataset="cifar10") or p["methods"]["labels"].update(psi=[2, 3, 4]),
     "methods.labels.psi: 3 entries"),
])
def test_validate_refuses_and_leaves_the_marker_as_it_was(tmp_path, edit, key):
    marker = tmp_path / "data/params_valid.txt"
    marker.parent.mkdir()
    marker.write_bytes(b"valid\n")
    params = yaml.safe_load(default_params_yaml())
    edit(params)
    result, _ = run_validate(tmp_path, yaml.safe_dump(params))
    assert result.exit_code == 1
    assert key in result.output and "Traceback" not in result.output, result.output
    assert marker.read_bytes() == b"valid\n" and sorted(p.name for p in marker.parent.iterdir()) == ["params_valid.txt"]


def test_validate_on_an_empty_file_writes_nothing(tmp_path):
    result, marker = run_validate(tmp_path, "")
    assert result.exit_code == 1 and "the file is empty" in result.output
    assert not marker.exists()


def test_every_stage_of_dvc_yaml_depends_on_the_validation():
    """dvc.yaml: `validate` reads the whole params.yaml; every other stage waits for its marker."""
    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    assert stages["validate"]["cmd"] == "python -m stages.validate"
    assert stages["validate"]["params"] == [{"params.yaml": None}]  # every key of the file: any change re-runs it
    for name, stage in stages.items():
        if name != "validate":
            body = stage.get("do", stage)
            assert "data/params_valid.txt" in body["deps"], name


def test_root_elsewhere_is_refused_in_params_yaml_with_the_tracked_folder_named(tmp_path):
    """dvc.yaml tracks data/raw/<name>: a params file whose root is elsewhere would be read without DVC seeing
    its files change. Code that calls parse_params (tests on fixture folders) may point anywhere."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"cub": {"prepare": {"source": "path", "root": "/data/CUB"}}}}))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert "datasets.cub.prepare.root = /data/CUB" in message and "ln -s /data/CUB data/raw/cub" in message
    path.write_text(yaml.safe_dump({"datasets": {"cub": {"prepare": {"source": "path", "root": "data/raw/cub"}}}}))
    load_params(path)  # the tracked folder itself
    parse_params({"datasets": {"cub": {"prepare": {"source": "path", "root": "/data/CUB"}}}})


def test_skeleton_has_no_overrides_and_every_section_dvc_reads():
    """params.yaml's skeleton parses to the defaults and holds an (empty) section for every params key dvc.yaml
    names, so DVC finds them; nothing else, so `dvc exp show` lists only what a run changes."""
    from pipeline.core.registry import DATASETS

    skeleton = read_yaml(default_params_yaml())
    assert parse_params(skeleton).model_dump() == parse_params({}).model_dump()
    assert set(skeleton) == {"method", "dataset", "seeds", "device", "threads", "datasets", "methods", "usefulness",
                             "distributed"}
    assert set(skeleton["datasets"]) == set(DATASETS.names())
    assert all(v == {} for sections in skeleton["datasets"].values() for v in sections.values())
    assert all(v == {} for v in skeleton["methods"].values()) and skeleton["usefulness"] == {}
    assert read_yaml((Path(__file__).parents[1] / "params.yaml").read_text()) == skeleton  # the committed file is the skeleton


def test_a_dataset_sets_its_usefulness_defaults_and_written_keys_win():
    """demo's analysis would take ~20 min at the global 64 × 8 batches: its package sets 16 × 4; a key the user
    writes under ``usefulness`` still wins, and other datasets keep the global defaults."""
    assert (parse_params({}).usefulness.batch_size, parse_params({}).usefulness.batches) == (16, 4)
    mine = parse_params({"usefulness": {"batches": 2}}).usefulness
    assert (mine.batch_size, mine.batches) == (16, 2)
    assert parse_params({"dataset": "toy2d"}).usefulness.batch_size == 64


@pytest.mark.parametrize("method", ["jtds", "maoal"])
def test_a_curvature_batch_is_refused_where_the_hyper_step_has_its_own_objectives(method):
    """JTDS and MAOAL build their own L_T for the hyper step: ``curvature_batch`` cannot split it, and validation
    says so before any data exist; the AuxiLearn family accepts it."""
    with pytest.raises(ParamsError, match=r"methods\.bilevel.*curvature_batch = 4: method " + method):
        parse_params({"method": method, "dataset": "cub", "methods": {"bilevel": {"curvature_batch": 4}}})
    parse_params({"method": "auxilearn_nonlinear", "dataset": "cub", "methods": {"bilevel": {"curvature_batch": 4}}})

    from pipeline.methods.bilevel import BilevelConfig
    from pipeline.methods.outer.implicit import ImplicitOuterUpdate

    with pytest.raises(ValueError, match="curvature_batch"):  # the outer update itself refuses too
        ImplicitOuterUpdate([], BilevelConfig(curvature_batch=4), objectives=lambda method, ctx: None)


def test_an_implicit_scope_short_of_w_is_refused_for_maoal_and_names_the_values():
    """MAOAL's φ scales each trunk module's gradient: ``implicit_scope: top`` would leave all but the last module's
    importances without a hypergradient, so validation refuses it; JTDS and the AuxiLearn family accept it, and an
    unknown value names the allowed ones."""
    with pytest.raises(ParamsError, match=r"methods\.bilevel.*implicit_scope = top: method maoal"):
        parse_params({"method": "maoal", "dataset": "cub", "methods": {"bilevel": {"implicit_scope": "top"}}})
    for method in ("jtds", "auxilearn_linear", "auxilearn_labels"):
        parse_params({"method": method, "dataset": "cub", "methods": {"bilevel": {"implicit_scope": "top"}}})
    with pytest.raises(ParamsError, match=r"implicit_scope.*'all' or 'top'"):
        parse_params({"method": "auxilearn_linear", "methods": {"bilevel": {"implicit_scope": "last"}}})
