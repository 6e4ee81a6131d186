"""A data set for `dataset: noisy_digits:noisy_digits`: scikit-learn's 8x8 digits (no download) with Gaussian
noise of a fixed seed, so that the task is harder than the clean digits and every run sees the same images
(docs/own-network.md)."""
import torch
from sklearn.datasets import load_digits

from isnm.data import Images


def noisy_digits(noise: float = 0.5, test_fraction: float = 0.25) -> Images:
    """Digits [N, 1, 8, 8] scaled to [0, 1], plus noise of standard deviation `noise`, then standardized with
    the training images' mean and deviation; a fixed `test_fraction` of them held out for testing."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)  # the same noise and split for every run
    x = x + noise * torch.randn(x.shape, generator=generator)
    order = torch.randperm(len(y), generator=generator)
    test, train = order[:int(len(y) * test_fraction)], order[int(len(y) * test_fraction):]
    mean, std = x[train].mean(), x[train].std()
    return Images((x[train] - mean) / std, y[train], (x[test] - mean) / std, y[test], num_classes=10)
