"""Data sets held as whole tensors on the training device, with augmentation as batched tensor ops.

digits (scikit-learn's 8x8 handwritten digits, shipped with the package) is the embedded default;
cifar10 and cifar100 are read from CIFAR's "python version" files under `data_dir`. Your own set is a callable
that returns `Images` (`dataset: module:callable`): the validation split, the move to the device and the
fingerprint are done here, as for the built-in sets.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from isnm.datafiles import CIFAR, CLASSES, cifar_folder, read_cifar, read_digits
from isnm.plugins import PluginError, first_line, loaded

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


@dataclass(frozen=True)
class Images:
    """What your data set's callable returns (`dataset: module:callable`, called with `dataset_args`): square images
    [N, C, H, H] as floats, normalized as you want them (nothing is done to them), integer labels [N] in
    [0, num_classes), a training and a test set. `augment`: random crop and flip while training, off unless asked.
    The validation split (the config's `validation`) is taken from the training set here."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: bool = False


def checked_images(images: object, name: str, validation: float) -> Images:
    """`images`, if it is what a data set callable must return; PluginError naming what is wrong otherwise."""
    def fail(what: str) -> None:
        raise PluginError(f"dataset {name}: {what}")

    if not isinstance(images, Images):
        fail(f"returned {type(images).__name__}, expected isnm.data.Images")
    if not isinstance(images.num_classes, int) or images.num_classes < 2:
        fail(f"num_classes {images.num_classes!r}, expected an integer >= 2")
    for part in ("train", "test"):
        x, y = getattr(images, f"{part}_x"), getattr(images, f"{part}_y")
        if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 4 and x.shape[2] == x.shape[3]):
            fail(f"{part}_x: {describe_tensor(x)}, expected square float images [N, C, H, H]")
        if not (isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point() and y.dtype != torch.bool):
            fail(f"{part}_y: {describe_tensor(y)}, expected integer labels [N]")
        if len(x) != len(y):
            fail(f"{part}_x holds {len(x)} images but {part}_y {len(y)} labels")
        if len(y) and not (0 <= int(y.min()) and int(y.max()) < images.num_classes):
            fail(f"{part}_y: labels from {int(y.min())} to {int(y.max())}, expected 0 to {images.num_classes - 1}")
    if images.train_x.shape[1:] != images.test_x.shape[1:]:
        fail(f"training images {list(images.train_x.shape[1:])} and test images {list(images.test_x.shape[1:])} differ")
    keep, held = validation_split(len(images.train_y), validation)
    if not len(keep) or not len(images.test_y) or (validation > 0 and not len(held)):
        fail(f"{len(images.train_y)} training and {len(images.test_y)} test images: too few to hold out "
             f"validation {validation:g} and train on the rest")
    return images


def describe_tensor(value: object) -> str:
    if not isinstance(value, torch.Tensor):
        return f"a {type(value).__name__}"
    return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"


def load_images(name: str, args: dict, folder, device: torch.device, validation: float) -> Dataset:
    """Your data set `name` (module:callable or a registered name), called with `args`, checked, split, on `device`."""
    load = loaded("dataset", name, folder)
    try:
        images = load(**args)
    except Exception as exc:  # the user's code: its traceback stays on the exception, for the trial's log
        raise PluginError(f"dataset {name}: calling it with dataset_args {args} failed: {type(exc).__name__}: "
                          f"{first_line(exc)}") from exc
    images = checked_images(images, name, validation)
    keep, held = validation_split(len(images.train_y), validation)

    def prepared(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.float().to(device), y.long().to(device)

    return Dataset(*prepared(images.train_x[keep], images.train_y[keep]),
                   *prepared(images.train_x[held], images.train_y[held]),
                   *prepared(images.test_x, images.test_y), images.num_classes, images.augment)


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

    return Dataset(*prepared(train), *prepared(val), *prepared(test), CLASSES["digits"], augment=False)


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
                 device: torch.device | str = "cpu", validation: float = 0.0, args: dict | None = None,
                 folder=None) -> Dataset:
    """Data set `name` on `device`, with `validation` (a fraction) of its training set held out: built in, or your
    own (`args` its keyword arguments, its module found in `folder` first)."""
    device = torch.device(device)
    if not 0.0 <= validation < 1.0:
        raise ValueError(f"validation must be a fraction in [0, 1), got {validation!r}")
    if name == "digits":
        return load_digits(device, validation)
    if name in CIFAR:
        return load_cifar(name, data_dir, download, device, validation)
    return load_images(name, args or {}, folder, device, validation)


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
