"""What compiling the ISNM kernels costs, and what it saves, per architecture: the figures `kernel: auto` and the
estimate use (isnm.kernels.MEASURED).

python -m benchmarks.compile [--archs tiny vgg_small resnet18] [--epochs 3]

For each architecture it trains the measured setting (isnm.kernels.MEASURED_SETTING: digits, a quarter of the
channels, T=5) three times, each in a fresh process as a trial's worker is: compiled on an empty Inductor cache,
compiled again on the cache the first run filled, and eager. It prints, per architecture, the seconds of the
first epoch of each (compiling happens there) and of a later epoch of each kernel (the median of the rest), as
the Python literal isnm/kernels.py holds. About 8 minutes on 2 CPU cores, most of it compiling.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from isnm.kernels import MEASURED_SETTING

TRAIN = """
import json, sys
from isnm.training import train
seconds = []
train(json.loads(sys.argv[1]), on_epoch=lambda metrics, state: seconds.append(metrics["epoch_seconds"]))
print(json.dumps(seconds))
"""


def epoch_seconds(config: dict, cache: str) -> list[float]:
    """Each epoch's seconds of `config` trained in a fresh process on the Inductor cache folder `cache`."""
    done = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(config)], capture_output=True, text=True,
                          check=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}, timeout=1800)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["tiny", "vgg_small", "resnet18"])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    figures = {}
    for arch in args.archs:
        config = {**MEASURED_SETTING, "arch": arch, "epochs": args.epochs}
        with tempfile.TemporaryDirectory() as cache:
            cold = epoch_seconds({**config, "kernel": "compiled"}, cache)
            warm = epoch_seconds({**config, "kernel": "compiled"}, cache)
            eager = epoch_seconds({**config, "kernel": "eager"}, cache)
        figures[arch] = (f"KernelFigures(cold_first={cold[0]:.1f}, warm_first={warm[0]:.1f}, "
                         f"compiled={statistics.median(cold[1:] + warm[1:]):.2f}, eager_first={eager[0]:.2f}, "
                         f"eager={statistics.median(eager[1:]):.2f})")
        print(f"{arch}: compiled {cold} (empty cache), {warm} (filled), eager {eager}", file=sys.stderr, flush=True)
    print("MEASURED = {\n" + "".join(f"    {arch!r}: {text},\n" for arch, text in figures.items()) + "}")


if __name__ == "__main__":
    main()
