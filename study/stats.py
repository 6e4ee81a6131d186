"""The statistics of a study: mean ± sample std over seeds; the difference of two rows with its 95% CI and p-value, by
a paired t-test where the seeds pair the runs and by Welch's t otherwise; the interaction of a 2-D table (does
one row's difference to another change across the columns?), the same two ways; Holm's adjustment of a table's p-values;
the smallest difference a table could detect. The report prints them; adaptive seeds (study.design.adaptive) decide
on the same intervals.

Student's t and the noncentral t come from `scipy.special` (what `scipy.stats` calls, without the 50 MB and the
second `scipy.stats` takes to import); tests/test_stats.py holds each result to scipy.stats and statsmodels'
published answers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

ALPHA = 0.05
POWER = 0.8  # of the smallest detectable difference


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; nan for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


@dataclass(frozen=True)
class Difference:
    """mean(b) - mean(a), its 95% confidence interval, the two-sided p-value, and how they were made."""
    diff: float
    low: float
    high: float
    p: float
    test: str  # "paired" or "Welch"
    df: float  # the t-test's degrees of freedom
    se: float  # the difference's standard error

    @property
    def half_width(self) -> float:
        """Of the 95% interval: how precisely the difference is known."""
        return (self.high - self.low) / 2


ROUNDING = 1e-9  # a difference or standard error this small (in the printed unit) is floating-point rounding: zero


def from_t(diff: float, se: float, df: float, test: str) -> Difference:
    from scipy.special import stdtr, stdtrit  # Student's t CDF and its inverse

    if se < ROUNDING:  # every seed gave the same difference: no spread to test it against
        if abs(diff) < ROUNDING:  # rounding, as (a - b) - (c - d) of equal differences leaves: no difference
            return Difference(0.0, 0.0, 0.0, 1.0, test, df, 0.0)
        return Difference(diff, diff, diff, 0.0, test, df, 0.0)
    half = float(stdtrit(df, 1 - ALPHA / 2)) * se
    return Difference(diff, diff - half, diff + half, float(2 * stdtr(df, -abs(diff / se))), test, df, se)


def welch(a: list[float], b: list[float]) -> Difference:
    """mean(b) - mean(a) by Welch's t (unequal variances, independent samples; each at least 2 values)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se else len(a) + len(b) - 2
    return from_t(mb - ma, se, df, "Welch")


def paired(a: list[float], b: list[float]) -> Difference:
    """mean(b - a) by the paired t-test: a[i] and b[i] are one seed's two runs (at least 2 pairs)."""
    mean, std = mean_std([y - x for x, y in zip(a, b)])
    return from_t(mean, std / math.sqrt(len(a)), len(a) - 1, "paired")


# one row's results: seed -> (its value, what must agree for another row's run of that seed to be its pair)
Seeded = dict[int, tuple[float, tuple]]


def compared(reference: Seeded, cell: Seeded) -> Optional[Difference]:
    """cell's mean less reference's: paired on the seeds both rows have, when there are at least 2 and each pairs its
    two runs (one setting, so the seed fixes the initial weights and the batches); by Welch's t over all their values
    otherwise; None if either row has fewer than 2."""
    if len(reference) < 2 or len(cell) < 2:
        return None
    common = sorted(reference.keys() & cell.keys())
    if len(common) >= 2 and all(reference[s][1] == cell[s][1] for s in common):
        return paired([reference[s][0] for s in common], [cell[s][0] for s in common])
    return welch([v for v, _ in reference.values()], [v for v, _ in cell.values()])


def interaction(a: Seeded, b: Seeded, a_j: Seeded, b_j: Seeded) -> Optional[Difference]:
    """How much row B's difference to row A changes from the first column to column j: (mean(b_j) - mean(a_j)) -
    (mean(b) - mean(a)). Paired on the seeds all four cells have, when there are at least 2 and each seed's four runs
    pair: a one-sample t-test of each seed's double difference. Otherwise from the four independent means: their
    variances summed, with Welch-Satterthwaite's degrees of freedom. None if a cell has fewer than 2 runs."""
    cells = (a, b, a_j, b_j)
    if any(len(c) < 2 for c in cells):
        return None
    common = sorted(set(a).intersection(b, a_j, b_j))
    if len(common) >= 2 and all(len({c[s][1] for c in cells}) == 1 for s in common):
        mean, std = mean_std([(b_j[s][0] - a_j[s][0]) - (b[s][0] - a[s][0]) for s in common])
        return from_t(mean, std / math.sqrt(len(common)), len(common) - 1, "paired")
    stats = [(mean_std([v for v, _ in c.values()]), len(c)) for c in cells]
    (ma, _), (mb, _), (ma_j, _), (mb_j, _) = (m for m, _ in stats)
    variances = [sd ** 2 / n for (_, sd), n in stats]
    se = math.sqrt(sum(variances))
    df = (sum(variances) ** 2 / sum(v ** 2 / (n - 1) for v, (_, n) in zip(variances, stats)) if se
          else sum(n for _, n in stats) - 4)
    return from_t((mb_j - ma_j) - (mb - ma), se, df, "Welch")


def non_dominated(points: list[tuple[float, float]]) -> list[int]:
    """The indices of `points` (each (a, b), both larger-is-better) that no other point dominates (at least as good in
    both, better in one), in the order given: the Pareto front. Sorted by a, then swept keeping the best b so far,
    so n log n; equal points are all on the front."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_b, i = [], -math.inf, 0
    while i < len(order):  # points of one a: each is dominated only by a point of larger a, or of equal a larger b
        a = points[order[i]][0]
        same = [j for j in order[i:] if points[j][0] == a]
        top = max(points[j][1] for j in same)
        front += [j for j in same if points[j][1] == top and top > best_b]
        best_b = max(best_b, top)
        i += len(same)
    return sorted(front)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: the i-th smallest of m times (m - i + 1), never
    below an adjusted one before it, at most 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def detectable(d: Difference, alpha: float, power: float = POWER) -> float:
    """The smallest true difference the test of `d` detects with probability `power` at level `alpha`, two-sided,
    with `d`'s standard error and degrees of freedom: the noncentral t's noncentrality at that power, times se."""
    from scipy.special import nctdtr, stdtrit

    if d.se == 0:
        return 0.0
    critical = float(stdtrit(d.df, 1 - alpha / 2))

    def short_of(ncp: float) -> float:  # power at noncentrality ncp, less the power wanted
        below = float(nctdtr(d.df, ncp, -critical))  # the far tail: nan once it underflows
        return 1 - float(nctdtr(d.df, ncp, critical)) + (0.0 if math.isnan(below) else below) - power

    low, high = 0.0, critical + 10.0  # enough unless df is tiny (heavy tails): then widened, at most 20 times
    for _ in range(20):
        if short_of(high) > 0:
            break
        low, high = high, 2 * high
    for _ in range(60):  # power grows with the noncentrality: bisection (scipy.optimize would cost 21 MB to import)
        middle = (low + high) / 2
        low, high = (low, middle) if short_of(middle) > 0 else (middle, high)
    return (low + high) / 2 * d.se
