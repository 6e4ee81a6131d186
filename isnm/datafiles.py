"""Data sets on disk: CIFAR's "python version" files found, fetched when allowed and read safely, and the
check a study runs before any trial. numpy only, no torch: a study's driver checks its data without loading
torch.
"""
from __future__ import annotations

import fcntl
import gzip
import importlib.util
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from isnm.config import parse_config

CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "labels": b"labels", "classes": 10,
                "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"],
                 "labels": b"fine_labels", "classes": 100,
                 "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)},
}
CLASSES = {"digits": 10, **{name: spec["classes"] for name, spec in CIFAR.items()}}  # the built-in sets' classes


class DataError(Exception):
    """A data set cannot be found or read; the message says where it was looked for and what to do."""


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] in 0..16, labels): scikit-learn's digits, read from the file it ships, as its
    `load_digits` reads it. Importing scikit-learn for them costs 1.5 s (it loads scipy.stats) in every trial."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None or spec.origin is None:
        raise DataError("the digits data set ships with scikit-learn, which is not installed: pip install scikit-learn")
    with gzip.open(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", "rt") as rows:
        data = np.loadtxt(rows, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


# Every global CIFAR's batch files name: numpy's array reconstructor (under numpy 1's module name, as in
# the official files, and numpy 2's, as in files written with numpy 2), ndarray and dtype. Their labels,
# file names and keys are builtin lists, ints and bytes, which name no global.
CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy", "ndarray"), ("numpy", "dtype")}


class CifarUnpickler(pickle.Unpickler):
    """Reads a CIFAR batch file, refusing any global beyond CIFAR_GLOBALS: a pickle names the callables
    it runs while loading, so a file planted in data_dir could otherwise run any code."""

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file, encoding="bytes")  # Python 2's str, which CIFAR's keys are, as bytes
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CIFAR_GLOBALS:
            raise DataError(f"{self.path}: refusing to load {module + '.' + name!r} from a CIFAR file: it may run "
                            f"code; delete the file and download again")  # repr: a planted name may hold newlines
        return super().find_class(module, name)


def read_cifar_files(folder: Path, names: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = CifarUnpickler(f, folder / name).load()
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def cifar_missing(root: Path, name: str) -> list[str]:
    spec = CIFAR[name]
    folder = root / spec["folder"]
    return [f for f in spec["train"] + spec["test"] if not (folder / f).is_file()]


def cifar_absence(name: str, data_dir: str) -> str | None:
    """Why data set `name` is not on disk under `data_dir` (and how to get it), or None when it is."""
    spec = CIFAR[name]
    root = Path(data_dir).expanduser().resolve()
    missing = cifar_missing(root, name)
    if not missing:
        return None
    return (f"{name}: files {', '.join(missing)} not found in {root / spec['folder']}; "
            f"set download: true, or unpack {spec['url']} into {root}")


@contextmanager
def download_lock(root: Path):
    """One process at a time downloads into `root`: trials sharing a data folder would otherwise each
    fetch the archive and unpack it over the others' half-written files."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".download.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def download_cifar(root: Path, name: str) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # network errors come in many types; all end the same way for the user
        raise DataError(f"{name}: download from {CIFAR[name]['url']} into {root} failed ({exc}); "
                        f"download it by hand and unpack it there") from exc


def cifar_folder(name: str, data_dir: str, download: bool) -> Path:
    """The folder holding CIFAR's files, fetched first when they are missing and `download` is on."""
    root = Path(data_dir).expanduser().resolve()
    if cifar_missing(root, name) and download:
        with download_lock(root):
            if cifar_missing(root, name):  # another process may have fetched it while this one waited
                download_cifar(root, name)
    absence = cifar_absence(name, data_dir)
    if absence:
        raise DataError(absence)
    return root / CIFAR[name]["folder"]


def read_cifar(name: str, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) as uint8/int64 arrays; DataError if unreadable."""
    spec = CIFAR[name]
    try:
        return (*read_cifar_files(folder, spec["train"], spec["labels"]),
                *read_cifar_files(folder, spec["test"], spec["labels"]))
    except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        # a truncated file ends in EOFError or UnpicklingError, depending on where it was cut
        raise DataError(f"{name}: cannot read {folder} ({type(exc).__name__}: {exc}); "
                        f"delete it and download again") from exc


def check_cifar(name: str, data_dir: str, download: bool) -> None:
    """Fetch CIFAR if allowed and missing, then read every file once: raises DataError (one line) before
    any trial would, so a study stops before it starts."""
    read_cifar(name, cifar_folder(name, data_dir, download))




def check_data(config: dict) -> None:
    """Make sure this config's data set can be read, fetching it first where allowed; raises DataError.

    Run before any trial starts, so a missing or damaged data set is one line rather than a failed
    trial (and, with download on, so that one process fetches it, not every trial)."""
    cfg = parse_config(config)
    if cfg.dataset in CIFAR:
        check_cifar(cfg.dataset, cfg.data_dir, cfg.download)
