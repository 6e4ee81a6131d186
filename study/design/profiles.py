"""Profiles: named overlays of a study file's own keys (`--profile demo`), checked whichever one a run uses."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Optional

from isnm import ConfigError, check, default_config, join, merged, shown, unknown_key_message
from study.design.config import SAFE_NAME, SAFE_NAME_RULE, TRAIN_KEYS, StudyFile


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
