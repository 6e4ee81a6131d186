"""What a study prints while it runs: one line per trial event, in place of Ray Tune's own tables.

    A seed=1    started
    A seed=1    compiling kernels for vgg_small (first run on this machine: about 168 s; cached afterwards)
    A seed=1    epoch 2/3  test_acc 84.19
    A seed=1    finished  test_acc 85.02  12s  [4 of 18 done, ETA 1m10s]

`--verbose` brings Tune's tables and the trials' own output back beside these lines.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO, Union

from ray.tune import Callback

from isnm import compile_note, device_type_of, kernel_for, metrics, parse_config
from study.errors import duration, first_line
from study.records import METRICS, Reported
from study.spec.plan import Trial
from study.tracking.callback import trial_error


class Progress(Callback):
    """Prints, on the driver, a line when a trial starts, ends an epoch, finishes, fails or is retried, and with each
    trial that ends how many of the `total` are done (`done_before` were cached; a callable: the total as it is now,
    which adaptive seeds grow) and the time left at the pace so
    far. `shown` is the metric on each epoch's line (the table's, or the search's); `describe` gives the trial a
    Tune config stands for; names are padded to `width`, the longest planned trial name. The first trial of an
    architecture whose kernels compile (trials get `gpus` GPUs each, on this machine if `local`) says so."""

    def __init__(self, total: Union[int, Callable[[], int]], done_before: int, shown: str, describe: Callable[[dict], Trial], width: int = 0,
                 out: Optional[TextIO] = None, gpus: float = 0.0, local: bool = True):
        self.total, self.done = total, done_before
        self.shown, self.describe, self.width = shown, describe, width
        self.out = out or sys.stdout
        self.began = time.monotonic()
        self.ended_here = 0  # trials this invocation saw end: the pace of the estimate
        self.started: dict[str, float] = {}  # Ray trial id -> when it started here
        self.notes: dict[str, set[str]] = {}  # Ray trial id -> the warnings printed for it (a checkpoint skipped)
        self.gpus, self.local = gpus, local
        self.compiling: set[str] = set()  # architectures whose compile was announced

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
        self.say(trial, "started")
        cfg = parse_config(self.describe(trial.config).config)
        if cfg.arch not in self.compiling and kernel_for(cfg, device_type_of(cfg, self.gpus)) == "compiled":
            self.compiling.add(cfg.arch)
            self.say(trial, f"compiling kernels for {cfg.arch} ({compile_note(cfg.arch, self.local)})")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        for note in (result.get(Reported.CHECKPOINT_NOTE), result.get(metrics.KERNEL_FALLBACK)):
            if note and note not in self.notes.setdefault(trial.trial_id, set()):  # each once, as the trial's run tags it
                self.notes[trial.trial_id].add(note)
                self.say(trial, f"warning: {note}")
        if result.get(Reported.DIVERGED) or metrics.EPOCH not in result:
            return
        member = self.describe(trial.config)
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
        self.ended_here += 1
        # as the study's summary prints it
        spent = (trial.last_result or {}).get(Reported.SECONDS)
        if spent is None:
            spent = time.monotonic() - self.started.get(trial.trial_id, self.began)
        total = self.total() if callable(self.total) else self.total
        left = max(0, total - self.done)
        pace = (time.monotonic() - self.began) / self.ended_here
        eta = f", ETA {duration(pace * left)}" if left else ""
        self.say(trial, f"{text}  {duration(spent)}  [{self.done} of {total} done{eta}]")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        if result.get(Reported.DIVERGED):
            self.ended(trial, f"failed: {result[Reported.DIVERGED]}")
        else:
            self.ended(trial, f"finished{self.value(result)}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended(trial, f"failed: {first_line(trial_error(trial))[:200]}")
