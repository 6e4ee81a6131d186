"""How close `study.run --dry-run --estimate` comes to the study it estimates, on this machine.

python -m benchmarks.estimate [--epochs 3] [--timesteps 5]

Three small digits studies of tiny, each in a fresh folder and store: eager (4 trials, 2 at once), and compiled
(1 trial) twice on one empty Inductor cache, so that the first compiles cold on the figures measured on the
project's CPU (isnm.kernels.MEASURED) and the second, at T+1, is estimated from the compile the first recorded
here. Each is estimated, then run, both timed as whole commands: the study's start (Ray, its workers) included.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import print_table

ROOT = Path(__file__).resolve().parent.parent


def timed(cwd: Path, *args: str, env: dict) -> tuple[float, str]:
    """(seconds, output) of `python -m study.run ARGS` in `cwd`."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "study.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"study.run {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - began, done.stdout


def seconds_of(text: str) -> float:
    """The seconds `study.run.estimate.duration` printed as "42 s", "3 min 05 s" or "1.5 h"."""
    minutes = re.fullmatch(r"(\d+) min (\d+) s", text)
    if minutes:
        return 60 * int(minutes[1]) + int(minutes[2])
    return float(text[:-2]) * (3600 if text.endswith(" h") else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        base = {"dataset": "digits", "arch": "tiny", "epochs": args.epochs, "batch_size": 128,
                "surrogate": {"schedule": "fixed"}}
        studies = [("eager", {"A": {"kernel": "eager", "timesteps": args.timesteps},
                                "B": {"kernel": "eager", "timesteps": 2 * args.timesteps}}, [0, 1]),
                   ("compiled, cold", {"A": {"kernel": "compiled", "timesteps": args.timesteps}}, [0]),
                   (f"compiled, cold at T={args.timesteps + 1}",
                    {"A": {"kernel": "compiled", "timesteps": args.timesteps + 1}}, [0])]
        for n, (label, variants, seeds) in enumerate(studies):
            cwd = Path(tmp) / f"s{n}"
            cwd.mkdir()
            path = cwd / "s.yaml"
            path.write_text(yaml.safe_dump({"name": f"s{n}", "base": base, "variants": variants, "seeds": seeds,
                                            "resources": {"cpu": 1}}))
            _, estimated = timed(cwd, str(path), "--dry-run", "--estimate", env=env)
            line = next(line for line in estimated.splitlines() if line.startswith("wall clock: ~"))
            predicted = seconds_of(re.match(r"wall clock: ~(.+?), ", line)[1])
            compiling = re.search(r"compiling, once per worker: (.*?), [^,]+ in all$", line)
            real, _ = timed(cwd, str(path), env=env)
            rows.append([label, f"{len(variants) * len(seeds)}", f"{predicted:.0f} s", f"{real:.0f} s",
                         f"{100 * (predicted - real) / real:+.0f}%", compiling[1] if compiling else "-"])
    print_table(f"Estimate against the study, digits, tiny, {args.epochs} epochs, 2 trials at a time at most",
                ["study", "trials", "estimated", "took", "off by", "compile counted"], rows)


if __name__ == "__main__":
    main()
