"""A two-metric search's report: the front's hypervolume and its reference point by hand, and a real search of
accuracy against energy (Optuna's multi-objective sampler on real Ray) whose report holds the front's table, plot and
hypervolume, the front checked against a brute-force non-dominated filter."""
import numpy as np
import pytest

from study.report.cli import main as report
from study.report.front import hypervolume, reference_point
from tests.test_search import STUDY, searched


def test_hypervolume_is_the_area_the_front_dominates():
    assert hypervolume([(3.0, 1.0), (1.0, 3.0), (2.0, 2.0), (1.0, 1.0)], (0.0, 0.0)) == 3 + 2 + 1  # a staircase
    assert hypervolume([(2.0, 2.0)], (1.0, 1.0)) == 1.0
    assert hypervolume([(0.5, 5.0)], (1.0, 0.0)) == 0.0  # no better than the reference in one coordinate
    rng = np.random.default_rng(1)  # against a Monte Carlo count of the dominated area
    points = [tuple(p) for p in rng.uniform(0, 1, (12, 2))]
    samples = rng.uniform(0, 1, (200_000, 2))
    dominated = np.zeros(len(samples), bool)
    for a, b in points:
        dominated |= (samples[:, 0] <= a) & (samples[:, 1] <= b)
    assert hypervolume(points, (0.0, 0.0)) == pytest.approx(dominated.mean(), abs=0.005)


def test_the_reference_is_zero_for_a_metric_maximised_and_the_worst_trial_for_one_minimised():
    assert reference_point([(90.0, 0.5), (95.0, 0.7), (80.0, 0.6)], ("max", "min")) == (0.0, 0.7)


def brute_front(points):
    return [i for i, p in enumerate(points) if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]


@pytest.mark.slow
def test_a_search_of_accuracy_against_energy_reports_its_front(tmp_path, shared_ray):
    study = {**STUDY, "name": "pareto", "base": {**STUDY["base"], "epochs": 2},
             "search": {"algorithm": "optuna", "num_samples": 4, "metric": ["val_acc", "val_energy"],
                        "mode": ["max", "min"], "space": {"timesteps": {"choice": [1, 2, 3]},
                                                          "width": {"choice": [0.25, 0.5]}}}}
    client, trials, uri = searched(tmp_path, study, shared_ray)
    assert len(trials) == 4 and {r.info.status for r in trials} == {"FINISHED"}
    assert all(len(client.get_metric_history(r.info.run_id, "val_energy")) == 2 for r in trials)
    assert report(["--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r/pareto.md").read_text()
    assert "## Trade-off: val_acc (max) against val_energy (min)" in text and "![val_acc against val_energy" in text
    assert (tmp_path / "r/pareto-front.png").stat().st_size > 10_000
    points = [(r.data.metrics["val_acc"], -r.data.metrics["val_energy"]) for r in trials]
    front = brute_front(points)
    section = text.split("## Trade-off")[1].split("## Leaderboard")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert f"{len(front)} of 4 finished trials are non-dominated" in section
    assert sorted(float(line.split(" | ")[3]) for line in rows) == sorted(round(100 * points[i][0], 2) for i in front)
    values = [(100 * a, -b) for a, b in points]
    reference = (0.0, max(b for _, b in values))
    expected = hypervolume([(a, -b) for a, b in values], (0.0, -reference[1]))
    assert f"Hypervolume of the front: {expected:.4g} " in section
