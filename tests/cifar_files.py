"""Small files in CIFAR's on-disk ("python version") format, so the real reading code is exercised."""
import pickle
from pathlib import Path

import numpy as np

from isnm.datafiles import CIFAR


def write_fake_cifar(root: Path, name: str = "cifar10", per_file: int = 20, seed: int = 0) -> Path:
    spec = CIFAR[name]
    folder = root / spec["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for fname in spec["train"] + spec["test"]:
        batch = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 spec["labels"]: rng.integers(0, spec["classes"], per_file).tolist()}
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f)
    return folder
