"""The study file: YAML loaded with `yaml.safe_load`, a profile overlaid, validated into `Study`.

Pure: no Ray, no MLflow. Every user mistake is a `StudyError` whose text is one line naming the
file, the key path, the bad value and what was expected.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from isnm import (ConfigError, check, default_config, flat, join, merged, metrics, nested, parse_config,
                  parse_dataclass, to_dict, unknown_key_message)
from study.errors import StudyError
from study.records import METRICS, SELECTABLE, TABULATED

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
# A study's name and profile name folders (ray_results/<name>-<profile>-<digest>, mlartifacts/<name>)
# and go into MLflow filters: letters, digits and a few marks, no path separators, no quotes, short
# enough that the folder name stays far below the 255 bytes a file system allows.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
SAFE_NAME_RULE = "1 to 100 letters, digits, '_', '.', '+' or '-', starting with a letter or digit"


@dataclass
class Resources:
    cpu: float = 1.0  # per trial
    gpu: float = 0.0  # per trial; fractions pack several trials on one GPU

    def check(self, path: str) -> None:
        check(self.cpu > 0, join(path, "cpu"), self.cpu, "a number > 0")
        check(self.gpu >= 0, join(path, "gpu"), self.gpu, "a number >= 0")


@dataclass
class AshaOptions:
    grace_period: int = 1  # epochs every trial runs before it may be stopped
    reduction_factor: float = 3.0

    def check(self, path: str) -> None:
        check(self.grace_period >= 1, join(path, "grace_period"), self.grace_period, "an integer >= 1")
        check(self.reduction_factor > 1, join(path, "reduction_factor"), self.reduction_factor, "a number > 1")


@dataclass
class Schedulers:
    """The trial schedulers a search may use; one for now."""
    asha: Optional[AshaOptions] = None


@dataclass
class Search:
    space: dict[str, dict[str, Any]]  # dotted config key -> {loguniform|uniform|randint: [low, high]} or {choice: [...]}
    algorithm: Literal["optuna", "random"] = "optuna"
    num_samples: int = 16
    metric: Literal[SELECTABLE] = metrics.VAL_ACC  # test_acc is refused: a configuration chosen on it is tested on it
    mode: Literal["max", "min"] = "max"
    scheduler: Optional[Schedulers] = None  # {asha: {grace_period: N}}

    def check(self, path: str) -> None:
        check(self.num_samples >= 1, join(path, "num_samples"), self.num_samples, "an integer >= 1")
        check(len(self.space) > 0, join(path, "space"), self.space, "at least one dotted key to search")
        for key, spec in self.space.items():
            check_distribution(spec, join(join(path, "space"), key))


def check_distribution(spec: dict, path: str) -> None:
    check(len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS, path, spec,
          f"one of {{{', '.join(DISTRIBUTIONS)}: ...}}")
    (kind, arg), = spec.items()
    if kind == "choice":
        check(isinstance(arg, list) and len(arg) > 0, join(path, kind), arg, "a non-empty list")
        return
    numeric = isinstance(arg, list) and len(arg) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)
    check(numeric and arg[0] < arg[1], join(path, kind), arg, "[low, high] with low < high")
    if kind == "loguniform":
        check(arg[0] > 0, join(path, kind), arg, "[low, high] with 0 < low")
    if kind == "randint":
        check(all(isinstance(v, int) for v in arg), join(path, kind), arg, "[low, high] integers")


EVAL_TIMESTEPS = "eval_timesteps"  # in a table's columns: a column per T that study.evaluate measured


@dataclass
class Table:
    """How `study.report` lays out the study's table (docs/reports.md, "Tables")."""
    rows: Union[str, list[str]] = "variant"  # keys printed first, repeats left blank ("variant" or dotted config keys)
    columns: list[str] = field(default_factory=list)  # keys printed on every line after the rows, and EVAL_TIMESTEPS
    split: Optional[str] = None  # one table per value of this key (paper Tables 2 and 3: dataset)
    method: Optional[str] = None  # a constant first "Method" column, e.g. "This work"
    metric: Union[Literal[TABULATED], list[Literal[TABULATED]]] = metrics.TEST_ACC  # several: one table each
    paper: dict[str, Any] = field(default_factory=dict)  # published figures of the (first) metric, nested by split, rows, columns
    labels: dict[str, str] = field(default_factory=dict)  # printed names of values, e.g. vgg_small: VGG
    extra: list[Literal[TABULATED]] = field(default_factory=list)  # columns of other final metrics, e.g. spike_rate, energy

    def check(self, path: str) -> None:
        check(len(self.metrics) > 0, join(path, "metric"), self.metric, "a metric or a non-empty list of metrics")
        check(not self.eval_timesteps or metrics.TEST_ACC in self.metrics, join(path, "metric"), self.metric,
              f"{metrics.TEST_ACC} among the metrics: the {EVAL_TIMESTEPS} columns are test accuracies, shown beside "
              f"it")

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(dict.fromkeys(self.metric))

    @property
    def row_keys(self) -> list[str]:
        return [self.rows] if isinstance(self.rows, str) else list(self.rows)

    @property
    def column_keys(self) -> list[str]:
        return [c for c in self.columns if c != EVAL_TIMESTEPS]

    @property
    def eval_timesteps(self) -> bool:
        return EVAL_TIMESTEPS in self.columns

    @property
    def keys(self) -> list[str]:
        """split, rows, columns: the keys that identify a cell of the table."""
        return ([self.split] if self.split else []) + self.row_keys + self.column_keys


@dataclass
class StudyFile:
    name: str
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)  # one isnm.train config shared by all trials
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # row name -> dotted-key overrides
    grid: dict[str, list[Any]] = field(default_factory=dict)  # dotted key -> values, crossed with variants
    seeds: list[int] = field(default_factory=lambda: [0])
    resources: Resources = field(default_factory=Resources)
    max_concurrent: Optional[int] = None
    retries: int = 2  # restarts of a failed trial from its last checkpoint
    search: Optional[Search] = None
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    table: Optional[Table] = None

    def check(self, path: str) -> None:
        check(SAFE_NAME.fullmatch(self.name) is not None, "name", self.name, SAFE_NAME_RULE)
        for profile in self.profiles:
            check_profile_name(profile)
        check(len(self.seeds) > 0, "seeds", self.seeds, "a non-empty list of integers")
        for i, seed in enumerate(self.seeds):
            check(self.seeds.index(seed) == i, f"seeds[{i}]", seed, "a seed not listed before")
        check(self.max_concurrent is None or self.max_concurrent >= 1, "max_concurrent",
              self.max_concurrent, "null or an integer >= 1")
        check(self.retries >= 0, "retries", self.retries, "an integer >= 0")
        if self.search is not None:
            check(not self.variants and not self.grid, "search", "with variants/grid",
                  "either a search or variants/grid, not both")
        for key, values in self.grid.items():
            check(len(values) > 0, join("grid", key), values, "a non-empty list of values")


@dataclass
class Study:
    """A validated study: the file's settings plus the base training config made complete."""
    path: str
    profile: Optional[str]
    spec: StudyFile
    base: dict  # complete isnm.train config (every key present)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        """Row name -> dotted overrides; a study without variants has one row named 'base'."""
        return self.spec.variants or {"base": {}}


def with_overrides(base: dict, overrides: dict[str, Any]) -> dict:
    return merged(base, nested(overrides))


TRAIN_KEYS = tuple(flat(default_config()))
FIXED_BY_STUDY = {"seed": "seeds are set by the top-level 'seeds:' list"}


def check_override_keys(overrides: dict[str, Any], path: str) -> None:
    for key in overrides:
        if key in FIXED_BY_STUDY:
            raise ConfigError(join(path, key), FIXED_BY_STUDY[key])
        if key not in TRAIN_KEYS:
            raise ConfigError(join(path, key), unknown_key_message(key, list(TRAIN_KEYS)))


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise StudyError(f"{path}: no such study file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError(f"{path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        raise StudyError(f"{path}: the file is empty; expected a study (name, base, variants, seeds, ...)")
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a mapping of study keys at the top, got {type(data).__name__}")
    return data


REPLACED_BY_PROFILE = ("variants", "grid", "seeds")


def check_profile_name(profile: str) -> None:
    check(SAFE_NAME.fullmatch(profile) is not None, "profiles", profile, f"a profile name of {SAFE_NAME_RULE}")


def with_profile(data: dict, profile: Optional[str]) -> dict:
    if profile is None:
        return data
    check_profile_name(profile)
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict) or profile not in profiles:
        known = ", ".join(profiles) if isinstance(profiles, dict) and profiles else "none"
        raise ConfigError("profiles", f"no profile {profile!r} (profiles in this file: {known})")
    overlay = profiles[profile]
    check(isinstance(overlay, dict), join("profiles", profile), overlay, "a mapping of study keys")
    for key in ("name", "profiles"):
        check(key not in overlay, join(join("profiles", profile), key), overlay.get(key), "not set by a profile")
    # the keys that define the set of trials are replaced whole, so a profile can run fewer rows
    replaced = {k: v for k, v in overlay.items() if k in REPLACED_BY_PROFILE}
    return {**merged(data, {k: v for k, v in overlay.items() if k not in REPLACED_BY_PROFILE}), **replaced}


def load_study(path: str | Path, profile: Optional[str] = None) -> Study:
    """Read, overlay `profile`, validate. Raises StudyError (one line) on any user mistake."""
    path = Path(path)
    data = read_yaml(path)
    try:
        data = with_profile(data, profile)
        spec: StudyFile = parse_dataclass(StudyFile, data)
        base = to_dict(parse_config(spec.base, "base"))
        check_override_keys(flat(spec.base), "base")
        for name, overrides in spec.variants.items():
            overrides = flat(overrides)
            check_override_keys(overrides, join("variants", name))
            parse_config(with_overrides(base, overrides), join("variants", name))
        for key, values in spec.grid.items():
            check_override_keys({key: None}, "grid")
            for i, value in enumerate(values):
                try:
                    parse_config(with_overrides(base, {key: value}))
                except ConfigError as exc:
                    raise ConfigError(f"grid.{key}[{i}]", exc.message) from None
        if spec.search is not None:
            check_override_keys(spec.search.space, "search.space")
            if METRICS[spec.search.metric].validation and base["validation"] == 0:
                raise ConfigError("search.metric", f"{spec.search.metric} needs a validation split, but "
                                                   f"base.validation is 0; set base.validation (0.1 is the default)")
        if spec.table is not None:
            for key in spec.table.keys:
                if key != "variant" and key not in TRAIN_KEYS:
                    raise ConfigError("table", unknown_key_message(key, ["variant", *TRAIN_KEYS]))
    except ConfigError as exc:
        raise StudyError(f"{path}: {exc}") from None
    return Study(str(path), profile, spec, base)
