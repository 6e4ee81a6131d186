"""Each statistic a report prints, held to scipy.stats or to a published answer."""
import math

import numpy as np
import pytest

from tests.test_front import brute_front

from study.stats import Difference, detectable, holm, interaction, mean_std, non_dominated, paired, welch

SAMPLES = [([90.1, 91.3, 90.7], [92.0, 91.1, 93.4]), ([1.0, 2.0, 4.0, 8.0], [3.0, 3.5, 1.0, 9.5]),
           ([46.2, 44.0, 49.9, 41.3, 50.1], [93.1, 95.0, 92.2, 94.9, 93.8])]


@pytest.mark.parametrize("a, b", SAMPLES + [([1.0, 2.0, 4.0, 8.0], [3.0, 3.5])])
def test_welch_agrees_with_scipy(a, b):
    from scipy import stats

    d = welch(a, b)
    result = stats.ttest_ind(b, a, equal_var=False)
    interval = result.confidence_interval(0.95)
    assert d.diff == pytest.approx(sum(b) / len(b) - sum(a) / len(a)) and d.test == "Welch"
    assert d.p == pytest.approx(result.pvalue, rel=1e-12)
    assert (d.low, d.high) == pytest.approx((interval.low, interval.high), rel=1e-12)
    assert d.df == pytest.approx(result.df)


@pytest.mark.parametrize("a, b", SAMPLES)
def test_paired_agrees_with_scipy(a, b):
    from scipy import stats

    d = paired(a, b)
    result = stats.ttest_rel(b, a)
    interval = result.confidence_interval(0.95)
    assert d.diff == pytest.approx(np.mean(np.array(b) - np.array(a))) and d.test == "paired"
    assert d.p == pytest.approx(result.pvalue, rel=1e-12)
    assert (d.low, d.high) == pytest.approx((interval.low, interval.high), rel=1e-12)


def test_pairing_a_shared_seed_effect_makes_the_test_stronger():
    # each seed shifts both rows alike (same initial weights, same batches): the paired test sees through it
    seed_effect = [0.0, 3.0, -2.0, 5.0, -4.0]
    a = [80 + s for s in seed_effect]
    b = [81 + s + e for s, e in zip(seed_effect, [0.1, -0.1, 0.2, 0.0, -0.2])]
    assert paired(a, b).p < 0.001 < 0.5 < welch(a, b).p


def test_holm_matches_the_textbook_step_down():
    # m = 4: sorted p 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.3, 0.9]) == pytest.approx([0.6, 0.9]) and holm([]) == []
    assert holm([0.4, 0.6, 0.7]) == [1.0, 1.0, 1.0]  # capped at 1


@pytest.mark.parametrize("n, published", [(64, 0.5), (10, 1.3249), (20, 0.9091)])
def test_detectable_difference_matches_published_power_tables(n, published):
    # two groups of n, sd 1, alpha 0.05 two-sided, power 0.8: Cohen's 64 a group for d = 0.5; G*Power's
    # effect sizes for 10 and 20 a group
    d = Difference(0.0, 0.0, 0.0, 1.0, "Welch", 2 * n - 2, math.sqrt(2 / n))
    assert detectable(d, 0.05) == pytest.approx(published, abs=0.002)


def test_detectable_difference_is_detected_80_percent_of_the_time():
    from scipy import stats

    rng = np.random.default_rng(0)
    n, sd = 5, 2.0
    d = paired([0.0] * n, list(rng.normal(0, sd, n)))  # its se and df are what matter
    delta = detectable(Difference(0, 0, 0, 1, "paired", n - 1, sd / math.sqrt(n)), 0.05 / 3)
    trials = rng.normal(delta, sd, (4000, n))
    rejected = stats.ttest_1samp(trials, 0.0, axis=1).pvalue < 0.05 / 3
    assert d.test == "paired" and abs(rejected.mean() - 0.8) < 0.025


def test_sample_std():
    assert mean_std([90.0, 92.0]) == pytest.approx((91.0, math.sqrt(2)))


# a 2 x 2 table, three seeds: rows A and B, columns 1 and j
A1, B1, AJ, BJ = [80.1, 82.4, 79.0], [84.0, 85.1, 83.3], [70.2, 71.9, 69.5], [81.5, 84.0, 80.2]


def seeded_values(values: list[float], pairing=()) -> dict:
    return {seed: (v, pairing) for seed, v in enumerate(values)}


def test_the_paired_interaction_is_a_one_sample_t_test_of_each_seeds_double_difference():
    from scipy import stats

    d = interaction(*(seeded_values(v) for v in (A1, B1, AJ, BJ)))
    double = [(bj - aj) - (b - a) for a, b, aj, bj in zip(A1, B1, AJ, BJ)]
    result = stats.ttest_1samp(double, 0.0)
    interval = result.confidence_interval(0.95)
    assert d.test == "paired" and d.diff == pytest.approx(np.mean(double), abs=1e-9)
    assert d.p == pytest.approx(result.pvalue, abs=1e-9)
    assert (d.low, d.high) == pytest.approx((interval.low, interval.high), abs=1e-9)


def test_the_unpaired_interaction_sums_the_four_means_variances_with_welch_satterthwaites_df():
    from scipy import stats

    cells = [seeded_values(A1, "x"), seeded_values(B1, "y"), seeded_values(AJ, "x"), seeded_values(BJ[:2] + [77.7], "z")]
    d = interaction(*cells)
    groups = [A1, B1, AJ, BJ[:2] + [77.7]]
    v = [np.var(g, ddof=1) / len(g) for g in groups]  # by hand: each mean's variance
    se = math.sqrt(sum(v))
    df = sum(v) ** 2 / sum(x ** 2 / (len(g) - 1) for x, g in zip(v, groups))
    diff = (np.mean(groups[3]) - np.mean(groups[2])) - (np.mean(groups[1]) - np.mean(groups[0]))
    assert d.test == "Welch" and d.diff == pytest.approx(diff, abs=1e-9) and d.df == pytest.approx(df, abs=1e-9)
    assert d.p == pytest.approx(2 * stats.t.sf(abs(diff / se), df), abs=1e-9)
    assert d.high - d.diff == pytest.approx(stats.t.ppf(0.975, df) * se, abs=1e-9)
    # a cell of one run: no test
    assert interaction(seeded_values(A1), seeded_values(B1), seeded_values(AJ), seeded_values(BJ[:1])) is None


def test_a_difference_of_rounding_alone_is_no_difference():
    # soft - hard the same at every tau and seed: the double differences are 1e-14-sized rounding, not an interaction
    a, b, a_j, b_j = ([80.5 + s, 81.5 + s] for s in (0.0, 5.0, 4.25, 9.25))
    d = interaction(*(seeded_values(v) for v in (a, b, a_j, b_j)))
    assert (d.diff, d.p) == (0.0, 1.0)
    same = paired([1.0, 2.0], [3.0, 4.0])  # every seed 2 points better: no spread, an exact difference
    assert (same.diff, same.p) == (2.0, 0.0)


def test_the_front_is_the_brute_force_non_dominated_filter():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 40, 200):
        for grid in (False, True):  # on a grid: ties in one coordinate and equal points
            points = [tuple(map(float, p)) for p in (rng.integers(0, 6, (n, 2)) if grid else rng.normal(size=(n, 2)))]
            assert non_dominated(points) == brute_front(points), points
