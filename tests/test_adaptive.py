"""Adaptive seeds (study.design.adaptive): which seeds each cell needs, that the order results arrive in does not
matter, that pairs stay whole, and that stopping on precision keeps the false-positive rate at its level."""
from pathlib import Path

import numpy as np
import yaml
import pytest

from study.errors import StudyError
from study.design.adaptive import MAX, TARGET, WAITING, SeedRule, judged
from study.design.config import AdaptiveSeeds
from study.design.load import study_from
from study.design.layout import Comparison
from study.design.plan import plan_trials, trial_count
from study.stats import ALPHA, compared
from tests.study_files import with_change

CPU = ("tiny", 1.0, "digits", 64, 0.1, "cpu")  # one pairing: every run of a seed pairs


def adaptive_study(seeds=None, **changes):
    data = with_change(seeds=seeds or {"min": 3, "max": 6, "target": 1.0}, **changes)
    return study_from(data, Path("adaptive.yaml"))


def outcomes(rule: SeedRule, values: dict[tuple[str, int], float], upto: dict) -> dict:
    """config hash -> (value as logged, a fraction, pairing) for each (variant, seed) in `values` below its cell's
    `upto` seeds."""
    return {t.config_hash: (values[t.variant, t.seed] / 100, CPU) for t in rule.trials
            if (t.variant, t.seed) in values and t.seed < upto.get(t.variant, 99)}


def test_every_cell_runs_min_seeds_first_and_the_plan_holds_max():
    study = adaptive_study()
    trials = plan_trials(study)
    assert trial_count(study) == len(trials) == 2 * 6 and study.seeds == list(range(6))
    rule = SeedRule(study, trials)
    decision = rule.decide({})
    assert decision.seeds == {("A",): 3, ("B",): 3} and not decision.settled
    assert [t.name for t in rule.needed(decision)] == [f"{v} seed={s}" for v in "AB" for s in range(3)]
    assert rule.needed(decision) == rule.first()


def test_a_wide_comparison_adds_the_next_seed_to_both_its_rows_and_a_narrow_one_stops():
    rule = SeedRule(adaptive_study(), plan_trials(adaptive_study()))
    noisy = {("A", s): 50.0 for s in range(6)} | {("B", s): 50.0 + d for s, d in enumerate([3, -3, 4, -4, 3, -3])}
    decision = rule.decide(outcomes(rule, noisy, {"A": 3, "B": 3}))
    assert decision.seeds == {("A",): 4, ("B",): 4} and decision.verdicts[0].state == WAITING
    decision = rule.decide(outcomes(rule, noisy, {}))  # everything at hand: the same as seed after seed
    assert decision.seeds == {("A",): 6, ("B",): 6} and decision.verdicts[0].state == MAX
    calm = {("A", s): 50.0 for s in range(6)} | {("B", s): 51.0 + 0.1 * (s % 2) for s in range(6)}
    decision = rule.decide(outcomes(rule, calm, {}))
    assert decision.seeds == {("A",): 3, ("B",): 3} and decision.verdicts[0].state == TARGET and decision.settled
    assert decision.verdicts[0].half_width <= 1.0


def test_a_reference_takes_the_seeds_of_each_comparison_and_pairs_stay_whole():
    study = adaptive_study(variants={"A": {}, "B": {"neuron.reset": "soft"}, "C": {"neuron.tau": 3.0}})
    rule = SeedRule(study, plan_trials(study))
    values = ({("A", s): 50.0 for s in range(6)} | {("B", s): 60.0 + 3 * (-1) ** s for s in range(6)}
              | {("C", s): 55.0 + 0.05 * s for s in range(6)})
    decision = rule.decide(outcomes(rule, values, {}))
    assert decision.seeds == {("A",): 6, ("B",): 6, ("C",): 3}
    states = {v.comparison.cell: v.state for v in decision.verdicts}
    assert states == {("B",): MAX, ("C",): TARGET}
    # C stopped on seeds 0-2; A went on for B's sake, and the report's comparison of A and C still pairs seeds 0-2
    a = {s: (values["A", s], CPU) for s in range(6)}
    c = {s: (values["C", s], CPU) for s in range(3)}
    assert compared(a, c).test == "paired" and compared(a, c).half_width == pytest.approx(
        decision.verdicts[1].half_width)


def test_a_failed_trial_counts_as_done_without_a_value():
    rule = SeedRule(adaptive_study(), plan_trials(adaptive_study()))
    values = {("A", s): 50.0 + s for s in range(6)} | {("B", s): 52.0 + s for s in range(6)}
    done = outcomes(rule, values, {"A": 3, "B": 3})
    failed = next(t.config_hash for t in rule.trials if t.variant == "B" and t.seed == 1)
    done[failed] = None
    decision = rule.decide(done)  # B has seeds 0 and 2; the comparison pairs them, and asks for more
    assert decision.seeds == {("A",): 3, ("B",): 3} and decision.verdicts[0].state == TARGET


def test_the_verdict_depends_only_on_the_seeds_below_it():
    comparison = Comparison(("A",), (), ("A",), ("B",))
    rule = AdaptiveSeeds(min=3, max=10, target=0.5)
    rng = np.random.default_rng(1)
    a = {s: (float(v), CPU) for s, v in enumerate(rng.normal(0, 1, 10))}
    b = {s: (float(v), CPU) for s, v in enumerate(rng.normal(0, 1, 10))}
    full = judged(rule, comparison, {("A",): a, ("B",): b})
    upto = {k: v for k, v in a.items() if k < full.seeds}
    partial = judged(rule, comparison, {("A",): upto, ("B",): {k: v for k, v in b.items() if k < full.seeds}})
    assert (partial.seeds, partial.state) == (full.seeds, full.state)


def test_stopping_on_precision_keeps_the_false_positive_rate_at_alpha():
    """Two identical rows, 2,000 studies: each stops where its interval is within target (or at max) and is then
    tested as the report tests it. Stopping looks at widths only, so about 5% of the studies find a difference."""
    rule = AdaptiveSeeds(min=3, max=10, target=1.5)
    comparison = Comparison(("A",), (), ("A",), ("B",))
    rng = np.random.default_rng(20261203)
    false_positives, stops = 0, []
    for _ in range(2000):
        seed_effect = rng.normal(0, 2.0, rule.max)  # what a seed does to both rows alike (weights, batches)
        a, b = (seed_effect + rng.normal(0, 0.7, rule.max) for _ in range(2))
        verdict = judged(rule, comparison, {("A",): {s: (float(v), CPU) for s, v in enumerate(a)},
                                            ("B",): {s: (float(v), CPU) for s, v in enumerate(b)}})
        n = verdict.seeds
        d = compared({s: (float(a[s]), CPU) for s in range(n)}, {s: (float(b[s]), CPU) for s in range(n)})
        false_positives += d.p < ALPHA
        stops.append(n)
    assert 0.03 <= false_positives / 2000 <= 0.07
    assert len(set(stops)) >= 4 and min(stops) == 3  # the rule did stop at different seeds


@pytest.mark.parametrize("seeds, words", [
    ({"min": 1, "max": 5, "target": 1.0}, "seeds.min: got 1, expected an integer >= 2"),
    ({"min": 3, "max": 2, "target": 1.0}, r"seeds.max: got 2, expected an integer >= min \(3\)"),
    ({"min": 3, "max": 5, "target": 0}, "seeds.target: got 0.0, expected a number > 0"),
    ({"min": 3, "max": 5}, "seeds.target: missing"),
    ({"min": 3, "max": 5, "target": 1, "step": 2}, "seeds.step: unknown key"),
])
def test_adaptive_seeds_are_checked(seeds, words):
    with pytest.raises(StudyError, match=words):
        adaptive_study(seeds)


def test_adaptive_seeds_with_a_search_are_refused():
    data = {"name": "s", "base": {"dataset": "digits", "arch": "tiny"}, "seeds": {"min": 2, "max": 3, "target": 1},
            "search": {"space": {"optim.lr": {"loguniform": [0.001, 0.1]}}}}
    with pytest.raises(StudyError, match=r"seeds: got '\{min, max, target\} with search:', expected a list of seeds: a "
                                         "search's Tuner takes one search algorithm"):
        study_from(data, Path("s.yaml"))


def test_a_profile_replaces_adaptive_seeds_as_it_replaces_a_list():
    study = adaptive_study(profiles={"quick": {"seeds": [0, 1]}})
    assert study.adaptive is not None
    quick = study_from(with_change(seeds={"min": 3, "max": 6, "target": 1.0}, profiles={"quick": {"seeds": [0, 1]}}),
                       Path("adaptive.yaml"), "quick")
    assert quick.adaptive is None and quick.seeds == [0, 1]
    back = study_from(with_change(profiles={"wide": {"seeds": {"min": 2, "max": 4, "target": 0.5}}}),
                      Path("adaptive.yaml"), "wide")
    assert back.adaptive == AdaptiveSeeds(2, 4, 0.5)


def test_the_dry_run_prints_the_lowest_and_highest_trial_count(tmp_path, capsys):
    from study.run.cli import main

    path = tmp_path / "adaptive.yaml"
    path.write_text(yaml.safe_dump(with_change(seeds={"min": 2, "max": 5, "target": 0.5}, name="ad")))
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("ad: 4 to 10 trials (adaptive seeds: 2 to 5 per table cell, more only where a comparison's 95% "
                      "interval of test_acc is wider than ±0.5 pp)")
    assert [line.split()[:2] for line in out[2:6]] == [["A", "seed=0"], ["A", "seed=1"], ["B", "seed=0"],
                                                        ["B", "seed=1"]]
    assert out[6] == "then seeds 2 to 4 as the results ask for them (--estimate counts all 10)"
