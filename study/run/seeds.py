"""Adaptive seeds on Ray Tune: a Searcher that proposes the trials `study.design.adaptive` asks for, from the results
that have finished, so that it runs on a cluster like any Tune search, resumes with the experiment after a driver is
killed (its state is saved with Tune's), and starts from the runs the store already holds (cached)."""
from __future__ import annotations

import json
import pickle
import sys
from typing import Optional

from ray.tune.search import Searcher

from study.records import Reported
from study.design.adaptive import WAITING, Decision, SeedRule


class AdaptiveSeeds(Searcher):
    """Proposes `{"trial": name}` for each trial the rule needs that has neither an outcome nor a trial running, lowest
    seed first; nothing while running trials may still ask for more; FINISHED once every comparison has stopped."""

    def __init__(self, rule: SeedRule, known: dict[str, Optional[tuple[float, tuple]]]):
        super().__init__()
        self.rule = rule
        self.outcomes = dict(known)  # config hash -> (final value, pairing), None if it failed
        self.running: dict[str, str] = {}  # Tune trial id -> config hash
        self.decision: Decision = rule.decide(self.outcomes)

    def done(self) -> int:
        """How many of the trials the rule needs now have their outcome."""
        return sum(t.config_hash in self.outcomes for t in self.rule.needed(self.decision))

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the trials are the rule's: no space to take

    def suggest(self, trial_id: str):
        busy = set(self.running.values())
        # lowest seed first: every cell's first seeds before any comparison's extra ones, so each is judged early
        for trial in sorted(self.rule.needed(self.decision), key=lambda t: t.seed):
            if trial.config_hash not in self.outcomes and trial.config_hash not in busy:
                self.running[trial_id] = trial.config_hash
                return {"trial": trial.name}
        return None if self.running else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        config_hash = self.running.pop(trial_id, None)
        if config_hash is None:
            return
        result = result or {}
        value = None if error or result.get(Reported.DIVERGED) else result.get(self.rule.metric)
        device = json.loads(result[Reported.ENVIRONMENT])["device"] if result.get(Reported.ENVIRONMENT) else ""
        self.outcomes[config_hash] = self.rule.outcome(config_hash, value, device)
        before, self.decision = self.decision, self.rule.decide(self.outcomes)
        for line in more_seeds_lines(self.rule, before, self.decision):
            print(line, file=sys.stdout, flush=True)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"outcomes": self.outcomes, "running": self.running}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        # what the store holds (this driver's `known`) stands over the saved state, which may be older than the kill
        self.outcomes, self.running = {**state["outcomes"], **self.outcomes}, state["running"]
        self.decision = self.rule.decide(self.outcomes)


def more_seeds_lines(rule: SeedRule, before: Decision, after: Decision) -> list[str]:
    """A line for each comparison that asked for another seed: which cells, why."""
    was = {(v.comparison.reference, v.comparison.cell): v.seeds for v in before.verdicts}
    lines = []
    for v in after.verdicts:
        c = v.comparison
        if v.state == WAITING and v.seeds > was.get((c.reference, c.cell), v.seeds):
            width = "fewer than 2 values a side" if v.half_width is None else f"±{v.half_width:.2f}{rule.unit}"
            lines.append(f"  more seeds: {rule.label(c.cell)} vs {rule.label(c.reference)} is {width} on {v.seeds - 1} "
                         f"seeds, wider than ±{rule.rule.target:g}{rule.unit}: seed {v.seeds - 1} for both")
    return lines


def settled_lines(rule: SeedRule, decision: Decision) -> list[str]:
    """Where each comparison stopped (or stands): its seeds, its interval's half-width, why."""
    return [f"  {rule.label(v.comparison.cell)} vs {rule.label(v.comparison.reference)}: {v.seeds} seeds, "
            + (f"±{v.half_width:.2f}{rule.unit}, " if v.half_width is not None else "") + v.state
            for v in decision.verdicts]
