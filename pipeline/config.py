"""The assembler of the ``params.yaml`` schema. Every stage validates the whole file here before doing any work.

The bases every plugin builds on are in ``pipeline.schema`` (which imports nothing of the project); this module
sits above the registries and is imported by the stages, never by a method or dataset.

Sections that belong to a pluggable concept (a dataset's generator settings, a method family's
hyperparameters) are declared by that concept's own module and assembled from the registries, so
adding a dataset or a method never means editing this file.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, Field, ValidationError, ValidationInfo, create_model, field_validator,
                      model_validator)

from pipeline.schema import ParamsError, StrictModel, TrainConfig

PARAMS_FILE = Path("params.yaml")


def _section(name: str, configs: dict[str, type[BaseModel]]) -> type[BaseModel]:
    fields: dict[str, Any] = {key: (cfg, cfg()) for key, cfg in configs.items()}
    return create_model(name, __base__=StrictModel, **fields)


def _dataset_profile(name: str, dataset: Any, method_sections: dict[str, type[BaseModel]]) -> type[BaseModel]:
    """``datasets.<name>``: what each stage reads for this dataset (prepare, split, model, train), and
    ``methods``: per-dataset overrides of ``methods.<section>`` keys (the papers tune φ per dataset).

    The dataset's own ``default_split``/``default_train``/``default_methods`` sit under whatever the
    user writes, so a partial section (``train: {steps: 50}``) keeps the dataset's other defaults.
    """
    dataset_defaults = {"split": dataset.default_split, "train": dataset.default_train}

    def merge_defaults(cls: Any, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        merged = dict(raw)
        for key, defaults in dataset_defaults.items():
            given = raw.get(key, {})
            if isinstance(given, dict):
                merged[key] = {**defaults, **given}
        given_methods = raw.get("methods", {})
        if isinstance(given_methods, dict):
            merged["methods"] = {section: {**dataset.default_methods.get(section, {}), **(given_methods.get(section) or {})}
                                 for section in {*dataset.default_methods, *given_methods}}
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
        methods=(dict[str, dict[str, Any]], {k: dict(v) for k, v in dataset.default_methods.items()}),
    )


def _build_params_model() -> type[BaseModel]:
    from pipeline.registry import DATASETS
    import torch

    from pipeline.methods.base import build_method, method_config_sections
    from pipeline.registry import METHODS
    from pipeline.usefulness import UsefulnessConfig

    sections = method_config_sections()
    datasets_section = _section("DatasetsConfig", {n: _dataset_profile(n, DATASETS.get(n), sections) for n in DATASETS})
    methods_section = _section("MethodsConfig", sections)

    class Params(StrictModel):
        method: str = "auxilearn_linear"
        dataset: str = "toy2d"
        seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
        device: Literal["auto", "cpu", "cuda"] = "auto"
        threads: int = Field(1, ge=1, description="CPU intra-op threads of every stage (torch.set_num_threads): "
                                                 "fixed, so results do not depend on the machine's core count")
        datasets: datasets_section = Field(default_factory=datasets_section)  # type: ignore[valid-type]
        methods: methods_section = Field(default_factory=methods_section)  # type: ignore[valid-type]
        usefulness: UsefulnessConfig = Field(default_factory=UsefulnessConfig)

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
                size = getattr(profile.prepare, "num_samples", None)  # None: known only after ingest
                held_out = sum(getattr(profile.split, k, 0) for k in ("aux", "val", "test"))
                if size is not None and held_out >= size:
                    raise ValueError(
                        f"datasets.{name}.split: aux + val + test = {held_out} leaves no training data "
                        f"(datasets.{name}.prepare.num_samples = {size})"
                    )
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
            """``methods.<section>`` with this dataset's overrides (``datasets.<dataset>.methods.<section>``) on top."""
            cfg = getattr(self.methods, section)
            overrides = self.profile.methods.get(section, {})
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
                          "write them out, e.g. regenerate the defaults with `python -m pipeline.config > params.yaml`")
    return parse_params(raw, str(path))


PARAMS_HEADER = """\
# Parameters of the whole pipeline, validated by pipeline/config.py before any stage does work.
# `method` and `dataset` pick the run; datasets.<name>.prepare / split / model / train are read by the
# prepare, split and train stages only; datasets.<name>.methods overrides methods.<section> keys for that
# dataset (the papers tune φ per dataset); methods.<section> holds each method family's hyperparameters.
# Every dataset is a procedural stand-in unless its prepare.source names a real format and root points at it.
# Regenerate the defaults with: python -m pipeline.config > params.yaml
"""


def default_params_yaml() -> str:
    """params.yaml with every default, and the registered methods and datasets listed in the header."""
    from pipeline.registry import DATASETS
    from pipeline.registry import METHODS

    body = yaml.safe_dump(parse_params({}).model_dump(mode="json"), sort_keys=False)
    return (PARAMS_HEADER + f"# Methods: {', '.join(METHODS.names())}.\n"
            f"# Datasets: {', '.join(DATASETS.names())}.\n" + body)


if __name__ == "__main__":
    print(default_params_yaml(), end="")
