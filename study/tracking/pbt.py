"""A population-based search read back from its runs: each member's exploits, the schedule its final weights were
trained with (its ancestry), and the best member's, which `surrogate.schedule: {from_study: NAME}` replays."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from isnm import metrics
from study.errors import StudyError
from study.records import Kind, PbtExploit, RunRecord, RunStatus, Tag, histories, read_runs
from study.design.config import Search
from study.design.plan import PBT_VARIANT

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class Segment:
    """Epochs `first`..`last` of a member's final weights, trained by `run` at these `betas` (one per epoch)."""
    run: str
    first: int
    last: int
    betas: tuple[float, ...]


def ancestry(member: str, epochs: int, betas: dict[str, dict[int, float]],
             exploits: dict[str, list[PbtExploit]]) -> list[Segment]:
    """Which run trained each epoch of `member`'s final weights, oldest first: after an exploit at epoch x a member
    goes on from its source's checkpoint of x, so epochs 1..x are the source's (and, before the source's own
    exploits, its sources'). `betas`: each run's beta per epoch, as logged; `exploits`: each run's, in epoch order."""
    segments, run, last = [], member, epochs
    for _ in range(epochs + 1):  # each step goes back at least one epoch
        earlier = [x for x in exploits.get(run, []) if x.epoch < last]
        first = earlier[-1].epoch + 1 if earlier else 1
        missing = [e for e in range(first, last + 1) if e not in betas.get(run, {})]
        if missing:
            raise StudyError(f"run {run} logged no beta for epoch(s) {', '.join(map(str, missing))}; its member's "
                             f"schedule cannot be read back")
        segments.append(Segment(run, first, last, tuple(betas[run][e] for e in range(first, last + 1))))
        if not earlier:
            return segments[::-1]
        run, last = earlier[-1].source, earlier[-1].epoch
    raise StudyError(f"the exploits recorded on {member}'s ancestors loop")  # a damaged record


def members(client: MlflowClient, exp_id: str, profile: Optional[str], size: int) -> list[RunRecord]:
    """The member runs of the latest whole population a study trained with `profile` (None: without one): `size`
    runs, all FINISHED, of one Tune experiment (the prefix of their Ray trial ids: a study run again with --fresh
    or --rerun trains a new population in the same folder); [] when there is none."""
    runs = [r for r in read_runs(client, [exp_id], Kind.TRIAL) if r.variant == PBT_VARIANT
            and r.tags.get(Tag.PROFILE, "") == (profile or "")]
    populations: dict[str, list[RunRecord]] = {}
    for run in runs:
        populations.setdefault(run.tags.get(Tag.RAY_TRIAL_ID, "").split("_")[0], []).append(run)
    whole = [p for p in populations.values() if len(p) == size and all(r.status == RunStatus.FINISHED for r in p)]
    return max(whole, key=lambda p: max(r.start_time for r in p), default=[])


@dataclass(frozen=True)
class Population:
    """A PBT study's latest population: its members ranked best first by the search's metric, and each one's
    schedule as its final weights trained with it."""
    ranked: list[RunRecord]
    schedules: dict[str, list[Segment]]  # run id -> its ancestry

    @property
    def best(self) -> RunRecord:
        return self.ranked[0]

    def betas(self, run_id: str) -> list[float]:
        return [b for segment in self.schedules[run_id] for b in segment.betas]


def population(client: MlflowClient, exp_id: str, profile: Optional[str], search: Search) -> Population:
    """The latest whole population of PBT `search` trained with `profile`, ranked by its metric."""
    runs = members(client, exp_id, profile, search.population)
    if not runs:
        return Population([], {})
    metric, maximize = search.metric, search.mode == "max"
    logged = histories(client, [r.run_id for r in runs], metrics.BETA)
    betas = {run: {int(m.step): m.value for m in history} for run, history in logged.items()}
    exploits = {r.run_id: PbtExploit.of(r) for r in runs}
    ranked = sorted((r for r in runs if metric in r.metrics),
                    key=lambda r: (-r.metrics[metric] if maximize else r.metrics[metric], r.name))
    epochs = {r.run_id: max(betas.get(r.run_id, {0: 0})) for r in ranked}
    return Population(ranked, {r.run_id: ancestry(r.run_id, epochs[r.run_id], betas, exploits) for r in ranked})


def found_schedule(client: MlflowClient, name: str, profile: Optional[str]) -> list[float]:
    """The per-epoch betas the best member of PBT study `name`'s latest whole population trained with `profile` (the
    profile of the study that asks) trained its final weights with: what `{from_study: NAME}` stands for."""
    from study.tracking.recorded import stored

    found = stored(client, name, "the tracking store")
    study, exp_id = found.study, found.exp_id
    search = study.spec.search
    if search is None or search.algorithm != "pbt":
        raise StudyError(f"study {name!r} is not a population-based search (search: algorithm: pbt)")
    members = population(client, exp_id, profile, search)
    if members.ranked:
        return members.betas(members.best.run_id)
    raise StudyError(f"study {name!r} has no whole population trained with profile {profile or 'none'} (every member "
                     f"finished); run it first: "
                     f"python -m study.run {found.parent.tags.get(Tag.STUDY_FILE, name)}"
                     + (f" --profile {profile}" if profile else ""))


def schedules_in(store: Optional[str], study_file: Optional[str] = None, placeholders: Optional[list[str]] = None):
    """`found` for study.design.load.load_study: the schedule a PBT study found, in the store of --tracking-uri
    `store` (study.tracking.store.tracking_uri), opened (and MLflow imported) only when a study file names one.
    Where the PBT study has not run, the error names the command that runs it (its file beside `study_file`, when
    there is one); with `placeholders` (a dry run), it is planned with its file's fixed beta at every epoch instead,
    and a line saying so is appended to `placeholders`."""
    def found(name: str, profile: Optional[str]) -> list[float]:
        from study.tracking.store import read_client, tracking_uri

        try:
            return found_schedule(read_client(tracking_uri(store)), name, profile)
        except StudyError as exc:
            source = Path(study_file).resolve().parent / f"{name}.yaml" if study_file else None
            if source is None or not source.is_file():
                raise
            command = f"python -m study.run {source}" + (f" --profile {profile}" if profile else "")
            if placeholders is None:
                raise StudyError(f"{exc}; {name} has not run: run `{command}` first") from None
            from study.design.load import load_study

            base = load_study(source, profile).base
            placeholders.append(f"note: {{from_study: {name}}} has not run yet, so its rows are planned with a "
                                f"placeholder (beta {base['surrogate']['beta']:g} at every epoch) and other config "
                                f"hashes; run `{command}` first")
            return [base["surrogate"]["beta"]] * base["epochs"]

    return found
