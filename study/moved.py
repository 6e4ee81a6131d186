"""The module paths study/ had before it was split into packages by concern, importable until 2027-06-30.

They have one reader: `Tuner.restore`, which unpickles what Tune saved of an interrupted experiment (the
tracker callback with its study, trials and code state; the trial folder namer) by the module paths of
the code that saved it. An old path is a module made on import whose attributes come from the new
modules, so nothing is imported before it is asked for. CHANGELOG.md says when this goes.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

CONFIG_NOW = ("study.design.config", "study.design.load", "study.design.strict_yaml", "study.design.profiles",
              "study.design.found")
MOVED = {  # old module -> the modules its names live in now
    "study.config": (*CONFIG_NOW, "study.errors"),
    "study.plan": ("study.design.plan",),
    "study.execute": ("study.run.tuner", "study.run.worker", "study.run.cluster"),
    "study.tracking": ("study.tracking.callback", "study.tracking.store", "study.tracking.writers",
                       "study.tracking.cache"),
    "study.provenance": ("study.tracking.provenance",),
    "study.spec": (),  # study.design's name before: tools that map a tree read a spec/ folder as tests
    "study.spec.config": CONFIG_NOW,
    "study.spec.plan": ("study.design.plan",),
    "study.spec.adaptive": ("study.design.adaptive",),
    "study.spec.layout": ("study.design.layout",),
}


def moved_attribute(old: str, name: str) -> Any:
    """`old.name` as it was: the attribute `name` of the first of the modules `old` was split into that has it."""
    for new in MOVED[old]:
        module = importlib.import_module(new)
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {old!r} (moved to {', '.join(MOVED[old])}) has no attribute {name!r}")


class OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path that no file holds any longer (a package that kept its path, study.tracking,
    forwards its missing attributes itself)."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec) -> types.ModuleType:
        module = types.ModuleType(spec.name, f"moved to {', '.join(MOVED[spec.name]) or 'study.design'}")
        if not MOVED[spec.name]:  # a package that was: its old modules are found below it
            module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__getattr__ = lambda name: moved_attribute(module.__name__, name)


def install() -> None:
    """Make the old paths importable (last on sys.meta_path: every existing module is found first)."""
    if not any(isinstance(finder, OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(OldPaths())
