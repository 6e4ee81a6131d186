"""A population-based search's report: its members ranked by the search's metric, and the schedule the best one's
final weights trained with (its ancestry across exploits) drawn beside GSG's."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from isnm import SurrogateConfig, betas_text, metrics, surrogate_at
from study.markdown import markdown_table
from study.records import METRICS, PbtExploit
from study.report.tables import number, scaled
from study.design.config import Study
from study.tracking.pbt import Population, population

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

GSG = SurrogateConfig()  # the paper's schedule: beta from 0.5 to 5, log-linear


def population_report(client: MlflowClient, exp_id: str, study: Study, plot: Path) -> tuple[str, bool]:
    """(the Markdown of the members' table and the best member's schedule, whether `plot` was drawn)."""
    search = study.spec.search
    found = population(client, exp_id, study.profile, search)
    if not found.ranked:
        return f"No whole population yet (all {search.population} members finished).", False
    names = {r.run_id: r.name for r in found.ranked}
    header = ["#", "Member", METRICS[search.metric].header, METRICS[metrics.TEST_ACC].header, "exploits",
              "beta per epoch (its final weights')"]
    rows = [[str(i), run.name] + [number(scaled(run.metrics[m], m), m) if m in run.metrics else "—"
                                  for m in (search.metric, metrics.TEST_ACC)]
            + [str(len(PbtExploit.of(run))), betas_text(found.betas(run.run_id))]
            for i, run in enumerate(found.ranked, start=1)]
    best = found.best
    lineage = " ← ".join(f"{names.get(s.run, s.run[:8])} (epochs {s.first}-{s.last})"
                         for s in reversed(found.schedules[best.run_id]))
    draw(found, study.base["epochs"], plot)
    return (markdown_table(header, rows) +
            f"\n\nRanked by final {search.metric} (never test data). The best, {best.name}, trained its final weights "
            f"through {lineage}: `surrogate: {{schedule: {{from_study: {study.name}}}}}` in a study file replays that "
            f"schedule from scratch over seeds.\n\n![the best member's beta per epoch beside GSG's]({plot.name})"), True


def draw(found: Population, epochs: int, path: Path) -> None:
    """The best member's beta per epoch, coloured by the member that trained each stretch, over every member's
    (faint) and GSG's curve (eq. 7, 0.5 to 5)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from study.report.plots import whole_epochs

    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = list(range(0, epochs + 1))
    for run in found.ranked:
        betas = found.betas(run.run_id)
        ax.plot(x, betas[:1] + betas, drawstyle="steps-pre", color="0.8", lw=1)
    ax.plot(x, [surrogate_at(GSG, min(e, epochs - 1), epochs)[1] for e in x], drawstyle="steps-post", color="k",
            ls="--", label=f"GSG (eq. 7, {GSG.beta_min:g} to {GSG.beta_max:g})")
    names = {r.run_id: r.name for r in found.ranked}
    for segment in found.schedules[found.best.run_id]:
        ax.plot([segment.first - 1] + list(range(segment.first, segment.last + 1)),
                [segment.betas[0]] + list(segment.betas), drawstyle="steps-pre", lw=2.5,
                label=f"best ({found.best.name}), epochs {segment.first}-{segment.last} by "
                      f"{names.get(segment.run, segment.run[:8])}")
    ax.set_yscale("log")
    ax.set_ylabel("beta")
    ax.set_xlabel("epochs trained (grey: every member's final weights' schedule)")
    whole_epochs(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
