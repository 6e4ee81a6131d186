"""Population-based training over a study's `mutate:` keys: Ray Tune's synchronous PopulationBasedTraining, made to
keep each member's own history whole across exploits and across a driver that stopped and resumed.

- Synchronous: every member is at the same epoch when the worst quarter take the best quarter's checkpoints, so an
  exploit never moves a member back or forward in epochs, and a run's history holds each epoch once, its own.
- A member stays itself: Tune's exploit copies the whole config of the member cloned, and with it the key that says
  which member a config is (MEMBER); it is put back.
- Repeatable: the members' first values are drawn from the study's seed (study.run.tuner), and each exploit step's
  draws (whom to clone, perturb or resample, by which factor) from the seed and the epoch: the same study file
  trains the same population again, and a resumed study that trains an interval again makes the same decisions,
  so the epochs its runs already hold stay the ones it trains.
- Resumable: Tune restores the trials, not the scheduler's state; a restored member is placed at the epoch of its
  checkpoint, and none trains past the next exploit epoch before the others reach it.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
from ray.tune.schedulers import PopulationBasedTraining

from isnm import metrics
from study.design.config import Search

MEMBER = "member"  # the key of a Tune config that says which member of the population it is
SEARCHED = "search"  # the key of a Tune config holding the dotted keys the search sets


def within(value, spec: dict):
    """A perturbed value put back into its distribution's range: PBT multiplies by 0.8 or 1.2 without bounds."""
    (kind, arg), = spec.items()
    return value if kind == "choice" else type(value)(min(max(value, arg[0]), arg[1]))


class SyncPBT(PopulationBasedTraining):
    """`domains`: what Tune mutates each key within: a distribution (study.run.tuner.distribution), perturbed by a
    factor, or a list of values, shifted to a neighbour."""

    def __init__(self, search: Search, seed: int, epochs: int, domains: dict):
        self.seed, self.epochs, self.mutations = seed, epochs, search.mutations
        self.restored: dict = {}  # each member restored with a checkpoint (Tune's Trial) -> the epoch it was at
        # require_attrs off: a member that diverged reports no metric, and ends alone (its run FAILED), not the study
        super().__init__(time_attr=metrics.EPOCH, metric=search.metric, mode=search.mode, require_attrs=False,
                         perturbation_interval=search.interval, synch=True, hyperparam_mutations={SEARCHED: domains})

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        # members of equal scores are ranked by their number, not by the order Tune (re)added them in
        self._trial_state = dict(sorted(self._trial_state.items(), key=lambda item: item[0].config[MEMBER]))
        result = trial.last_result or {}
        epoch = int(result.get(metrics.EPOCH, 0))
        if not epoch:
            return
        # Restored with a checkpoint. Tune saves the experiment between events, never inside the one result that
        # completes an exploit step, so the members are between the last exploit epoch at or below the lowest of
        # theirs (done: everyone reached it) and the next, which none trains past before all reach it. A member
        # restored at that epoch competes in its step with the score it reached it with.
        self.restored[trial] = epoch
        state = self._trial_state[trial]
        state.last_train_time, state.last_result = epoch, result
        if self._metric in result:
            state.last_score = self._metric_op * result[self._metric]
        done = min(self.restored.values()) // self._perturbation_interval * self._perturbation_interval
        for member in self.restored:
            self._trial_state[member].last_perturbation_time = done
        self._next_perturbation_sync = done + self._perturbation_interval

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self.epochs:  # trained: an exploit now would only swap final weights
            return self.CONTINUE
        if self._time_attr in result:  # the draws of the exploit step this result may complete: Tune's (whom to
            # clone, perturb or resample, by which factor) from `random`, a resampled value from numpy's
            draws = f"pbt {self.seed} {result[self._time_attr]}"
            random.seed(draws)
            np.random.seed(int.from_bytes(hashlib.sha256(draws.encode()).digest()[:4], "little"))
        return super().on_trial_result(tune_controller, trial, result)

    def _get_new_config(self, trial, trial_to_clone) -> tuple[dict, dict]:
        config, operations = super()._get_new_config(trial, trial_to_clone)
        searched = {k: within(v, self.mutations[k]) for k, v in config[SEARCHED].items()}
        return {**config, MEMBER: trial.config[MEMBER], SEARCHED: searched}, operations
