"""The assembler of the ``params.yaml`` schema. Every stage validates the whole file here before doing any work.

The bases every plugin builds on are in ``pipeline.core.schema`` (which imports nothing of the project); this module
sits above the registries and is imported by the stages, never by a method or dataset.

Sections that belong to a pluggable concept (a dataset's generator settings, a method family's
hyperparameters) are declared by that concept's own module and assembled from the registries, so
adding a dataset or a method never means editing this file.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import click
import yaml
from pydantic import (BaseModel, Field, ValidationError, ValidationInfo, create_model, field_validator,
                      model_validator)

from pipeline.core.schema import ParamsError, StrictModel, TrainConfig

PARAMS_FILE = Path("params.yaml")
DEFAULT_DATASET = "demo"  # the embedded problem every registered method runs on


def _section(name: str, configs: dict[str, type[BaseModel]]) -> type[BaseModel]:
    fields: dict[str, Any] = {key: (cfg, cfg()) for key, cfg in configs.items()}
    return create_model(name, __base__=StrictModel, **fields)


def _dataset_profile(name: str, dataset: Any, method_sections: dict[str, type[BaseModel]]) -> type[BaseModel]:
    """``datasets.<name>``: what each stage reads for this dataset (prepare, split, model, train), and
    ``methods``: the user's per-dataset overrides of ``methods.<section>`` keys.

    The dataset's own ``default_split``/``default_train`` sit under whatever the user writes, so a partial
    section (``train: {steps: 50}``) keeps the dataset's other defaults. Its ``default_methods`` are applied
    by ``Params.method_config``, under the keys the user writes in ``methods.<section>``.
    """
    def merge_defaults(cls: Any, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        merged = dict(raw)
        given_split = raw.get("split", {})
        dataset_defaults = {"split": _split_defaults(dataset, raw.get("prepare", {}),
                                                     given_split if isinstance(given_split, dict) else {}),
                            "train": dataset.default_train}
        for key, defaults in dataset_defaults.items():
            given = raw.get(key, {})
            if isinstance(given, dict):
                merged[key] = {**defaults, **given}
        given_methods = raw.get("methods", {})
        if isinstance(given_methods, dict):
            merged["methods"] = {section: keys or {} for section, keys in given_methods.items()}
        return merged

    def check_method_overrides(cls: Any, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for section, keys in v.items():
            if section not in method_sections:
                raise ValueError(f"{section}: unknown method section; known: {', '.join(sorted(method_sections))}")
            unknown = sorted(set(keys) - set(method_sections[section].model_fields))
            if unknown:
                raise ValueError(f"{section}: unknown key {', '.join(unknown)}")
            try:
                method_sections[section](**keys)
            except ValidationError as err:
                first = err.errors()[0]
                loc = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))
                raise ValueError(f"{section}.{loc}: {first['msg']}") from None
        return v

    return create_model(
        f"{name}_profile",
        __base__=StrictModel,
        __validators__={"_merge_defaults": model_validator(mode="before")(merge_defaults),
                        "_check_methods": field_validator("methods")(check_method_overrides)},
        prepare=(dataset.Config, dataset.Config()),
        split=(dataset.SplitConfig, dataset.SplitConfig(**dataset.default_split)),
        model=(dataset.ModelConfig, dataset.ModelConfig()),
        train=(TrainConfig, TrainConfig(**dataset.default_train)),
        methods=(dict[str, dict[str, Any]], {}),
    )


SPLIT_COUNTS = ("aux", "val", "test")  # a random split's held-out counts


def _split_defaults(dataset: Any, prepare: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The dataset's default split for the size its ``prepare`` section fixes. A random split's default counts
    (aux, val, test) are fractions of the dataset's default size, written as counts: for another size, each count
    the user does not give scales with it (rounded, at least 1), so that a smaller or larger stand-in keeps the
    proportions instead of running out of training data. Unchanged where the size is the default's or known only
    after ingest, or where ``prepare`` is invalid (its own check reports that)."""
    defaults = dataset.default_split
    scaled = [k for k in SPLIT_COUNTS if k in defaults and k not in given]
    if not scaled or not isinstance(prepare, dict):
        return defaults
    try:
        size, default_size = _known_size(dataset.Config(**prepare)), _known_size(dataset.Config())
    except (ValidationError, TypeError, ValueError):
        return defaults
    if size is None or default_size is None or size[0] == default_size[0]:
        return defaults
    return {**defaults, **{k: max(1, round(defaults[k] * size[0] / default_size[0])) for k in scaled}}


def _known_size(prepare: Any) -> tuple[int, str] | None:
    """A dataset's size when its prepare params fix it before preparing, with the keys it follows from; None when
    it is known only after ingest. ``num_samples`` is the size itself; ``sample_count()`` derives it."""
    if hasattr(prepare, "sample_count"):
        return prepare.sample_count()
    size = getattr(prepare, "num_samples", None)
    return None if size is None else (size, f"prepare.num_samples = {size}")


def _build_params_model() -> type[BaseModel]:
    from pipeline.core.registry import DATASETS
    import torch

    from pipeline.methods.base import build_method, method_config_sections
    from pipeline.core.registry import METHODS
    from pipeline.core.schema import UsefulnessConfig
    from pipeline.core.distributed import DistributedConfig

    sections = method_config_sections()
    datasets_section = _section("DatasetsConfig", {n: _dataset_profile(n, DATASETS.get(n), sections) for n in DATASETS})
    methods_section = _section("MethodsConfig", sections)

    class Params(StrictModel):
        method: str = "auxilearn_linear"
        dataset: str = DEFAULT_DATASET
        seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
        device: Literal["auto", "cpu", "cuda"] = "auto"
        threads: int = Field(1, ge=1, description="CPU intra-op threads of every stage (torch.set_num_threads): "
                                                 "fixed, so results do not depend on the machine's core count")
        data_loading: Literal["auto", "memory", "stream"] = Field(
            "auto", description="memory: every split held as tensors on the device; stream: batches read from the "
                                "prepared file by a DataLoader, evaluation in chunks (datasets with a file-backed "
                                "reader: cub, nyuv2, cityscapes, cifar10, cifar100, svhn); auto: stream when the dataset would "
                                "take more than stream_above_mb in memory. The same batches either way")
        workers: int = Field(2, ge=0, description="DataLoader worker processes of a streamed run (0: read in the "
                                                  "training process)")
        stream_above_mb: float = Field(1024.0, gt=0, description="data_loading: auto streams a dataset whose "
                                                                  "inputs and targets exceed this many MiB")
        datasets: datasets_section = Field(default_factory=datasets_section)  # type: ignore[valid-type]
        methods: methods_section = Field(default_factory=methods_section)  # type: ignore[valid-type]
        usefulness: UsefulnessConfig = Field(default_factory=UsefulnessConfig)
        distributed: DistributedConfig = Field(default_factory=DistributedConfig)

        @model_validator(mode="before")
        @classmethod
        def _dataset_usefulness_defaults(cls, raw: Any) -> Any:
            """The selected dataset's ``default_usefulness`` under the keys the user wrote in ``usefulness``."""
            if not isinstance(raw, dict):
                return raw
            name = raw.get("dataset", DEFAULT_DATASET)
            given = raw.get("usefulness", {})
            if not isinstance(name, str) or name not in DATASETS or not isinstance(given, dict):
                return raw  # the field validators name what is wrong
            return {**raw, "usefulness": {**DATASETS.get(name).default_usefulness, **given}}

        @field_validator("method", "dataset")
        @classmethod
        def _registered(cls, v: str, info: ValidationInfo) -> str:
            registry = METHODS if info.field_name == "method" else DATASETS
            if v not in registry:
                raise ValueError(f"unknown {registry.kind} {v!r}; known: {', '.join(registry.names())}")
            return v

        @field_validator("seeds")
        @classmethod
        def _unique_seeds(cls, v: list[int]) -> list[int]:
            if len(set(v)) != len(v):
                raise ValueError("seeds must be distinct")
            return v

        @model_validator(mode="after")
        def _method_fits_dataset(self) -> "Params":
            spec, dataset = METHODS.get(self.method), DATASETS.get(self.dataset)
            missing = spec.missing(dataset)
            if missing:
                fits = [name for name, cls in DATASETS.items() if not spec.missing(cls)]
                raise ValueError(f"method {self.method} needs a dataset with {', '.join(sorted(missing))}, which "
                                 f"dataset {self.dataset} does not have; datasets that fit: {', '.join(fits)}")
            lacks = getattr(self.dataset_config, "lacks", None)  # a capability some settings of a dataset lack
            reason = lacks(spec.requires) if callable(lacks) else None
            if reason:
                raise ValueError(f"method {self.method}: {reason}")
            return self

        @model_validator(mode="after")
        def _streaming_fits_dataset(self) -> "Params":
            if self.data_loading == "stream" and not DATASETS.get(self.dataset).streams():
                fits = [name for name, cls in DATASETS.items() if cls.streams()]
                raise ValueError(f"data_loading: stream needs a dataset with a file-backed reader, which dataset "
                                 f"{self.dataset} does not have (it is held in memory: use auto or memory); "
                                 f"datasets that stream: {', '.join(fits)}")
            return self

        @model_validator(mode="after")
        def _method_params_fit(self) -> "Params":
            """The selected method's own settings, as training will read them (its sections with the selected
            dataset's overrides on top), checked against what the dataset's params tell before any data exist."""
            spec = METHODS.get(self.method)
            sections = [s for s in (spec.config_section, "bilevel" if spec.uses_bilevel else None) if s]
            for section in sections:
                where = (f"methods.{section} with datasets.{self.dataset}.methods.{section}"
                         if section in self.profile.methods else f"methods.{section}")
                try:
                    cfg = self.method_config(section)
                except ValidationError as err:
                    first = err.errors()[0]
                    raise ValueError(f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
                if section == "bilevel" and cfg.curvature_batch and not spec.splits_hyper_batch:
                    fits = sorted(name for name, other in METHODS.items() if other.splits_hyper_batch)
                    raise ValueError(f"{where}.curvature_batch = {cfg.curvature_batch}: method {self.method} builds "
                                     f"its own hyper-step objectives and cannot split their batch; set it to 0 "
                                     f"(methods that can: {', '.join(fits)})")
                if section == "bilevel" and cfg.implicit_scope != "all" and spec.needs_whole_w:
                    raise ValueError(f"{where}.implicit_scope = {cfg.implicit_scope}: method {self.method}'s φ acts on "
                                     f"each trunk module, so its hypergradient needs the IFT over all of W; set it "
                                     f"to all")
                if section == spec.config_section and spec.check is not None:
                    try:
                        spec.check(cfg)
                    except ValueError as err:
                        raise ValueError(f"{where}.{err}") from None
                psi = getattr(cfg, "psi", None)
                known = getattr(self.dataset_config, "known_label_groups", None)
                groups = known() if callable(known) else None
                if isinstance(psi, list) and groups is not None and len(psi) != groups:
                    raise ValueError(
                        f"{where}.psi: {len(psi)} entries, but dataset {self.dataset} has {groups} label groups "
                        f"(known from datasets.{self.dataset}.prepare): give {groups} entries or one int")
            if not spec.needs_data:  # built without data: a setting its roles refuse is caught here, not in train
                try:
                    with torch.random.fork_rng(devices=[]):  # the caller's random draws stay as they were
                        build_method(self.method, 3, self)
                except Exception as err:  # noqa: BLE001 (whatever the roles refuse, reported with the keys)
                    raise ValueError(f"method {self.method} ({', '.join(f'methods.{s}' for s in sections)}): "
                                     f"{err}") from None
            return self

        @model_validator(mode="after")
        def _split_fits(self) -> "Params":
            for name in DATASETS:
                profile = getattr(self.datasets, name)
                known = _known_size(profile.prepare)
                held_out = sum(getattr(profile.split, k, 0) for k in ("aux", "val", "test"))
                if known is not None and held_out >= known[0]:
                    raise ValueError(f"datasets.{name}.split: aux + val + test = {held_out} leaves no training data "
                                     f"(datasets.{name}: {known[1]})")
            return self

        @property
        def profile(self) -> Any:
            return getattr(self.datasets, self.dataset)

        @property
        def dataset_config(self) -> Any:
            return self.profile.prepare

        @property
        def split(self) -> Any:
            return self.profile.split

        @property
        def train(self) -> TrainConfig:
            return self.profile.train

        def method_config(self, section: str) -> Any:
            """``methods.<section>`` as a run of this dataset reads it. From the bottom: the section's defaults,
            the dataset's own defaults (its ``default_methods``, e.g. noisy_aux's N), the keys written in
            ``methods.<section>``, the keys written in ``datasets.<dataset>.methods.<section>``. So a key the user
            writes is never hidden by a default."""
            cfg = getattr(self.methods, section)
            own_defaults = DATASETS.get(self.dataset).default_methods.get(section, {})
            overrides = {**{k: v for k, v in own_defaults.items() if k not in cfg.model_fields_set},
                         **self.profile.methods.get(section, {})}
            return type(cfg)(**{**cfg.model_dump(), **overrides}) if overrides else cfg

    return Params


_PARAMS_MODEL: type[BaseModel] | None = None


def params_model() -> type[BaseModel]:
    global _PARAMS_MODEL
    if _PARAMS_MODEL is None:
        _PARAMS_MODEL = _build_params_model()
    return _PARAMS_MODEL


# The tags pydantic adds to an error's location for the branch of a union (``int``, ``list[int]``,
# ``literal['auto']``, ``function-after[...]``): not keys of params.yaml.
_UNION_TAG = re.compile(r"^(int|float|str|bool|none|[a-z-]+\[.*\])$")


def _format(err: ValidationError, source: str) -> str:
    """One line per bad key (the union branches a value failed merged into that key's line)."""
    lines: dict[str, list[str]] = {}
    for e in err.errors():
        # empty for whole-file checks, whose message names the keys
        key = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        if msg not in lines.setdefault(key, []):
            lines[key].append(msg)
    text = [f"{key}: {'; or '.join(msgs)}" if key else "; ".join(msgs) for key, msgs in lines.items()]
    return f"{source}: invalid parameters\n  " + "\n  ".join(text)


def parse_params(raw: Any, source: str = "params") -> Any:
    """Validate an already-parsed mapping; raises ``ParamsError`` with one message naming every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of keys, not {type(raw).__name__}")
    try:
        return params_model().model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format(err, source)) from None


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats, as DVC (ruamel) reads the file: ``1e-3`` is a number, not
    the string PyYAML's YAML 1.1 makes of it (which strict types would then refuse)."""


_Yaml12Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                         for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_yaml(text: str) -> Any:
    """Parse params.yaml text (YAML 1.2 floats); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)


def load_params(path: Path | str = PARAMS_FILE) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found (run from the repository root)")
    try:
        raw = read_yaml(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        raise ParamsError(f"{path}: the file is empty; dvc.yaml reads its keys (dataset, datasets.<name>...): "
                          "write them out, e.g. regenerate the defaults with `python -m pipeline.config skeleton > params.yaml`")
    params = parse_params(raw, str(path))
    check_raw_folders(params, str(path))
    return params


def check_raw_folders(params: Any, source: str = "params.yaml") -> None:
    """A params file drives dvc.yaml, which reads and tracks ``data/raw/<name>`` as a dataset's raw folder: a
    ``root`` elsewhere would be read without DVC noticing when its files change. (Code that calls a dataset
    directly, e.g. a test on fixture files, may pass any ``root``.)"""
    from pipeline.datasets.shared.sources import default_root
    from pipeline.core.registry import DATASETS

    for name in DATASETS:
        prepare = getattr(params.datasets, name).prepare
        root = getattr(prepare, "root", None)
        if "root" in prepare.model_fields_set and root is not None and \
                Path(root).expanduser() != Path(default_root(name)):
            raise ParamsError(
                f"{source}: invalid parameters\n  datasets.{name}.prepare.root = {root}: dvc.yaml reads and tracks "
                f"{default_root(name)}; remove the key and put your files there, or link them: "
                f"git rm -r {default_root(name)} && ln -s {root} {default_root(name)}")


PARAMS_HEADER = """\
# What this run changes; every other setting is its default, defined in code next to what reads it.
# `method` and `dataset` pick the run. Below them, write only the keys you change (a key you write is shown by
# `dvc exp show`): datasets.<name>.prepare / split / model / train are read by the prepare, split and train
# stages of that dataset only; datasets.<name>.methods overrides methods.<section> keys for that dataset;
# methods.<section> holds a method family's hyperparameters; usefulness the usefulness stage's settings.
# Every default, with what it means: `python -m pipeline.config defaults [--dataset NAME] [--method NAME]`.
# From the command line a key that is not written here yet needs DVC's `++`:
#   dvc exp run -S ++datasets.toy2d.train.steps=500
# Regenerate this file (no overrides) with: python -m pipeline.config skeleton > params.yaml
"""

# The empty sections dvc.yaml's params dependencies name (DVC refuses a stage whose params key is missing).
STAGE_SECTIONS = ("prepare", "split", "model", "train", "methods")


def default_params_yaml() -> str:
    """params.yaml with no overrides: the run's selectors at their defaults and an empty section for everything
    dvc.yaml's stages read, with the registered methods and datasets listed in the header."""
    from pipeline.core.registry import DATASETS
    from pipeline.core.registry import METHODS

    defaults = parse_params({})
    body = {key: getattr(defaults, key) for key in ("method", "dataset", "seeds", "device", "threads")}
    body["datasets"] = {name: {section: {} for section in STAGE_SECTIONS} for name in DATASETS.names()}
    body["methods"] = {section: {} for section in type(defaults.methods).model_fields}
    body["usefulness"] = {}
    body["distributed"] = {}
    text = yaml.safe_dump(body, sort_keys=False, default_flow_style=None)
    return (PARAMS_HEADER + f"# Methods: {', '.join(METHODS.names())}.\n"
            f"# Datasets: {', '.join(DATASETS.names())}.\n" + text)


def defaults_yaml(dataset: str | None = None, method: str | None = None) -> str:
    """Every setting at its default (one dataset's and one method's sections when named), each with its
    description as a comment: the reference for the keys params.yaml may override."""
    from pipeline.core.registry import DATASETS, METHODS

    raw: dict[str, Any] = {} if dataset is None else {"dataset": dataset}
    if method is not None:
        raw["method"] = method
    elif dataset is not None:  # the default method may not fit this dataset: list it with the first that does
        fits = [m for m in METHODS.names() if not METHODS.get(m).missing(DATASETS.get(dataset))]
        if parse_params({}).method not in fits and fits:
            raw["method"] = fits[0]
    params = parse_params(raw)
    keep_methods = None
    if method is not None:
        spec = METHODS.get(method)
        keep_methods = {s for s in (spec.config_section, "bilevel" if spec.uses_bilevel else None) if s}
    lines: list[str] = []

    def scalar(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")

    def emit(model: BaseModel, indent: int, path: tuple[str, ...]) -> None:
        # with a dataset named, the method sections show what its runs read: its own defaults on top
        in_method_section = dataset is not None and len(path) == 2 and path[0] == "methods"
        own = DATASETS.get(dataset).default_methods.get(path[1], {}) if in_method_section else {}
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if path == ("datasets",) and dataset is not None and name != dataset:
                continue
            if path == ("methods",) and keep_methods is not None and name not in keep_methods:
                continue
            pad = "  " * indent
            if isinstance(value, BaseModel):
                lines.append(f"{pad}{name}:")
                section = params.method_config(name) if path == ("methods",) and dataset is not None else value
                emit(section, indent + 1, (*path, name))
                continue
            shown = method if (name == "method" and method is not None and not path) else value
            note = " ".join(field.description.split()) if field.description else ""
            if name in own:
                note = f"{dataset}'s default. {note}".strip()
            lines.append(f"{pad}{name}: {scalar(shown)}" + (f"  # {note}" if note else ""))

    emit(params, 0, ())
    return "\n".join(lines) + "\n"


@click.group()
def cli() -> None:
    """params.yaml helpers."""


@cli.command()
def skeleton() -> None:
    """Print params.yaml without overrides."""
    click.echo(default_params_yaml(), nl=False)


@cli.command()
@click.option("--dataset", default=None, help="only this dataset's sections")
@click.option("--method", default=None, help="only this method's sections")
def defaults(dataset: str | None, method: str | None) -> None:
    """Print every setting at its default, with descriptions."""
    try:
        click.echo(defaults_yaml(dataset, method), nl=False)
    except ParamsError as err:
        raise click.ClickException(str(err)) from None


if __name__ == "__main__":
    cli()
