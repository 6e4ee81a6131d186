"""Helpers for tests that run real studies: small study files and `python -m study.run` as a process."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def small_study(tmp_path: Path, name: str = "itest", epochs: int = 2, **extra) -> Path:
    """A 2-variant x 2-seed digits study of `epochs` epochs (4 trials, a few seconds each)."""
    study = {"name": name, "base": {"dataset": "digits", "arch": "tiny", "epochs": epochs, "timesteps": 2,
                                    "batch_size": 128},
             "variants": {"ISNM": {}, "ISNM+GSG": {"surrogate.schedule": "gradual"}},
             "seeds": [0, 1], "resources": {"cpu": 1}, **extra}
    study["base"]["surrogate"] = {"schedule": "fixed"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def loopback_env() -> dict:
    """The environment for Ray processes in tests: every Ray address on 127.0.0.1, never the host's IP."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def run_study(cwd: Path, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "study.run", *args], cwd=cwd, env=loopback_env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"study.run exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
