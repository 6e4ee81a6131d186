"""A study expanded into trial configs: variants x grid x seeds, each with a config hash.

Pure: no Ray, no MLflow, so `--dry-run` and the tests see exactly what would run.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isnm import betas_text, config_hash, flat, nested, shown
from study.errors import StudyError
from study.records import Tag
from study.design.config import VARIANT_KEY, Search, Study, Table, with_overrides
from study.design.plugins import Sources

SEARCH_VARIANT = "search"  # the variant tag of every trial a search samples
PBT_VARIANT = "pbt"  # the variant tag of every member of a population-based search


@dataclass(frozen=True)
class Trial:
    name: str  # readable and unique in the study: "ISNM+GSG seed=1", "ISNM timesteps=1 seed=0"
    variant: str
    overrides: dict[str, Any]  # dotted keys: the variant's, then the grid cell's
    seed: int
    config: dict  # the complete isnm.train config
    config_hash: str
    varying: tuple[str, ...] = ()  # dotted keys whose values change while it trains (PBT's): metrics, never params


PAIRING_KEYS = ("arch", "width", "dataset", "batch_size", "validation")


def pairing_of(config: dict, device: str) -> tuple:
    """What a seed fixes only together with: the network (its initial weights are drawn from the seed), the data and
    its split, the batches (their order is drawn from the seed by a generator on the device trained on, so a GPU's
    order is not a CPU's). Two runs of one seed that agree on these start from the same weights and see the same
    batches (tests/test_training.py), so the seed pairs them."""
    return (*(config[k] for k in PAIRING_KEYS), "cpu" if device.startswith("CPU") else "cuda")


def with_absolute_data_dir(config: dict) -> dict:
    """`data_dir` made absolute against the driver's working directory: Ray runs each trial in a folder
    of its own, where a relative path would name another (empty) place."""
    return {**config, "data_dir": str(Path(config["data_dir"]).expanduser().resolve())}


def grid_cells(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def cell_label(cell: dict[str, Any]) -> str:
    """'arch=resnet18 timesteps=1', 'beta_min=0.3786 alpha=paper': last key part, value (floats to 4 digits)."""
    return " ".join(f"{key.rsplit('.', 1)[-1]}={value:.4g}" if isinstance(value, float)
                    else f"{key.rsplit('.', 1)[-1]}={value}" for key, value in cell.items())


def check_data_of(study: Study, trials: list[Trial]) -> None:
    """Each data set `trials` read (a search's: the base's) checked once, and CIFAR fetched where it may be: data
    missing or damaged is one line before anything starts. Loads torch (isnm.check_data)."""
    from isnm import DataError, check_data

    configs = [t.config for t in trials] or [study.base]
    for config in {(c["dataset"], c["data_dir"], c["download"]): c for c in configs}.values():
        try:
            check_data(config)
        except DataError as exc:
            raise StudyError(f"{study.path}: {exc}") from None


def trial_count(study: Study) -> int:
    """How many trials `plan_trials` makes, counted without making them (a grid can be millions)."""
    return len(study.variants) * math.prod(len(values) for values in study.spec.grid.values()) * len(study.seeds)


def plan_summary(study: Study, trials: list[Trial]) -> str:
    """The dry-run's summary of a plan too long to list: how many values each varied key takes."""
    keys = {VARIANT_KEY: [t.variant for t in trials], **{k: list(v) for k, v in study.spec.grid.items()},
            "seed": list(study.seeds)}
    rows = [(key, f"{len(dict.fromkeys(map(str, values)))} values", ", ".join(dict.fromkeys(map(str, values)))[:100])
            for key, values in keys.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"  {key.ljust(widths[0])}  {n.ljust(widths[1])}  {shown}" for key, n, shown in rows)


def plan_trials(study: Study) -> list[Trial]:
    """Every trial of a grid study, in file order: variant, then grid cell, then seed."""
    trials, sources = [], Sources(study)
    for variant, overrides in study.variants.items():
        for cell in grid_cells(study.spec.grid):
            for seed in study.seeds:
                dotted = {**flat(overrides), **cell}
                config = sources.hashed(with_absolute_data_dir(with_overrides(study.base, {**dotted, "seed": seed})))
                name = " ".join(part for part in (variant, cell_label(cell), f"seed={seed}") if part)
                trials.append(Trial(name, variant, dotted, seed, config, config_hash(config)))
    seen: dict[str, str] = {}
    for trial in trials:
        if trial.config_hash in seen:
            raise StudyError(f"{study.path}: trials {shown(seen[trial.config_hash])} and {shown(trial.name)} have the same "
                             f"config; expected every variant and grid cell to differ")
        seen[trial.config_hash] = trial.name
    return trials


def search_base(study: Study) -> dict:
    """The config every search trial starts from; a search compares its samples on the first seed."""
    return Sources(study).hashed(with_absolute_data_dir(with_overrides(study.base, {"seed": study.seeds[0]})))


def stand_ins(study: Study) -> list[Trial]:
    """What a search will train, for its cost estimate: its samples (or PBT's members), each as its base config,
    told apart by their names and hashes (none is cached: a sample is known only once drawn)."""
    search, base = study.spec.search, search_base(study)
    if search.algorithm == "pbt":
        return [pbt_member(base, search, i, {}) for i in range(search.population)]
    return [Trial(f"sample {i}", SEARCH_VARIANT, {}, base["seed"], base, f"sample-{i}")
            for i in range(search.num_samples)]


def pbt_member(base: dict, search: Search, member: int, values: dict[str, Any]) -> Trial:
    """Member `member` of population-based search `search` over `base`, training with `values` of the mutated keys now.

    Its config hash is its identity: the base without the mutated keys, the search's settings and the member's
    number, the same whatever values exploits give it, and never a fixed-schedule trial's (no cache serves it)."""
    fixed = {k: v for k, v in flat(base).items() if k not in search.mutate}
    identity = {**nested(fixed), "pbt": {"population": search.population, "interval": search.interval,
                                         "mutate": search.mutations, "metric": search.metric, "mode": search.mode,
                                         "member": member}}
    return Trial(f"member {member}", PBT_VARIANT, dict(values), base["seed"], with_overrides(base, values),
                 config_hash(identity), tuple(search.mutate))


def override_text(key: str, value: Any) -> str:
    """An override as a plan lists it; a schedule of a beta per epoch as its runs of one value."""
    return f"[{betas_text(value)}]" if key == "surrogate.schedule.beta" else str(value)


def trial_table(trials: list[Trial]) -> str:
    """The dry-run's plain-text table: name, overrides, seed, config hash."""
    rows = [("trial", "overrides", "seed", Tag.CONFIG_HASH)]
    rows += [(t.name, ", ".join(f"{k}={override_text(k, v)}" for k, v in t.overrides.items()) or "-", str(t.seed),
              t.config_hash) for t in trials]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def key_value(trial: Trial, key: str) -> Any:
    """A trial's value of a table key: its variant, or a config key's value."""
    return trial.variant if key == VARIANT_KEY else flat(trial.config)[key]


def place(table: Table, trial: Trial) -> tuple[str, str]:
    """(the table row a trial is in, its column; "" without columns) as labels: the split's and the rows' values,
    the columns' values. Its run is tagged with them, and MLflow's UI groups the runs by them."""
    row_keys = ([table.split] if table.split else []) + table.row_keys
    return (table.values_label(row_keys, tuple(key_value(trial, k) for k in row_keys)),
            table.values_label(table.column_keys, tuple(key_value(trial, k) for k in table.column_keys)))

