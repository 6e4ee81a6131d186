"""`surrogate.schedule: {from_study: NAME}`: the schedule a PBT study found, put in the study file's data before it
is validated. The reading of the store is the caller's (study.tracking.pbt): this module is pure."""
from __future__ import annotations

from typing import Any, Callable, Optional

from isnm import ConfigError, check, join
from study.design.config import SAFE_NAME
from study.design.profiles import REPLACED_BY_PROFILE


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
