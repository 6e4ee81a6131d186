"""The MLflow record: what running, reporting and verifying agree on, spelled here and nowhere else.

A store holds, per study, an experiment of the study's name with these runs, told apart by their `kind` tag:
- `study`: one parent run per invocation of `study.run`, holding the study file and the per-variant means;
- `trial`: one run per trial, a child of the invocation that trained it, with its config (params and
  config.yaml), every epoch's metrics, its final weights and where and with what it ran. A trial copied from
  another study's finished run of the same config hash is a trial run tagged `cached_from`;
- `reproduction`: `study.reproduce`'s run of a trial trained again, tagged `reproduces`.

Every metric has one entry in `METRICS`: its name (isnm's, `isnm.metrics`), the header a table prints it
under, its print scale, its direction, and whether it is logged per epoch, selectable by a search or
compared by `study.reproduce`. Runs are read through `read_runs` only, page after page, as `RunRecord`s.
Standard library and isnm's metric names only, so the pure study-file code can import it.
"""
from __future__ import annotations

import enum
import json

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Optional

from isnm import metrics as m
from study.errors import StudyError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


class Kind:
    """The `kind` tag of a run."""
    STUDY = "study"
    TRIAL = "trial"
    REPRODUCTION = "reproduction"


class RunStatus:
    """MLflow's run statuses, as its client takes and gives them."""
    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


def stopped_by(signal_name: str, slurm_job: str = "") -> str:
    """How a parent run's tag `stopped` says the driver was stopped cleanly by `signal_name` (study.status prints it
    where MLflow says KILLED, which reads as a crash)."""
    said = {"SIGINT": "interrupted (Ctrl-C)", "SIGTERM": "stopped (SIGTERM)"}.get(signal_name, f"stopped ({signal_name})")
    return said + (f" in Slurm job {slurm_job}: its time limit's warning, or scancel" if slurm_job else "")


class Tag:
    """Run tag keys."""
    PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests a trial's run under its invocation's
    NOTE = "mlflow.note.content"  # MLflow's own: the run's description in the UI
    KIND = "kind"
    STUDY = "study"
    PROFILE = "profile"
    STUDY_FILE = "study_file"  # the study file's path as study.run was given it (made absolute), on the parent run
    VARIANT = "variant"
    ROW = "row"  # the table row a trial is in, as the report labels it (split and row keys' values)
    COLUMN = "column"  # and its column, in a table with columns
    SEED = "seed"
    CONFIG_HASH = "config_hash"
    GIT_COMMIT = "git_commit"
    GIT_DIRTY = "git_dirty"  # "true" when trained from uncommitted changes (their diff: Artifact.DIFF)
    RAY_EXPERIMENT = "ray_experiment"  # the Ray experiment folder whose trials the runs are
    RAY_TRIAL_ID = "ray_trial_id"
    RAY_NODE = "ray_node"  # "<node id> <address>" the trial reports from now
    RAY_NODES = "ray_nodes"  # every node it ran on, in order
    GPU_IDS = "gpu_ids"
    KERNEL = m.KERNEL
    KERNEL_FALLBACK = m.KERNEL_FALLBACK
    DATA_FINGERPRINT = m.DATA_FINGERPRINT
    ENVIRONMENT = "env."  # + a key of study.tracking.provenance.environment: env.torch, env.threads, ...
    CHECKPOINT_FALLBACK = "checkpoint_fallback"  # newer checkpoints that did not load, on resuming
    INTERRUPTED = "interrupted"  # "E of N epochs logged": the run of a trial its driver was stopped in
    STOPPED_EARLY = "stopped_early"  # by a search's scheduler
    STOPPED = "stopped_by"  # on a parent run the driver ended itself on a signal: "interrupted (Ctrl-C)", ...
    PLUGINS = "plugins"  # a trial of your own code: {arch|dataset: {callable, source digest, path}} in JSON
    RETRIES = "retries"
    SLURM_JOB = "slurm_job_id"  # the Slurm job the driver ran in (a requeued job keeps its id)
    SLURM_RESTARTS = "slurm_restart_count"  # how often that job had been requeued when the run last trained
    ERROR = "error"  # why a FAILED trial failed
    CACHED_FROM = "cached_from"  # the run a copied trial's numbers come from
    REPRODUCES = "reproduces"
    VERDICT = "verdict"
    # a PBT member's exploit: + the epoch (6 digits, so the tags sort by it) -> PbtExploit.text. The member trained
    # epochs after it from the source run's checkpoint of that epoch, with the new value
    PBT_EXPLOIT = "pbt.exploit."
    # on a parent run: + a file of its Ray experiment that Tune's restore unpickles (relative to the experiment
    # folder) -> the digests it had as Tune wrote it, newest last (study.run.trust)
    TUNE_STATE = "tune_state."


class ExperimentTag:
    """Experiment tag keys (MLflow's UI reads both)."""
    KIND = "mlflow.experimentKind"  # MLflow 3's UI opens an experiment without it in its GenAI layout
    VIEW = "mlflow.sharedViewState."  # + a key: a saved view of the runs page


class Artifact:
    """Artifact names."""
    CONFIG = "config.yaml"  # a trial's complete config, as `python -m isnm --config` takes it
    DIFF = "code.diff"  # the uncommitted changes a run was made from
    WEIGHTS = "model.pt"  # a finished trial's final state_dict
    REPORT = "report"  # the folder of a parent run holding the report's plots
    ERROR = "error.txt"  # a failed trial's traceback: what its code raised, where


class Reported:
    """What a trial reports to Tune besides its metrics, read by the tracker on the driver."""
    NODE = "node"
    GPU_IDS = Tag.GPU_IDS
    ENVIRONMENT = "environment"  # JSON of study.tracking.provenance.environment
    CHECKPOINT_NOTE = "checkpoint_note"
    DIVERGED = "diverged"  # why training diverged: a result, not a crash
    EXPLOITED = "exploited"  # a PBT member began from another member's checkpoint: that trial's Ray id
    STATE_FILE = "state.pt"  # the file in each checkpoint it reports: model, optimizer, epoch, RNG states
    SECONDS = "time_total_s"  # Tune's: the trial's own time, without a PBT member's waits for the others
    EPOCH_WALL = "time_this_iter_s"  # Tune's: an epoch's time in the trial, its checkpoint and report included


@dataclass(frozen=True)
class PbtExploit:
    """One exploit of a PBT member, as its run's tag records it: after `epoch` it went on from run `source`'s
    checkpoint of that epoch, with `values` (the mutated keys' new values)."""
    epoch: int
    source: str  # the run whose checkpoint it took
    values: dict

    @property
    def tag(self) -> tuple[str, str]:
        return f"{Tag.PBT_EXPLOIT}{self.epoch:06d}", json.dumps({"source_run": self.source, **self.values})

    @staticmethod
    def of(run: RunRecord) -> list[PbtExploit]:
        """A member run's exploits, in epoch order."""
        out = []
        for key, text in sorted(run.tags.items()):
            if key.startswith(Tag.PBT_EXPLOIT):
                values = json.loads(text)
                out.append(PbtExploit(int(key[len(Tag.PBT_EXPLOIT):]), values.pop("source_run"), values))
        return out


@dataclass(frozen=True)
class Metric:
    name: str
    header: str  # a table column's head, with its unit
    scale: float = 1.0  # printed = logged x scale: 100 prints a fraction in percent
    decimals: int = 4
    maximize: bool = False  # higher is better (accuracies); else lower (loss, firing, energy)
    per_epoch: bool = True  # the tracker logs it at every epoch (step = epoch)
    tabulated: bool = True  # a table may show it (table.metric, table.extra, study.report --metric)
    selectable: bool = False  # a search may rank by it: measured on training or validation data, never on test
    reproduced: bool = False  # study.reproduce compares it, epoch by epoch
    validation: bool = False  # measured on the validation split, so only with `validation` > 0

    @property
    def percent(self) -> bool:
        return self.scale == 100

    def shown(self, value: float) -> float:
        return value * self.scale

    def text(self, value: float) -> str:
        """A value in print scale, as the paper prints it."""
        return f"{value:.{self.decimals}f}"

    def signed(self, value: float) -> str:
        """A difference with its sign: +0.00 for one that rounds to nothing (never -0.00)."""
        return f"{round(value, self.decimals) + 0.0:+.{self.decimals}f}"

    def printed(self, value: float) -> str:
        """A value as a run holds it, as the paper prints it (0.9087 -> 90.87)."""
        return self.text(self.shown(value))


METRICS = {metric.name: metric for metric in (  # in the order of an epoch: training, validation, test, schedule
    Metric(m.TRAIN_LOSS, "Train loss", selectable=True, reproduced=True),
    Metric(m.TRAIN_ACC, "Train accuracy (%)", 100, 2, maximize=True, selectable=True, reproduced=True),
    Metric(m.VAL_ACC, "Validation accuracy (%)", 100, 2, maximize=True, selectable=True, reproduced=True,
           validation=True),
    Metric(m.VAL_SPIKE_RATE, "Validation spike rate (%)", 100, 2, selectable=True, reproduced=True, validation=True),
    Metric(m.VAL_SYNOPS, "Validation SynOps (M/image)", 1e-6, 2, selectable=True, validation=True),
    Metric(m.VAL_ENERGY, "Validation energy (µJ/image)", selectable=True, validation=True),
    Metric(m.TEST_ACC, "Accuracy (%)", 100, 2, maximize=True, reproduced=True),
    Metric(m.SPIKE_RATE, "Spike rate (%)", 100, 2, reproduced=True),
    Metric(m.SYNOPS, "SynOps (M/image)", 1e-6, 2),
    Metric(m.ENERGY, "Energy (µJ/image)"),
    Metric(m.ENERGY_ANN, "ANN energy (µJ/image)", tabulated=False),  # energy's yardstick, shown beside it
    Metric(m.BETA, "beta", tabulated=False, reproduced=True),
    Metric(m.ALPHA, "alpha", tabulated=False, reproduced=True),
    Metric(m.EPOCH_SECONDS, "Seconds per epoch", tabulated=False),  # the machine's, not the method's
)}
TABULATED = tuple(name for name, metric in METRICS.items() if metric.tabulated)
SELECTABLE = tuple(name for name, metric in METRICS.items() if metric.selectable)
REPRODUCED = tuple(name for name, metric in METRICS.items() if metric.reproduced)
LAYER_RATE = m.LAYER_RATE  # + a spiking layer's module name: that layer's firing rate, logged per epoch too
LAYER_BETA = m.LAYER_BETA  # + a spiking layer's module name: its learned beta (schedule learned), per epoch too
AT_TIMESTEPS = re.compile(rf"{m.TEST_ACC}_T([0-9]+)")


def at_timesteps(timesteps: int) -> str:
    """The metric study.evaluate logs: test_acc of a run's final weights run for `timesteps` time steps."""
    return f"{m.TEST_ACC}_T{timesteps}"


def logged_per_epoch(key: str) -> bool:
    """Whether a key of a trial's report is a metric the tracker logs at every epoch."""
    return (key in METRICS and METRICS[key].per_epoch) or key.startswith((LAYER_RATE, LAYER_BETA))


def code_label(commit: str, dirty: bool) -> str:
    """'1a2b3c4', or '1a2b3c4+dirty' for code with uncommitted changes."""
    return commit[:7] + ("+dirty" if dirty else "")


@dataclass(frozen=True)
class RunRecord:
    """One run of the record, typed: who it is (kind, variant, seed, config hash), what made it (code), its state."""
    run_id: str
    experiment_id: str
    name: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    start_time: int  # ms since the epoch
    end_time: Optional[int]  # None while it runs
    artifact_uri: str
    kind: str
    variant: str
    seed: Optional[int]
    config_hash: str
    commit: str  # the git commit it was trained from, 40 hex digits ("unknown" outside a checkout)
    dirty: bool  # with uncommitted changes (their diff: Artifact.DIFF)
    metrics: dict[str, float]  # final values
    params: dict[str, str]
    tags: dict[str, str]

    @classmethod
    def of(cls, run: Run) -> RunRecord:
        tags = run.data.tags
        seed = tags.get(Tag.SEED, "")
        return cls(run.info.run_id, run.info.experiment_id, run.info.run_name or "", run.info.status,
                   run.info.start_time or 0, run.info.end_time, run.info.artifact_uri, tags.get(Tag.KIND, ""),
                   tags.get(Tag.VARIANT, ""),
                   int(seed) if seed.lstrip("-").isdigit() else None, tags.get(Tag.CONFIG_HASH, ""),
                   tags.get(Tag.GIT_COMMIT, "unknown"), tags.get(Tag.GIT_DIRTY) == "true",
                   dict(run.data.metrics), dict(run.data.params), dict(tags))

    @property
    def code(self) -> str:
        return code_label(self.commit, self.dirty)

    def tag(self, key: str) -> str:
        return self.tags.get(key, "unknown")

    @property
    def parent_id(self) -> Optional[str]:
        return self.tags.get(Tag.PARENT)


RUNS_PER_PAGE = 250  # runs a search page holds: every page is read anyway, and a smaller one holds fewer at once


def quoted(value: str) -> str:
    """`value` as a string in an MLflow search filter, which has no escapes: in the quotes it lacks."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise StudyError(f"{value!r}: MLflow search filters cannot hold a value with both kinds of quote; rename the "
                     f"folder or path")


def run_filter(kind: Optional[str] = None, status: Optional[str] = None, **tags: str) -> str:
    """An MLflow search filter: runs of this kind and status whose tags (Tag attribute names, lower case) hold
    these values."""
    parts = [f"tags.{Tag.KIND} = {quoted(kind)}"] if kind else []
    parts += [f"tags.{getattr(Tag, key.upper())} = {quoted(value)}" for key, value in tags.items()]
    parts += [f"attributes.status = {quoted(status)}"] if status else []
    return " and ".join(parts)


def read_runs(client: MlflowClient, experiments: list[str], kind: Optional[str] = None, status: Optional[str] = None,
              newest_first: bool = False, limit: Optional[int] = None, **tags: str) -> Iterator[RunRecord]:
    """The runs of `experiments` of this kind, status and tags (`run_filter`), page after page (MLflow hands
    out at most a page a call), at most `limit`."""
    query, order = run_filter(kind, status, **tags), ["attributes.start_time DESC"] if newest_first else None
    token, seen = None, 0
    while experiments:
        size = RUNS_PER_PAGE if limit is None else min(RUNS_PER_PAGE, limit - seen)
        page = client.search_runs(experiments, query, order_by=order, max_results=size, page_token=token)
        for run in page:
            yield RunRecord.of(run)
        seen += len(page)
        token = page.token
        if not token or (limit is not None and seen >= limit):
            return


HISTORY_RUNS_PER_QUERY = 100  # runs whose histories one database query reads (an SQL IN list of their ids)


def histories(client: MlflowClient, run_ids: list[str], key: str) -> dict[str, list]:
    """Each run's history of metric `key` (MLflow `Metric`s, by step). MlflowClient reads a run's history a call
    (5 ms on sqlite: 7 s of a report on 1,500 runs); a database store (sqlite, PostgreSQL) also reads many runs' at
    once, as it does for its UI, so those are read HISTORY_RUNS_PER_QUERY runs a query. The store is reached through
    the client's `_tracking_client.store`, which MLflow does not document: any other store, or an MLflow without
    it, is read a run a call."""
    from mlflow.entities import Metric as Logged

    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk = getattr(store, "get_metric_history_bulk", None)
    found: dict[str, list] = {run_id: [] for run_id in run_ids}
    if bulk is None:
        for run_id in found:
            found[run_id] = client.get_metric_history(run_id, key)
    else:
        ids = list(found)
        for start in range(0, len(ids), HISTORY_RUNS_PER_QUERY):
            for row in bulk(ids[start:start + HISTORY_RUNS_PER_QUERY], key, None):  # Metrics that name their run
                found[row.run_id].append(Logged(row.key, row.value, row.timestamp, row.step))
    return {run_id: sorted(history, key=lambda metric: metric.step) for run_id, history in found.items()}


def history(client: MlflowClient, run_id: str, key: str) -> list:
    """One run's history of metric `key` (MLflow `Metric`s, by step)."""
    return histories(client, [run_id], key)[run_id]


class Status(enum.Enum):
    """A planned trial's state, from its runs in any invocation; the value is how the report counts it."""
    FINISHED = "finished"
    FAILED = "failed"
    RUNNING = "running"
    INTERRUPTED = "interrupted"  # a KILLED run: its driver was interrupted; the same command resumes it
    MISSING = "not run"


def states_text(counts: dict[Status, int]) -> str:
    """'3 finished, 1 failed, 1 running, 1 interrupted, 0 not run' (interrupted only if any): how report and status
    count a study's trials."""
    return ", ".join(f"{counts.get(s, 0)} {s.value}" for s in Status if s is not Status.INTERRUPTED or counts.get(s))


# MLflow run statuses in the order they decide a trial's state, after FINISHED; a trial with runs of none FAILED
DECIDING = {RunStatus.RUNNING: Status.RUNNING, RunStatus.SCHEDULED: Status.RUNNING,
            RunStatus.KILLED: Status.INTERRUPTED}


def trial_status(runs: list[RunRecord], finished: Optional[RunRecord]) -> Status:
    """A trial's state from its runs (any invocation), `finished` being the newest FINISHED one, if any."""
    if finished is not None:
        return Status.FINISHED
    if not runs:
        return Status.MISSING
    return next((state for status, state in DECIDING.items() if any(r.status == status for r in runs)),
                Status.FAILED)


def newest_finished(runs: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """config hash -> the newest FINISHED trial run with that hash among `runs`: the run that stands for a
    config wherever one is needed (the cache, the parent's summary, the report)."""
    newest: dict[str, RunRecord] = {}
    for run in runs:
        if run.kind == Kind.TRIAL and run.status == RunStatus.FINISHED and run.config_hash:
            if run.config_hash not in newest or run.start_time > newest[run.config_hash].start_time:
                newest[run.config_hash] = run
    return newest


def finished_trials(client: MlflowClient, experiments: list[str]) -> dict[str, RunRecord]:
    """`newest_finished` over every finished trial run of `experiments`."""
    return newest_finished(read_runs(client, experiments, Kind.TRIAL, RunStatus.FINISHED))
