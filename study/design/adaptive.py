"""Adaptive seeds: how many seeds each cell of a study's table needs, from the results so far.

Every cell runs `min` seeds first. A comparison the table makes (study.design.layout) is judged on its cells' seeds
0 .. n-1, from n = min: once all of them are done, its 95% interval (study.stats.compared, what the report prints)
is either within ±target (it stops: "target reached"), or n is `max` (it stops: "max reached"), or it asks for seed
n of both its cells, so that pairs stay whole, and is judged again on n + 1. A cell runs the most seeds any of its
comparisons asks for. The rule looks at interval widths only, never at p-values or at which row is ahead, so the
tests stay honest (tests/test_adaptive.py: the false-positive rate with two identical rows).

A comparison's verdict at n depends only on the values of seeds below n: the same results give the same seeds in
any order they arrive, on the driver that ran them, after a resume, and in the report. Pure: no Ray, no MLflow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from study.records import METRICS, RunRecord, Status, Tag, newest_finished, trial_status
from study.design.config import AdaptiveSeeds, Study
from study.design.layout import Comparison, cell_key, study_comparisons
from study.design.plan import Trial, pairing_of
from study.stats import compared

TARGET = "target reached"
MAX = "max reached"
WAITING = "running"

@dataclass(frozen=True)
class Verdict:
    """Where one comparison stands: the seeds it is judged on (or waits for), why it stopped, and its interval's
    half-width on the seeds judged last (waiting for seed n, on the n - 1 before it, too wide; None before any
    judgement, or with fewer than two values a side)."""
    comparison: Comparison
    seeds: int
    state: str
    half_width: Optional[float]

def judged(rule: AdaptiveSeeds, comparison: Comparison, done: dict[tuple, dict[int, Optional[tuple[float, tuple]]]]
           ) -> Verdict:
    """`done`: cell key -> {seed: (value in the printed unit, pairing), or None for a trial that failed}."""
    reference, cell = done.get(comparison.reference, {}), done.get(comparison.cell, {})
    n, half = rule.min, None
    while True:
        if any(s not in reference or s not in cell for s in range(n)):
            return Verdict(comparison, n, WAITING, half)
        d = compared(*({s: side[s] for s in range(n) if side[s] is not None} for side in (reference, cell)))
        half = None if d is None else d.half_width
        if half is not None and half <= rule.target:
            return Verdict(comparison, n, TARGET, half)
        if n >= rule.max:
            return Verdict(comparison, n, MAX, half)
        n += 1

@dataclass(frozen=True)
class Decision:
    seeds: dict[tuple, int]  # cell key -> how many seeds it needs now (0 .. n-1)
    verdicts: list[Verdict]

    @property
    def settled(self) -> bool:
        """Every comparison has stopped: no more seeds will be asked for."""
        return all(v.state != WAITING for v in self.verdicts)

class SeedRule:
    """A study's adaptive seeds over its planned trials (every cell at every seed up to `max`)."""

    def __init__(self, study: Study, trials: list[Trial]):
        assert study.adaptive is not None
        self.rule = study.adaptive
        self.table = study.table
        self.metric = self.table.metrics[0]
        self.comparisons = study_comparisons(self.table, trials)
        self.cell_of = {t.config_hash: cell_key(self.table, t) for t in trials}
        self.cells = list(dict.fromkeys(self.cell_of.values()))
        self.trials = trials
        self.by_hash = {t.config_hash: t for t in trials}

    def label(self, key: tuple) -> str:
        """A cell as the terminal names it: its values of the table's keys."""
        return self.table.values_label(self.table.keys, key)

    @property
    def unit(self) -> str:
        return " pp" if METRICS[self.metric].percent else ""

    def outcome(self, config_hash: str, value: Optional[float], device: str) -> Optional[tuple[float, tuple]]:
        """A trial's outcome as `decide` takes it, from its final value of the table's metric (None: it failed, or
        never logged it) and the device it trained on (its environment's "device")."""
        return None if value is None else (value, pairing_of(self.by_hash[config_hash].config, device))

    def recorded(self, runs: list[RunRecord], failed: bool) -> dict[str, Optional[tuple[float, tuple]]]:
        """The outcomes of the study's trials in `runs` (MLflow trial runs): each trial's newest FINISHED run, and with
        `failed` a trial whose runs all FAILED as done without a value (the report, as the driver that ran it saw it;
        a new invocation retries it instead)."""
        out: dict[str, Optional[tuple[float, tuple]]] = {}
        for config_hash, run in newest_finished(runs).items():
            if config_hash in self.by_hash:
                out[config_hash] = self.outcome(config_hash, run.metrics.get(self.metric), run.tag(Tag.ENVIRONMENT + "device"))
        if failed:  # a trial the report counts as failed (study.records.trial_status)
            runs_of: dict[str, list[RunRecord]] = {}
            for run in runs:
                if run.config_hash in self.by_hash and run.config_hash not in out:
                    runs_of.setdefault(run.config_hash, []).append(run)
            out.update({h: None for h, mine in runs_of.items() if trial_status(mine, None) is Status.FAILED})
        return out

    def decide(self, outcomes: dict[str, Optional[tuple[float, tuple]]]) -> Decision:
        """The seeds each cell needs given `outcomes`: config hash -> (the trial's final value of the table's metric, as
        logged, and its pairing), or None for a trial that failed. Trials not in it are not done."""
        shown = METRICS[self.metric].shown
        done: dict[tuple, dict[int, Optional[tuple[float, tuple]]]] = {}
        for trial in self.trials:
            if trial.config_hash in outcomes:
                outcome = outcomes[trial.config_hash]
                done.setdefault(self.cell_of[trial.config_hash], {})[trial.seed] = (
                    None if outcome is None else (shown(outcome[0]), outcome[1]))
        verdicts = [judged(self.rule, c, done) for c in self.comparisons]
        seeds = {key: self.rule.min for key in self.cells}
        for v in verdicts:
            for key in (v.comparison.reference, v.comparison.cell):
                seeds[key] = max(seeds[key], v.seeds)
        return Decision(seeds, verdicts)

    def needed(self, decision: Decision) -> list[Trial]:
        """The trials the decision asks for, in plan order."""
        return [t for t in self.trials if t.seed < decision.seeds[self.cell_of[t.config_hash]]]

    def decided(self, runs: list[RunRecord], known: Optional[dict[str, Optional[tuple[float, tuple]]]] = None
                ) -> tuple[Decision, list[Trial]]:
        """(the decision the study's runs make, the trials it asks for): what the driver ends on, and what the report
        and status count as the study. `known`: outcomes read before (the cached runs of other studies); a run of
        `runs` that failed counts as done."""
        decision = self.decide({**(known or {}), **self.recorded(runs, failed=True)})
        return decision, self.needed(decision)

    def first(self) -> list[Trial]:
        """The trials every cell runs whatever the results: its first `min` seeds."""
        return [t for t in self.trials if t.seed < self.rule.min]
