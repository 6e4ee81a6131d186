"""The statistics a report prints: mean ± sample std over seeds, and Welch's t between two rows."""
from __future__ import annotations

import math


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; nan for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def welch(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    """mean(b) - mean(a), its 95% confidence interval (low, high) and the two-sided p-value, by Welch's t."""
    from scipy.special import stdtr, stdtrit  # Student's t CDF and its inverse: what scipy.stats.t calls, without
    # the 50 MB and the second scipy.stats takes to import

    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    diff, se = mb - ma, math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff, (1.0 if diff == 0 else 0.0)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stdtrit(df, 0.975)) * se
    return diff, diff - half, diff + half, float(2 * stdtr(df, -abs(diff / se)))
