"""What a study prints while it runs: one line per trial event, in place of Ray Tune's own tables.

    A seed=1    started
    A seed=1    compiling kernels for vgg_small at T=5 (first run on this machine: about 168 s as measured here; cached afterwards)
    A seed=1    epoch 2/3  test_acc 84.19
    A seed=1    finished  test_acc 85.02  12s  [4 of 18 done, ETA 1m10s]

`--verbose` brings Tune's tables and the trials' own output back beside these lines.
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Callable, Optional, Sequence, TextIO, Union

from ray.tune import Callback

from isnm import compile_note, device_type_of, kernel_for, metrics, parse_config
from study.errors import duration, first_line
from study.records import METRICS, Reported
from study.run.estimate import compile_costs, compile_key, placed, setting_of
from study.design.plan import Trial
from study.tracking.callback import trial_error


class Progress(Callback):
    """Prints, on the driver, a line when a trial starts, ends an epoch, finishes, fails or is retried, and with each
    trial that ends how many of the `total` are done (`done_before` were cached; a callable: the total as it is now,
    which adaptive seeds grow) and the time left (`eta`). `shown` is the metric on each epoch's line (the table's,
    or the search's); `describe` gives the trial a Tune config stands for; names are padded to `width`, the longest
    planned trial name. `planned` are the trials to run, where they are known before they start (not a search's,
    nor adaptive seeds'), and `slots` how many run at once. The first trial of an architecture at a T whose kernels
    compile (trials get `gpus` GPUs each, on this machine if `local`) says so."""

    def __init__(self, total: Union[int, Callable[[], int]], done_before: int, shown: str, describe: Callable[[dict], Trial], width: int = 0,
                 out: Optional[TextIO] = None, gpus: float = 0.0, local: bool = True, planned: Sequence[Trial] = (),
                 slots: int = 1):
        self.total, self.done = total, done_before
        self.shown, self.describe, self.width = shown, describe, width
        self.out = out or sys.stdout
        self.began = time.monotonic()
        self.started: dict[str, float] = {}  # Ray trial id -> when it started here
        self.notes: dict[str, set[str]] = {}  # Ray trial id -> the warnings printed for it (a checkpoint skipped)
        self.gpus, self.local = gpus, local
        self.compiling: set[tuple[str, int]] = set()  # (arch, T) whose compile was announced
        self.planned, self.slots = list(planned), slots
        self.seen: dict[str, Trial] = {}  # Ray trial id -> the trial it stands for, once started here
        self.running: set[str] = set()  # Ray trial ids started and not ended
        self.epochs: dict[str, list[float]] = {}  # Ray trial id -> the seconds of each epoch it reported here
        self.left: dict[str, int] = {}  # Ray trial id -> the epochs it has left, as its last result says

    def say(self, trial, text: str) -> None:
        print(f"  {self.describe(trial.config).name.ljust(self.width)}  {text}", file=self.out, flush=True)

    def value(self, result: dict) -> str:
        if self.shown not in result:
            return ""
        return f"  {self.shown} {METRICS[self.shown].printed(result[self.shown])}"

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if trial.trial_id in self.started:  # a PBT member goes on after each exploit step: not news
            return
        self.started[trial.trial_id] = time.monotonic()
        member = self.describe(trial.config)
        self.seen[trial.trial_id] = member
        self.running.add(trial.trial_id)
        before = int((trial.last_result or {}).get(metrics.EPOCH, 0))  # a restored trial's, from its checkpoint
        self.say(trial, f"resumed at epoch {before + 1}" if before else "started")
        cfg = parse_config(member.config)
        key = (cfg.arch, cfg.timesteps)
        if key not in self.compiling and kernel_for(cfg, device_type_of(cfg, self.gpus)) == "compiled":
            self.compiling.add(key)
            self.say(trial, f"compiling kernels for {cfg.arch} at T={cfg.timesteps} "
                            f"({compile_note(cfg.arch, cfg.timesteps, self.local)})")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        for note in (result.get(Reported.CHECKPOINT_NOTE), result.get(metrics.KERNEL_FALLBACK)):
            if note and note not in self.notes.setdefault(trial.trial_id, set()):  # each once, as the trial's run tags it
                self.notes[trial.trial_id].add(note)
                self.say(trial, f"warning: {note}")
        if result.get(Reported.DIVERGED) or metrics.EPOCH not in result:
            return
        member = self.describe(trial.config)
        if Reported.EPOCH_WALL in result:
            self.epochs.setdefault(trial.trial_id, []).append(result[Reported.EPOCH_WALL])
        self.left[trial.trial_id] = member.config["epochs"] - result[metrics.EPOCH]
        if result.get(Reported.EXPLOITED):
            source = next((t for t in trials if t.trial_id == result[Reported.EXPLOITED]), None)
            values = ", ".join(f"{k.rsplit('.', 1)[-1]} {member.overrides[k]:.4g}" for k in member.varying)
            self.say(trial, f"exploit: goes on from {self.describe(source.config).name if source else 'a member'}'s "
                            f"epoch {result[metrics.EPOCH] - 1}, now with {values}")
        epochs = member.config["epochs"]
        self.say(trial, f"epoch {result[metrics.EPOCH]}/{epochs}{self.value(result)}")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.say(trial, f"failed, retrying from its last checkpoint (retry {trial.num_failures})")

    def ended(self, trial, text: str) -> None:
        self.done += 1
        self.running.discard(trial.trial_id)
        # as the study's summary prints it
        spent = (trial.last_result or {}).get(Reported.SECONDS)
        if spent is None:
            spent = time.monotonic() - self.started.get(trial.trial_id, self.began)
        total = self.total() if callable(self.total) else self.total
        left = max(0, total - self.done)
        eta = self.eta(left)
        self.say(trial, f"{text}  {duration(spent)}  [{self.done} of {total} done"
                        + (f", ETA {duration(eta)}" if left and eta is not None else "") + "]")

    def pace(self, trial_id: str) -> Optional[float]:
        """Seconds an epoch of this trial takes, from those it reported here: after its first where it has more (a
        worker's first epoch compiles, loads its data), None before any."""
        seconds = self.epochs.get(trial_id)
        return statistics.median(seconds[1:] or seconds) if seconds else None

    def eta(self, left: int) -> Optional[float]:
        """Seconds until the `left` trials not yet ended have, from the epochs measured here: those running go on at
        their own pace (else their setting's), those to come at their setting's pace where one has run, else the
        mean of those measured, each placed on the first of `slots` to come free (study.run.estimate.placed), with
        a compile where no trial here has yet compiled its kernels (this machine's recorded seconds). None before
        any trial has ended an epoch."""
        measured = {tid: p for tid in self.epochs if (p := self.pace(tid)) is not None}
        if not measured:
            return None
        by_setting: dict[tuple, list[float]] = {}
        for tid, p in measured.items():
            by_setting.setdefault(setting_of(self.seen[tid].config), []).append(p)
        mean = statistics.mean(measured.values())

        def pace_of(trial: Trial) -> float:
            return statistics.mean(by_setting.get(setting_of(trial.config), [mean]))

        running = [(tid, self.seen[tid]) for tid in self.running]
        durations = [self.left.get(tid, t.config["epochs"]) * measured.get(tid, pace_of(t)) for tid, t in running]
        begun = {t.name for t in self.seen.values()}
        coming = [t for t in self.planned if t.name not in begun]
        durations += [t.config["epochs"] * pace_of(t) for t in coming]
        keys = [None] * len(running) + [self.new_compile(t) for t in coming]
        if not self.planned:  # a search's or adaptive seeds' trials: as many as are left, at the mean so far
            epochs = statistics.mean(t.config["epochs"] for t in self.seen.values())
            durations += [epochs * mean] * max(0, left - len(running))
        return placed(durations, self.slots, keys, compile_costs(keys, self.local)[0])[0]

    def new_compile(self, trial: Trial) -> Optional[tuple[str, int]]:
        """The (arch, T) whose kernels `trial` compiles where no trial here has compiled them yet, else None."""
        key = compile_key(trial.config, self.gpus)
        return key if key not in self.compiling else None

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        if result.get(Reported.DIVERGED):
            self.ended(trial, f"failed: {result[Reported.DIVERGED]}")
        else:
            self.ended(trial, f"finished{self.value(result)}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended(trial, f"failed: {first_line(trial_error(trial))[:200]}")
