"""A study file loaded: read (study.design.strict_yaml), its profile overlaid (study.design.profiles), the schedules
it names from PBT studies put in (study.design.found), then validated into a `Study`. Every user mistake is a
`StudyError` whose text is one line naming the file, the key path, the bad value and what was expected."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from isnm import ConfigError, check, flat, join, parse_config, parse_dataclass, shown, to_dict, unknown_key_message
from study.design.config import (TRAIN_KEYS, VARIANT_KEY, Search, Study, StudyFile, check_override_keys,
                                 with_overrides)
from study.design.found import FoundSchedule, with_schedules_found
from study.design.profiles import check_profiles, with_profile
from study.design.strict_yaml import read_yaml
from study.errors import StudyError
from study.records import METRICS


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
        own_base = data.get("base")  # the file's own setting, before the profile's overlay: the paper's, as a rule
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
            needed = [m for m, _ in spec.search.objectives if METRICS[m].validation]
            if needed and base["validation"] == 0:
                raise ConfigError("search.metric", f"{needed[0]} needs a validation split, but "
                                                   f"base.validation is 0; set base.validation (0.1 is the default)")
        if spec.table is not None and spec.search is None:
            check_table_keys(spec)
    except ConfigError as exc:
        raise StudyError(f"{path}: {exc}") from None
    return Study(str(path), profile, spec, base, resolved, unprofiled=unprofiled_base(own_base) if profile else None)


def unprofiled_base(own_base) -> Optional[dict]:
    """The complete config of a study file's own base, without its profile; None where it is not one alone."""
    try:
        return to_dict(parse_config(own_base if isinstance(own_base, dict) else {}, "base"))
    except ConfigError:
        return None
