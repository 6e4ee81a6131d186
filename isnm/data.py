"""Data sets held as whole tensors on the training device, with augmentation as batched tensor ops.

digits (scikit-learn's 8x8 handwritten digits, shipped with the package) is the embedded default;
cifar10 and cifar100 are read from CIFAR's "python version" files under `data_dir`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from isnm.config import DATASETS
from isnm.datafiles import CIFAR, cifar_folder, read_cifar, read_digits

DIGITS_SPLIT_SEED = 0  # fixed, so every run of every study sees the same digits test set
DIGITS_TEST_FRACTION = 0.25
VALIDATION_SPLIT_SEED = 0  # fixed too: every run with the same `validation` fraction selects on the same images

@dataclass
class Dataset:
    train_x: torch.Tensor  # [N, C, H, W] float, normalized, on the training device
    train_y: torch.Tensor  # [N] int64
    val_x: torch.Tensor  # held out of the training set, for choosing epochs and configurations; may be empty
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: bool  # random crop (padding 4) and horizontal flip while training

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]


def normalized(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def validation_split(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices) of a training set of n: `fraction` of it held out, at random
    but the same for every run (VALIDATION_SPLIT_SEED)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SPLIT_SEED))
    n_val = int(round(n * fraction))
    return order[n_val:].sort().values, order[:n_val].sort().values


def load_digits(device: torch.device, validation: float = 0.0) -> Dataset:
    images, labels = read_digits()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(labels, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = int(len(y) * DIGITS_TEST_FRACTION)
    test, rest = order[:n_test], order[n_test:]
    keep, held = validation_split(len(rest), validation)
    train, val = rest[keep], rest[held]
    mean, std = x[train].mean().reshape(1), x[train].std().reshape(1)  # of the images trained on only

    def prepared(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return normalized(x[idx], mean, std).to(device), y[idx].to(device)

    return Dataset(*prepared(train), *prepared(val), *prepared(test), 10, augment=False)


def load_cifar(name: str, data_dir: str, download: bool, device: torch.device, validation: float = 0.0) -> Dataset:
    spec = CIFAR[name]
    train_x, train_y, test_x, test_y = read_cifar(name, cifar_folder(name, data_dir, download))
    mean, std = torch.tensor(spec["mean"]), torch.tensor(spec["std"])
    keep, held = (idx.numpy() for idx in validation_split(len(train_y), validation))

    def prepared(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return normalized(torch.from_numpy(x).float() / 255.0, mean, std).to(device), torch.from_numpy(y).to(device)

    return Dataset(*prepared(train_x[keep], train_y[keep]), *prepared(train_x[held], train_y[held]),
                   *prepared(test_x, test_y), spec["classes"], augment=True)


def load_dataset(name: str, data_dir: str = "./data", download: bool = False,
                 device: torch.device | str = "cpu", validation: float = 0.0) -> Dataset:
    """Data set `name` on `device`, with `validation` (a fraction) of its training set held out."""
    device = torch.device(device)
    if not 0.0 <= validation < 1.0:
        raise ValueError(f"validation must be a fraction in [0, 1), got {validation!r}")
    if name == "digits":
        return load_digits(device, validation)
    if name in CIFAR:
        return load_cifar(name, data_dir, download, device, validation)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def augmented(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop (zero padding, which is the mean colour after normalization) and horizontal flip."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols).view(b, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, rows, cols]


def train_batches(data: Dataset, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled (and, for CIFAR, augmented) training batches; the last partial batch is kept."""
    n = len(data.train_y)
    order = torch.randperm(n, generator=generator, device=generator.device).to(data.train_x.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        x = data.train_x[idx]
        yield (augmented(x, generator) if data.augment else x), data.train_y[idx]


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) in order, `batch_size` at a time: for evaluation."""
    for start in range(0, len(y), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def fingerprint(data: Dataset) -> str:
    """16 hex digits of SHA-256 over every tensor of the data set as loaded (images after normalization, labels,
    in split order): a changed CIFAR copy, digits split or normalization gives another fingerprint."""
    digest = hashlib.sha256()
    for tensor in (data.train_x, data.train_y, data.val_x, data.val_y, data.test_x, data.test_y):
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
