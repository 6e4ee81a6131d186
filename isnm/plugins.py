"""A researcher's own network or data set, named in a config: `module:callable`, or a name an installed package
registers under the entry-point group `isnm_study.archs` or `isnm_study.datasets` (no torch here: a study file is
checked, and its plugins found and hashed, without it).

A plugin is data to a study: its source is hashed (`PluginSource.digest`, the module's file, or every file of
its package), and the hash goes into the config's hash, so an edited network is never answered from the cache
with the old one's runs. Where the module is: the folder given (the study file's) first, then `sys.path`.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

GROUPS = {"arch": "isnm_study.archs", "dataset": "isnm_study.datasets"}  # the config key -> its entry-point group
REFERENCE = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*)$")
SKIPPED = {"__pycache__", ".git", ".ipynb_checkpoints"}


class PluginError(ValueError):
    """A plugin that cannot be found, loaded or used; `str()` is one line for the terminal."""


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin's code is: `module:attr`, the file or package folder that holds the module's top-level
    package (`path`, what Ray ships to the nodes) and the digest of its source."""
    module: str
    attr: str
    path: str
    digest: str

    @property
    def reference(self) -> str:
        return f"{self.module}:{self.attr}"


def first_line(exc: BaseException) -> str:
    """The first line of what an exception says (a user's code may say a lot)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def is_reference(name: str) -> bool:
    """Whether `name` names code (`module:callable`) rather than a built-in or registered name."""
    return ":" in name


def registered(kind: str) -> dict[str, str]:
    """The names installed packages register for `kind` ("arch" or "dataset"): name -> `module:callable`."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=GROUPS[kind])}


def reference_of(kind: str, name: str) -> str:
    """`module:callable` of a plugin `name` (a reference itself, or a registered name); PluginError if neither."""
    if not is_reference(name):
        names = registered(kind)
        if name not in names:
            raise PluginError(f"{kind}: {name!r} is neither built in nor registered by an installed package "
                              f"(entry-point group {GROUPS[kind]}); name your own code as module:callable")
        name = names[name]
    if not REFERENCE.match(name):
        raise PluginError(f"{kind}: got {name!r}, expected module:callable, e.g. my_nets:spiking_mlp")
    return name


def module_location(module: str, folder: str | Path | None) -> Path:
    """The file (a module) or folder (a package) of `module`'s top-level package, found without importing it:
    in `folder` first, then on sys.path. PluginError if it is nowhere."""
    top = module.split(".")[0]
    paths = ([str(folder)] if folder is not None else []) + sys.path
    spec = importlib.machinery.PathFinder.find_spec(top, paths)
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        where = f"next to the study file ({folder}) or on sys.path" if folder is not None else "on sys.path"
        raise PluginError(f"no module named {top!r} {where}")
    origin = Path(spec.origin)
    return origin.parent if spec.submodule_search_locations else origin


def source_digest(location: Path) -> str:
    """16 hex digits of SHA-256 over a module file, or over every file of a package folder (by relative path, in
    order, caches left out): what the same code on another node or another day hashes to again."""
    digest = hashlib.sha256()
    files = [location] if location.is_file() else sorted(
        p for p in location.rglob("*") if p.is_file() and not SKIPPED.intersection(p.relative_to(location).parts)
        and p.suffix not in (".pyc", ".pyo"))
    for path in files:
        digest.update(str(path.relative_to(location.parent)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def source_of(kind: str, name: str, folder: str | Path | None = None) -> PluginSource:
    """Where plugin `name` of `kind` is and the digest of its source, found from `folder` (the study file's)."""
    module, attr = reference_of(kind, name).split(":")
    location = module_location(module, folder)
    return PluginSource(module, attr, str(location), source_digest(location))


def loaded(kind: str, name: str, folder: str | Path | None = None) -> Callable:
    """The callable plugin `name` of `kind` names, imported (from `folder` first, else sys.path as it is: on a Ray
    worker, where the study shipped the module). PluginError for a module that fails to import or lacks it."""
    source = source_of(kind, name, folder)
    parent = str(Path(source.path).parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    try:
        module = importlib.import_module(source.module)
    except Exception as exc:
        raise PluginError(f"{kind}: importing {source.module} ({source.path}) failed: {type(exc).__name__}: "
                          f"{first_line(exc)}") from exc
    fn = getattr(module, source.attr, None)
    if not callable(fn):
        raise PluginError(f"{kind}: {source.module} ({source.path}) has no callable {source.attr!r}")
    return fn


def check_source(kind: str, name: str, planned: str) -> None:
    """PluginError unless plugin `name`'s source, as this process imports it, has the digest `planned` (the one the
    study hashed its trials with): a module edited since, or another copy on this node, would train other code
    under the planned code's hash."""
    source = source_of(kind, name)
    if source.digest != planned:
        raise PluginError(f"{kind} {name}: its source here ({source.path}) has digest {source.digest}, the trial was "
                          f"planned with {planned}: the code changed since, or this node has another copy")


def check_sources(cfg) -> None:
    """PluginError unless the network and data set code that `cfg` (a TrainConfig) names is, here, the code it was
    planned with (its `arch_source` and `dataset_source`; empty for built-in code)."""
    for kind in GROUPS:
        planned = getattr(cfg, f"{kind}_source")
        if planned:
            check_source(kind, getattr(cfg, kind), planned)
