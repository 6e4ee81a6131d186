"""Where a number comes from: the code (commit, uncommitted diff) and the environment (versions, device,
determinism) a trial ran with, recorded as tags of its MLflow run and compared by `study.reproduce`.

The code state is read once, on the driver, where the study's files are; the environment in the
trial's own process, since a cluster's nodes may differ.
"""
from __future__ import annotations

import os

import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from study.records import Artifact, Tag, code_label

PACKAGES = ("torch", "torchvision", "ray", "mlflow", "optuna", "numpy")
# What cannot change a trained number: generated reports (make demo rewrites them) and Markdown prose.
# Left out of the diff, so a tree is dirty only when its code, study files or settings differ.
NOT_CODE = (":(top,exclude)reports", ":(top,exclude,glob)**/*.md")


@dataclass(frozen=True)
class CodeState:
    commit: str  # 40 hex digits, or "unknown" outside a git checkout
    dirty: bool  # tracked files other than reports and Markdown differ from the commit
    diff: str  # `git diff HEAD` of those files: with the commit, the exact code

    @property
    def short(self) -> str:
        return code_label(self.commit, self.dirty)


def warn_if_dirty(code: CodeState) -> None:
    if code.dirty:
        print(f"warning: the working tree has uncommitted changes (on {code.commit[:7]}); each run records them "
              f"(tag {Tag.GIT_DIRTY}, artifact {Artifact.DIFF}), but a number from them is hard to trace: commit first",
              file=sys.stderr)


def git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def code_state(root: Path | None = None) -> CodeState:
    """The commit and uncommitted changes of the checkout holding this package (or `root`)."""
    cwd = root or Path(__file__).resolve().parent
    commit = (git("rev-parse", "HEAD", cwd=cwd) or "").strip()
    if not commit:
        return CodeState("unknown", False, "")
    diff = git("diff", "HEAD", "--binary", "--", ":(top)", *NOT_CODE, cwd=cwd) or ""
    return CodeState(commit, bool(diff), diff)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, str]:
    """What the numbers of a trial running in this process on `device` ("cpu", "cuda", "cuda:1") depend on
    besides code, config and seed: versions, the device, torch's thread count and determinism settings."""
    import torch  # not at the top: study.run's --dry-run reads the code state without loading torch

    env = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = "absent"
    env["torch"] = torch.__version__  # with its build: 2.14.1+cu130 is not 2.14.1+cpu
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        env["device"] = (f"{torch.cuda.get_device_name(index)}, CUDA {torch.version.cuda}, "
                         f"cuDNN {torch.backends.cudnn.version()}")
    else:
        env["device"] = f"CPU {cpu_model()}"
    env["threads"] = str(torch.get_num_threads())
    env["determinism"] = (f"deterministic_algorithms={torch.are_deterministic_algorithms_enabled()} "
                          f"cudnn.deterministic={torch.backends.cudnn.deterministic} "
                          f"cudnn.benchmark={torch.backends.cudnn.benchmark}")
    return env


def environment_tags(env: dict[str, str]) -> dict[str, str]:
    return {Tag.ENVIRONMENT + key: value for key, value in env.items()}


def recorded_environment(tags: dict[str, str]) -> dict[str, str]:
    return {key[len(Tag.ENVIRONMENT):]: value for key, value in tags.items() if key.startswith(Tag.ENVIRONMENT)}


def differences(recorded: dict[str, str], here: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, recorded, here) for every key whose value differs, in the recorded order."""
    keys = list(dict.fromkeys([*recorded, *here]))
    return [(k, recorded.get(k, "-"), here.get(k, "-")) for k in keys if recorded.get(k) != here.get(k)]


def slurm_tags() -> dict[str, str]:
    """The Slurm job this driver runs in and its restart count (`SLURM_RESTART_COUNT`, 0 until requeued); none
    outside Slurm."""
    job = os.environ.get("SLURM_JOB_ID")
    return {Tag.SLURM_JOB: job, Tag.SLURM_RESTARTS: os.environ.get("SLURM_RESTART_COUNT", "0")} if job else {}
