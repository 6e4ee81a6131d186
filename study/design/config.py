"""The study file's parts as data: the dataclasses a study file is validated into (study.design.load reads it), and
the checks each part makes of itself.

Pure: no Ray, no MLflow. Every user mistake is a `ConfigError` naming the key path, the bad value and what was
expected; study.design.load puts the file's name before it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from isnm import CONFIG_KEYS, ConfigError, check, join, merged, metrics, nested, unknown_key_message
from study.records import SELECTABLE, TABULATED

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
# A study's name and profile name folders (ray_results/<name>-<profile>-<digest>, mlartifacts/<name>)
# and go into MLflow filters: letters, digits and a few marks, no path separators, no quotes, short
# enough that the folder name stays far below the 255 bytes a file system allows.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
SAFE_NAME_RULE = "1 to 100 letters, digits, '_', '.', '+' or '-', starting with a letter or digit"
# A variant's name labels its table row and its trials' run names, within MLflow's limit (a run name takes 250
# characters); a line break would split its row of a Markdown table.
VARIANT_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
VARIANT_NAME_RULE = "a variant name of 1 to 64 characters, none of them a line break, tab or other control character"


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


# What population-based training may change while a member trains: the value it trained each epoch with is logged per
# epoch (metric beta), as a run's params, which never change, could not hold it
PBT_MUTABLE = ("surrogate.beta",)


@dataclass
class Search:
    space: dict[str, dict[str, Any]] = field(default_factory=dict)  # dotted config key -> a distribution (optuna, random)
    algorithm: Literal["optuna", "random", "pbt"] = "optuna"
    num_samples: int = 16
    # test_acc is refused: a configuration chosen on it is tested on it. Two metrics and two modes, e.g. [val_acc,
    # val_energy] and [max, min]: a search for the trade-off (optuna's multi-objective sampler), reported as its front
    metric: Union[Literal[SELECTABLE], list[Literal[SELECTABLE]]] = metrics.VAL_ACC
    mode: Union[Literal["max", "min"], list[Literal["max", "min"]]] = "max"
    scheduler: Optional[Schedulers] = None  # {asha: {grace_period: N}}
    # pbt: `population` members train side by side; every `interval` epochs, all of them at that epoch (synchronous),
    # the worst quarter continue from the best quarter's checkpoints with `mutate`'s values perturbed (x0.8, x1.2) or
    # resampled (a chance in four)
    population: int = 8
    interval: int = 2
    mutate: dict[str, Any] = field(default_factory=dict)  # dotted key -> [low, high] (log-uniform), or a distribution

    def check(self, path: str) -> None:
        if self.algorithm == "pbt":
            check(self.population >= 2, join(path, "population"), self.population, "an integer >= 2")
            check(self.interval >= 1, join(path, "interval"), self.interval, "an integer >= 1 (epochs)")
            check(len(self.mutate) > 0, join(path, "mutate"), self.mutate, f"the key PBT changes: {', '.join(PBT_MUTABLE)}")
            check(not self.space, join(path, "space"), self.space, "no space with algorithm: pbt (mutate: says what "
                                                                   "it changes and within which range)")
            check(self.scheduler is None, join(path, "scheduler"), self.scheduler,
                  "no scheduler with algorithm: pbt (PBT is the scheduler)")
            for key in self.mutate:
                check(key in PBT_MUTABLE, join(path, "mutate"), key,
                      f"one of {', '.join(PBT_MUTABLE)}: the settings whose value each epoch is logged as a metric")
            for key, spec in self.mutations.items():
                check_distribution(spec, join(join(path, "mutate"), key))
            return
        check(not self.mutate, join(path, "mutate"), self.mutate, "mutate: only with algorithm: pbt")
        if isinstance(self.metric, list) or isinstance(self.mode, list):
            check(isinstance(self.metric, list) and isinstance(self.mode, list) and len(self.metric) == len(self.mode)
                  == 2 and self.metric[0] != self.metric[1], join(path, "metric"), self.metric,
                  "two different metrics with two modes, e.g. metric: [val_acc, val_energy], mode: [max, min]")
            check(self.algorithm == "optuna", join(path, "algorithm"), self.algorithm,
                  "optuna for two metrics (its multi-objective sampler)")
            check(self.scheduler is None, join(path, "scheduler"), self.scheduler,
                  "no scheduler with two metrics (ASHA stops trials on one metric)")
        check(self.num_samples >= 1, join(path, "num_samples"), self.num_samples, "an integer >= 1")
        check(len(self.space) > 0, join(path, "space"), self.space, "at least one dotted key to search")
        for key, spec in self.space.items():
            check_distribution(spec, join(join(path, "space"), key))

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """(metric, mode) of each thing the search optimises: one, or two for a trade-off."""
        if isinstance(self.metric, list):
            return list(zip(self.metric, self.mode))
        return [(self.metric, self.mode)]

    @property
    def primary(self) -> str:
        """The metric progress lines show and the leaderboard ranks by: the first."""
        return self.objectives[0][0]

    @property
    def mutations(self) -> dict[str, dict[str, Any]]:
        """`mutate` with each [low, high] spelled as the log-uniform distribution it stands for."""
        return {key: {"loguniform": spec} if isinstance(spec, list) else spec for key, spec in self.mutate.items()}

    @property
    def settings(self) -> dict[str, Any]:
        """What defines the search (study.run's experiment folder is named by it): a search of another algorithm
        without the PBT options, so that a search begun before there were any resumes in the same folder."""
        pbt_only = ("population", "interval", "mutate")
        return {k: v for k, v in self.__dict__.items() if self.algorithm == "pbt" or k not in pbt_only}

    @property
    def samples(self) -> int:
        """How many trials the search trains: a PBT's population, else its samples."""
        return self.population if self.algorithm == "pbt" else self.num_samples


def check_distribution(spec: dict, path: str) -> None:
    check(isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS, path, spec,
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


@dataclass
class AdaptiveSeeds:
    """`seeds: {min, max, target}`: `min` seeds of every cell first, then more (the next integers, up to `max`) only to
    the cells whose comparisons' 95% intervals are still wider than ±`target`, in the table metric's printed unit
    (study.design.adaptive; docs/study-files.md, "Adaptive seeds")."""
    min: int  # seeds every table cell runs first: 0 .. min-1
    max: int  # the most seeds a cell gets
    target: float  # each comparison's 95% interval half-width wanted, in the table metric's printed unit

    def check(self, path: str) -> None:
        check(self.min >= 2, join(path, "min"), self.min, "an integer >= 2 (a row's spread needs two seeds)")
        check(self.max >= self.min, join(path, "max"), self.max, f"an integer >= min ({self.min})")
        check(self.target > 0, join(path, "target"), self.target,
              "a number > 0: the 95% interval's half-width wanted, in the table metric's printed unit (1.0: ±1 point)")


EVAL_TIMESTEPS = "eval_timesteps"  # in a table's columns: a column per T that study.evaluate measured
VARIANT_KEY = "variant"  # the table key whose values are the study's variants (every other key is a config key)
# a table key's header as the paper words it
HEADERS = {VARIANT_KEY: "Method", "dataset": "Dataset", "arch": "Architecture", "timesteps": "TimeStep",
           "surrogate.function": "Surrogate", "surrogate.schedule": "Schedule", "surrogate.shape": "Shape"}


@dataclass
class Table:
    """How `study.report` lays out the study's table (docs/reports.md, "Tables")."""
    rows: Union[str, list[str]] = VARIANT_KEY  # a line per value of these keys, grouped in order; repeats left blank
    columns: Optional[list[str]] = None  # a column per value of these keys (a pivot); EVAL_TIMESTEPS: a column per T
    constants: list[str] = field(default_factory=list)  # keys the study holds fixed, a column of their value each
    split: Optional[str] = None  # one table per value of this key (paper Tables 2 and 3: dataset)
    method: Optional[str] = None  # a constant first "Method" column, e.g. "This work"
    metric: Union[Literal[TABULATED], list[Literal[TABULATED]]] = metrics.TEST_ACC  # several: one table each
    paper: dict[str, Any] = field(default_factory=dict)  # published figures of the (first) metric, nested by split, rows, columns
    labels: dict[str, str] = field(default_factory=dict)  # printed names of values, e.g. vgg_small: VGG
    extra: list[Literal[TABULATED]] = field(default_factory=list)  # columns of other final metrics, e.g. spike_rate, energy
    # with columns: each column against the first, per row (columns, the default), each row against the first, per
    # column (rows), or both; with two or more of each, also the interaction (does a row's difference change across
    # the columns?). A table of rows compares rows.
    compare: Optional[Literal["columns", "rows", "both"]] = None

    def check(self, path: str) -> None:
        check(self.compare in (None, "rows") or bool(self.columns), join(path, "compare"), self.compare,
              "'rows' for a table without columns (only a table with columns: compares its columns)")
        check(len(self.metrics) > 0, join(path, "metric"), self.metric, "a metric or a non-empty list of metrics")
        check(not self.eval_timesteps or metrics.TEST_ACC in self.metrics, join(path, "metric"), self.metric,
              f"{metrics.TEST_ACC} among the metrics: the {EVAL_TIMESTEPS} columns are test accuracies, shown beside "
              f"it")

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(dict.fromkeys(self.metric))

    def label(self, value: Any) -> str:
        """A key's value as the table prints it: its `labels:` name, else itself."""
        return self.labels.get(str(value), str(value))

    def header(self, key: str) -> str:
        """A key's column header: its `labels:` name (one map renames keys and values alike), else the paper's word
        for it, else the key."""
        return self.labels.get(key) or HEADERS.get(key, key)

    def values_label(self, keys: list[str], values: tuple) -> str:
        """Several keys' values as one header or group name: their labels (a number with its key: TimeStep=5),
        joined by " · "."""
        return " · ".join(self.labels[str(v)] if str(v) in self.labels else str(v) if isinstance(v, str) else
                          f"{self.header(k)}={v}" for k, v in zip(keys, values))

    @property
    def row_keys(self) -> list[str]:
        return [self.rows] if isinstance(self.rows, str) else list(self.rows)

    @property
    def column_keys(self) -> list[str]:
        return [c for c in self.columns or [] if c != EVAL_TIMESTEPS]

    @property
    def eval_timesteps(self) -> bool:
        return EVAL_TIMESTEPS in (self.columns or [])

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
    seeds: Union[list[int], AdaptiveSeeds] = field(default_factory=lambda: [0])  # or adaptive: {min, max, target}
    resources: Resources = field(default_factory=Resources)
    max_concurrent: Optional[int] = None
    retries: int = 2  # restarts of a failed trial from its last checkpoint
    search: Optional[Search] = None
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    table: Optional[Table] = None

    def check(self, path: str) -> None:
        check(SAFE_NAME.fullmatch(self.name) is not None, "name", self.name, SAFE_NAME_RULE)
        if isinstance(self.seeds, list):
            check(len(self.seeds) > 0, "seeds", self.seeds, "a non-empty list of integers, or {min, max, target}")
            for i, seed in enumerate(self.seeds):
                check(self.seeds.index(seed) == i, f"seeds[{i}]", seed, "a seed not listed before")
        check(self.max_concurrent is None or self.max_concurrent >= 1, "max_concurrent",
              self.max_concurrent, "null or an integer >= 1")
        check(self.retries >= 0, "retries", self.retries, "an integer >= 0")
        if self.search is not None:
            check(not self.variants and not self.grid, "search", "with variants/grid",
                  "either a search or variants/grid, not both")
            check(not isinstance(self.seeds, AdaptiveSeeds), "seeds", "{min, max, target} with search:",
                  "a list of seeds: a search's Tuner takes one search algorithm, and adaptive seeds are one")
        for key, values in self.grid.items():
            check(len(values) > 0, join("grid", key), values, "a non-empty list of values")
        for name in self.variants:
            check(VARIANT_NAME.fullmatch(name) is not None and name.strip() == name, "variants", name,
                  VARIANT_NAME_RULE + ", nor a space at either end")


@dataclass
class Study:
    """A validated study: the file's settings plus the base training config made complete."""
    path: str
    profile: Optional[str]
    spec: StudyFile
    base: dict  # complete isnm.train config (every key present)
    # the file's contents with each `{from_study: NAME}` replaced by the schedule found (what study.run stores with its
    # runs, and what the report reads back); None when the file names no study
    resolved: Optional[dict] = None
    # the sources of its own code as an invocation recorded them ("arch NAME" -> callable, source digest, path): a
    # study read back from the store is planned with the code it ran, not the code there is now; None: found now
    plugins: Optional[dict] = None
    # under a profile, the file's own base config without it (the setting a table's paper figures are of)
    unprofiled: Optional[dict] = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        """Row name -> dotted overrides; a study without variants has one row named 'base'."""
        return self.spec.variants or {"base": {}}

    @property
    def adaptive(self) -> Optional[AdaptiveSeeds]:
        return self.spec.seeds if isinstance(self.spec.seeds, AdaptiveSeeds) else None

    @property
    def seeds(self) -> list[int]:
        """Every seed a trial may run with: the file's list, or 0 .. max - 1 for adaptive seeds."""
        return list(range(self.adaptive.max)) if self.adaptive else list(self.spec.seeds)

    @property
    def table(self) -> Table:
        """The study's table layout: the file's, else a line per variant."""
        return self.spec.table or Table()


def with_overrides(base: dict, overrides: dict[str, Any]) -> dict:
    return merged(base, nested(overrides))


TRAIN_KEYS = CONFIG_KEYS
FIXED_BY_STUDY = {"seed": "seeds are set by the top-level 'seeds:' list",
                  "arch_source": "study.run sets it: the digest of your network's source",
                  "dataset_source": "study.run sets it: the digest of your data set's source"}
FREE_FORM = ("arch_args.", "dataset_args.")  # your own code's keyword arguments: its callable checks them


def check_override_keys(overrides: dict[str, Any], path: str) -> None:
    for key in overrides:
        if key in FIXED_BY_STUDY:
            raise ConfigError(join(path, key), FIXED_BY_STUDY[key])
        if key not in TRAIN_KEYS and not key.startswith(FREE_FORM):
            raise ConfigError(join(path, key), unknown_key_message(key, list(TRAIN_KEYS)))
