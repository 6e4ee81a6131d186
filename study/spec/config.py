"""The study file: YAML loaded with `yaml.safe_load`, a profile overlaid, validated into `Study`.

Pure: no Ray, no MLflow. Every user mistake is a `StudyError` whose text is one line naming the
file, the key path, the bad value and what was expected.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml

from isnm import (CONFIG_KEYS, ConfigError, check, default_config, flat, join, merged, metrics, nested, parse_config,
                  parse_dataclass, shown, to_dict, unknown_key_message)
from study.errors import StudyError, first_line
from study.records import METRICS, SELECTABLE, TABULATED

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
# A study's name and profile name folders (ray_results/<name>-<profile>-<digest>, mlartifacts/<name>)
# and go into MLflow filters: letters, digits and a few marks, no path separators, no quotes, short
# enough that the folder name stays far below the 255 bytes a file system allows.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
SAFE_NAME_RULE = "1 to 100 letters, digits, '_', '.', '+' or '-', starting with a letter or digit"
# A variant's name labels its table row, its trials' run names and the parent run's metric of its mean, each
# within MLflow's limits (a run name and a metric name take 250 characters; study.records.mean_metric cuts a row
# label that joins several keys); a line break would split its row of a Markdown table.
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
    metric: Literal[SELECTABLE] = metrics.VAL_ACC  # test_acc is refused: a configuration chosen on it is tested on it
    mode: Literal["max", "min"] = "max"
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
        check(self.num_samples >= 1, join(path, "num_samples"), self.num_samples, "an integer >= 1")
        check(len(self.space) > 0, join(path, "space"), self.space, "at least one dotted key to search")
        for key, spec in self.space.items():
            check_distribution(spec, join(join(path, "space"), key))

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
    (study.spec.adaptive; docs/study-files.md, "Adaptive seeds")."""
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

    def check(self, path: str) -> None:
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
FIXED_BY_STUDY = {"seed": "seeds are set by the top-level 'seeds:' list"}


def check_override_keys(overrides: dict[str, Any], path: str) -> None:
    for key in overrides:
        if key in FIXED_BY_STUDY:
            raise ConfigError(join(path, key), FIXED_BY_STUDY[key])
        if key not in TRAIN_KEYS:
            raise ConfigError(join(path, key), unknown_key_message(key, list(TRAIN_KEYS)))


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping, where YAML would keep the last silently."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here, as YAML says
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {shown(key)} appears twice in one mapping (YAML "
                                                        f"would keep the last one silently)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


MAX_NODES = 100_000  # a study file's values, counted with YAML's aliases expanded: studies are hundreds


def expanded_nodes(node: yaml.Node, counted: dict[int, int], open_nodes: set[int]) -> int:
    """How many nodes `node` is with every alias in it expanded, without expanding them: an alias is the node it names,
    counted once (`counted`); a node that holds itself counts as too many."""
    if id(node) in counted:
        return counted[id(node)]
    if id(node) in open_nodes:
        return MAX_NODES + 1
    open_nodes.add(id(node))
    children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
        node.value if isinstance(node, yaml.SequenceNode) else [])
    total = 1
    for child in children:
        total = min(total + expanded_nodes(child, counted, open_nodes), MAX_NODES + 1)
    open_nodes.discard(id(node))
    counted[id(node)] = total
    return total


def bounded_yaml(text: str, path: Path):
    """The YAML document in `text`, refused when its aliases would expand it past MAX_NODES (an "alias bomb": a few
    lines that are gigabytes once walked)."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and expanded_nodes(node, {}, set()) > MAX_NODES:
            raise StudyError(f"{path}: more than {MAX_NODES:,} values once its YAML aliases (*name) are expanded; "
                             "a study file is hundreds")
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise StudyError(f"{path}: no such study file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:  # unreadable: permissions, not text
        raise StudyError(f"{path}: cannot be read ({type(exc).__name__}: {first_line(str(exc))})") from None
    try:
        data = bounded_yaml(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where, line = "", ""
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
            lines = text.splitlines()
            line = f": {shown(lines[mark.line].strip())}" if mark.line < len(lines) and lines[mark.line].strip() else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError(f"{path}: YAML error{where}{line}: {problem}") from None
    if data is None:
        raise StudyError(f"{path}: the file is empty; expected a study (name, base, variants, seeds, ...)")
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a mapping of study keys at the top, got {type(data).__name__}")
    return data


REPLACED_BY_PROFILE = ("variants", "grid", "seeds")


def check_profile_name(profile: Any) -> None:
    check(isinstance(profile, str) and SAFE_NAME.fullmatch(profile) is not None, "profiles", profile,
          f"a profile name of {SAFE_NAME_RULE}")


def check_profiles(data: dict) -> None:
    """Every profile's name, and its keys: the study's own (a training setting goes under its base:), whichever
    profile this run uses, so that a mistake in one is found before someone runs it."""
    profiles = data.get("profiles") or {}
    check(isinstance(profiles, dict), "profiles", profiles, "a mapping of profile name to study keys")
    study_keys = [f.name for f in fields(StudyFile) if f.name not in ("name", "profiles")]
    for profile, overlay in profiles.items():
        check_profile_name(profile)
        path = join("profiles", profile)
        check(isinstance(overlay, dict), path, overlay, "a mapping of study keys")
        for key in overlay:
            if key in study_keys:
                continue
            if key in ("name", "profiles"):
                raise ConfigError(join(path, key), f"got {shown(overlay[key])}, expected not set by a profile")
            if key in TRAIN_KEYS or key in default_config():
                raise ConfigError(join(path, key), f"a profile overlays the study's keys, and {shown(key)} is a training "
                                                   f"setting: put it under base: ({join(join(path, 'base'), key)})")
            raise ConfigError(join(path, key), unknown_key_message(str(key), study_keys))


def with_profile(data: dict, profile: Optional[str]) -> dict:
    if profile is None:
        return data
    check_profile_name(profile)
    profiles = data.get("profiles") or {}
    if profile not in profiles:  # (a mapping: check_profiles)
        known = ", ".join(profiles) or "none"
        raise ConfigError("profiles", f"no profile {shown(profile)} (profiles in this file: {known})")
    overlay = profiles[profile]
    # the keys that define the set of trials are replaced whole, so a profile can run fewer rows
    replaced = {k: v for k, v in overlay.items() if k in REPLACED_BY_PROFILE}
    return {**merged(data, {k: v for k, v in overlay.items() if k not in REPLACED_BY_PROFILE}), **replaced}


def check_table_keys(spec: StudyFile) -> None:
    """Each key of the table's split, rows and columns is one the study varies, and appears once."""
    table = spec.table
    varied = [VARIANT_KEY, *spec.grid, *dict.fromkeys(k for o in spec.variants.values() for k in flat(o))]
    check(table.columns != [], "table.columns", table.columns,
          "the keys to lay out as columns; leave columns: out for a table of rows only")
    placed: dict[str, str] = {}
    for part, keys in (("split", [table.split] if table.split else []), ("rows", table.row_keys),
                       ("columns", table.column_keys), ("constants", table.constants)):
        for key in keys:
            path = f"table.{part}"
            if key != VARIANT_KEY and key not in TRAIN_KEYS:
                raise ConfigError(path, unknown_key_message(key, [VARIANT_KEY, *TRAIN_KEYS]))
            if key in placed:
                raise ConfigError(path, f"{shown(key)} is already in table.{placed[key]}; a key goes in one place")
            if part == "constants" and key in varied:
                raise ConfigError(path, f"{shown(key)} is varied by this study; put it in table.rows or table.columns")
            if part != "constants" and key not in varied:
                raise ConfigError(path, f"{shown(key)} is not varied by this study (no grid: key or variant sets it), so "
                                        f"it has one value (table.constants shows such a key); the keys it varies: "
                                        f"{', '.join(varied)}")
            placed[key] = part


FROM_STUDY = "from_study"  # surrogate.schedule: {from_study: NAME}, the schedule a PBT study in the store found
# NAME (a study's name), the profile of the study that asks -> the per-epoch betas; raises StudyError when not found
FoundSchedule = Callable[[str, Optional[str]], list[float]]


def with_found_schedules(data: Any, profile: Optional[str], found: Optional[FoundSchedule], where: str = "") -> Any:
    """`data` with every `{from_study: NAME}` replaced by `{beta: [...]}`, the schedule `found` gives (study.run reads
    it from the tracking store: study.tracking.pbt); unchanged (the same object) when it names none."""
    if isinstance(data, dict):
        if list(data) == [FROM_STUDY]:
            name = data[FROM_STUDY]
            check(isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None, join(where, FROM_STUDY), name,
                  "the name of a PBT study in the tracking store")
            if found is None:
                raise ConfigError(where, f"{{{FROM_STUDY}: {name}}} is the schedule PBT study {name!r} found, read from "
                                         f"the tracking store: only study.run and study.submit read it")
            return {"beta": found(name, profile)}
        out = {k: with_found_schedules(v, profile, found, join(where, str(k))) for k, v in data.items()}
        return data if all(out[k] is data[k] for k in data) else out
    if isinstance(data, list):
        out = [with_found_schedules(v, profile, found, f"{where}[{i}]") for i, v in enumerate(data)]
        return data if all(a is b for a, b in zip(out, data)) else out
    return data


def with_schedules_found(data: dict, profile: Optional[str], found: Optional[FoundSchedule]) -> dict:
    """The study file's `data` with the `{from_study: NAME}` resolved that this run of it trains: those of its
    profile, and those outside profiles: that the profile does not replace; other profiles' stay as written."""
    overlay = (data.get("profiles") or {}).get(profile) or {} if profile else {}
    out = {}
    for key, value in data.items():
        if key == "profiles" and profile in (value or {}):
            out[key] = {**value, profile: with_found_schedules(value[profile], profile, found, join(key, profile))}
        elif key == "profiles" or (key in REPLACED_BY_PROFILE and key in overlay):
            out[key] = value
        else:
            out[key] = with_found_schedules(value, profile, found, key)
    return data if all(out[k] is data[k] for k in data) else out


def check_pbt(search: Search, base: dict) -> None:
    """What a population-based search needs of the config it trains."""
    check(search.interval < base["epochs"], "search.interval", search.interval,
          f"fewer epochs than base.epochs ({base['epochs']}): members exploit each other every `interval` epochs")
    if "surrogate.beta" in search.mutate:
        check(base["surrogate"]["schedule"] == "fixed", "base.surrogate.schedule", base["surrogate"]["schedule"],
              "fixed: PBT sets the fixed schedule's beta, held through each interval")


def load_study(path: str | Path, profile: Optional[str] = None, found: Optional[FoundSchedule] = None) -> Study:
    """Read, overlay `profile`, validate. Raises StudyError (one line) on any user mistake. `found` resolves each
    `{from_study: NAME}` (none may be given without it)."""
    path = Path(path)
    return study_from(read_yaml(path), path, profile, found)


def study_from(data: dict, path: Path, profile: Optional[str] = None, found: Optional[FoundSchedule] = None) -> Study:
    """`data`, a study file's contents, with `profile` overlaid, validated; errors name `path`."""
    try:
        check_profiles(data)
        resolved = with_schedules_found(data, profile, found)
        resolved, data = (None, data) if resolved is data else (resolved, resolved)
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
            if spec.search.algorithm == "pbt":
                check_pbt(spec.search, base)
            if METRICS[spec.search.metric].validation and base["validation"] == 0:
                raise ConfigError("search.metric", f"{spec.search.metric} needs a validation split, but "
                                                   f"base.validation is 0; set base.validation (0.1 is the default)")
        if spec.table is not None and spec.search is None:
            check_table_keys(spec)
    except ConfigError as exc:
        raise StudyError(f"{path}: {exc}") from None
    return Study(str(path), profile, spec, base, resolved)
