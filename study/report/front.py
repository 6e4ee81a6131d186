"""A two-metric search's report (`metric: [val_acc, val_energy]`, `mode: [max, min]`): the trade-off it found. Its
non-dominated trials (no other trial as good in both metrics and better in one: the Pareto front) as a table and a
plot, and the front's hypervolume."""
from __future__ import annotations

from pathlib import Path

from isnm import metrics
from study.markdown import markdown_table
from study.records import METRICS, RunRecord
from study.report.leaderboard import finished_samples, short
from study.report.plots import saved
from study.report.tables import number, scaled
from study.design.config import Study
from study.stats import non_dominated


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area the points (both coordinates larger-is-better) dominate beyond `reference`: the front's
    hypervolume. A point no better than the reference in a coordinate adds nothing."""
    area, covered = 0.0, reference[1]
    for i in sorted(non_dominated(points), key=lambda i: -points[i][0]):  # the first coordinate falling, the second rising
        a, b = points[i]
        if a > reference[0] and b > covered:
            area += (a - reference[0]) * (b - covered)
            covered = b
    return area


def reference_point(values: list[tuple[float, float]], modes: tuple[str, str]) -> tuple[float, float]:
    """The hypervolume's reference, in the metrics' printed scale: 0 for a metric maximised (the accuracies a search
    may select on start at 0), the largest value any finished trial reached for a metric minimised (energy, SynOps
    and firing have no bound of their own), so that every trial lies within it."""
    return tuple(0.0 if mode == "max" else max(v[i] for v in values) for i, mode in enumerate(modes))


def front_section(children: list[RunRecord], study: Study, out: Path) -> tuple[list[str], list[Path]]:
    """(the report's parts, the plot drawn) of a two-metric search: the front's trials, best first by the first
    metric, with their sampled values and test accuracy; the plot of every trial with the front drawn; and the
    hypervolume."""
    search = study.spec.search
    (first, first_mode), (second, second_mode) = search.objectives
    done = [run for run in finished_samples(children, study) if second in run.metrics and first in run.metrics]
    if not done:
        return ["## Trade-off\n\nNo finished search trials yet."], []
    values = [(scaled(run.metrics[first], first), scaled(run.metrics[second], second)) for run in done]
    modes = (first_mode, second_mode)
    signs = [1.0 if mode == "max" else -1.0 for mode in modes]
    better = [(signs[0] * a, signs[1] * b) for a, b in values]  # both larger-is-better
    front = sorted(non_dominated(better), key=lambda i: -better[i][0])
    reference = reference_point(values, modes)
    volume = hypervolume(better, (signs[0] * reference[0], signs[1] * reference[1]))
    keys = list(search.space)
    header = ["#"] + keys + [METRICS[first].header, METRICS[second].header, METRICS[metrics.TEST_ACC].header]
    rows = [[str(n)] + [short(done[i].params[k]) for k in keys] + [number(values[i][0], first),
                                                                 number(values[i][1], second),
                                                                 test_accuracy(done[i])]
            for n, i in enumerate(front, start=1)]
    plot = out / f"{study.name}-front.png"
    draw_front(values, front, (first, second), plot)
    unit = f"{METRICS[first].header} × {METRICS[second].header}"
    text = (f"## Trade-off: {first} ({first_mode}) against {second} ({second_mode})\n\n"
            f"{len(front)} of {len(done)} finished trials are non-dominated (none other is as good in both and better "
            f"in one), best {first} first; selected on the validation pass only, the test accuracy beside them.\n\n"
            + markdown_table(header, rows)
            + f"\n\nHypervolume of the front: {volume:.4g} ({unit}), the area it dominates from the reference point "
              f"({number(reference[0], first)}, {number(reference[1], second)}): 0 for a metric maximised, the "
              f"largest value a trial reached for one minimised. A larger one is a better front, over the same "
              f"reference.\n\n![{first} against {second}, the front drawn]({plot.name})")
    return [text], [plot]


def test_accuracy(run: RunRecord) -> str:
    value = run.metrics.get(metrics.TEST_ACC)
    return "—" if value is None else number(scaled(value, metrics.TEST_ACC), metrics.TEST_ACC)


def draw_front(values: list[tuple[float, float]], front: list[int], names: tuple[str, str], path: Path) -> None:
    """Every trial, its second metric across and its first up, the front ringed and joined."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    ax.scatter([b for _, b in values], [a for a, _ in values], color="tab:blue", label="trial")
    edge = sorted((values[i][1], values[i][0]) for i in front)
    ax.plot(*zip(*edge), color="black", marker="o", markersize=10, fillstyle="none", label="non-dominated")
    saved(fig, ax, f"{METRICS[names[1]].header}, final epoch", f"{METRICS[names[0]].header}, final epoch", path)
