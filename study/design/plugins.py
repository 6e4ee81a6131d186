"""A study's own code: the networks and data sets its trials name as `module:callable` (or by a name an installed
package registers), found next to the study file first, hashed into each trial's config, checked before anything
trains, and shipped to Ray's workers (docs/own-network.md)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from isnm import ARCHS, DATASETS, PluginError, PluginSource, is_reference, source_of
from study.design.config import Study
from study.errors import StudyError
from study.records import Tag

KINDS = ("arch", "dataset")
BUILT_IN = {"arch": ARCHS, "dataset": DATASETS}


def folder_of(study: Study) -> Path:
    """Where a study's own code is looked for first: the study file's folder."""
    return Path(study.path).resolve().parent


def plugins_of(config: dict) -> list[tuple[str, str]]:
    """(kind, name) of each plugin `config` names: its network and data set where they are not built in."""
    return [(kind, config[kind]) for kind in KINDS if config[kind] not in BUILT_IN[kind]]


class Sources:
    """The plugin sources of one study, each found and hashed once (a plan of a thousand trials reads a file once);
    for a study read back from the store, the sources its invocation recorded."""

    def __init__(self, study: Study):
        self.study, self.folder, self.found = study, folder_of(study), {}

    def __call__(self, kind: str, name: str) -> PluginSource:
        key = f"{kind} {name}"
        if key not in self.found:
            recorded = (self.study.plugins or {}).get(key)
            try:
                self.found[key] = (source_of(kind, name, self.folder) if recorded is None else PluginSource(
                    *recorded["callable"].split(" = ")[-1].split(":"), recorded["path"], recorded["source"]))
            except PluginError as exc:
                raise StudyError(f"{self.study.path}: {exc}") from None
        return self.found[key]

    def hashed(self, config: dict) -> dict:
        """`config` with the digest of each plugin's source in it (`arch_source`, `dataset_source`): edited code
        hashes to another config, which no finished run answers."""
        return {**config, **{f"{kind}_source": self(kind, name).digest for kind, name in plugins_of(config)}}

    def paths(self, configs: Iterable[dict]) -> list[str]:
        """The files and package folders of the plugins `configs` name, for Ray's runtime_env `py_modules`."""
        return list(dict.fromkeys(self(kind, name).path for c in configs for kind, name in plugins_of(c)))

    def named(self) -> list[tuple[str, str]]:
        """(kind, name) of every plugin the study file names: in its base, its variants and its grid."""
        study, found = self.study, []
        for overrides in [study.base, *study.variants.values()]:
            found += [(k, v) for k, v in overrides.items() if k in KINDS and v not in BUILT_IN[k]]
        found += [(k, v) for k in KINDS for v in study.spec.grid.get(k, []) if v not in BUILT_IN[k]]
        return list(dict.fromkeys(found))

    def tags(self, plugins: Iterable[tuple[str, str]]) -> dict[str, str]:
        """The tag `plugins` of a run trained with (a trial) or planned with (an invocation) `plugins`: {"KIND NAME":
        {callable, source, path}} in JSON, a registered name's callable as `name = module:callable`; nothing for
        built-in code only."""
        record = {}
        for kind, name in plugins:
            s = self(kind, name)
            record[f"{kind} {name}"] = {"callable": s.reference if is_reference(name) else f"{name} = {s.reference}",
                                        "source": s.digest, "path": s.path}
        return {Tag.PLUGINS: json.dumps(record, sort_keys=True)} if record else {}


def recorded_plugins(tags: dict[str, str]) -> Optional[dict]:
    """The plugin sources a run's `plugins` tag holds, or None."""
    return json.loads(tags[Tag.PLUGINS]) if tags.get(Tag.PLUGINS) else None


def check_plugins_of(study: Study, configs: list[dict]) -> None:
    """Each plugin network built on its data and run forward on two images, each plugin data set loaded and checked,
    once per setting `configs` hold: a mistake is one line before anything trains. Loads torch (only where a
    study names a plugin)."""
    wanted = [c for c in configs if plugins_of(c)]
    if not wanted:
        return
    from isnm import check_output, load_dataset, net_spec, network, parse_config

    sources, data, built = Sources(study), {}, set()
    for config in wanted:
        for kind, name in plugins_of(config):
            sources(kind, name)  # found and hashed, with the study's folder first on sys.path
        cfg = parse_config(config)
        key = json.dumps([cfg.dataset, cfg.dataset_args, cfg.validation], sort_keys=True)
        network_key = json.dumps([key, cfg.arch, cfg.arch_args, cfg.timesteps, config["neuron"], cfg.width],
                                 sort_keys=True)
        if network_key in built:  # another seed of a setting already checked
            continue
        built.add(network_key)
        try:
            if key not in data:
                data[key] = load_dataset(cfg.dataset, cfg.data_dir, False, "cpu", cfg.validation, cfg.dataset_args,
                                         sources.folder)
            if cfg.arch not in BUILT_IN["arch"]:
                spec = net_spec(cfg, data[key])
                check_output(network(cfg.arch, spec, cfg.arch_args, sources.folder), cfg.arch, spec)
        except PluginError as exc:
            raise StudyError(f"{study.path}: {exc}") from None
