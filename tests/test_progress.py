"""study.run.progress: the lines a study prints, and the time left they give, from epoch times and compile seconds
given here (no clock read): Tune's callbacks called as Tune calls them, on stand-ins for its trials."""
import io
from types import SimpleNamespace

import pytest

from isnm.kernels import compile_record
from study.run.progress import Progress
from study.design.load import load_study
from study.design.plan import plan_trials
from tests.studies import small_study


@pytest.fixture()
def planned(tmp_path, monkeypatch) -> list:
    """A's two seeds (eager, T=2) and B's (compiled at T=3), 3 epochs each; this machine has compiled tiny at T=3
    in 20 s before (its Inductor cache records it) and holds none of its kernels now."""
    cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    compile_record("tiny", 3, cached=False).parent.mkdir(parents=True)
    compile_record("tiny", 3, cached=False).write_text("20.0\n")
    path = small_study(tmp_path, epochs=3, variants={"A": {}, "B": {"kernel": "compiled", "timesteps": 3}})
    return sorted(plan_trials(load_study(path)), key=lambda t: (t.variant, t.seed))


def tune_trial(trial, n: int) -> SimpleNamespace:
    return SimpleNamespace(trial_id=f"t{n}", config={"trial": trial.name}, last_result={}, num_failures=0)


def progress_of(trials: list, **options) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    by_name = {t.name: t for t in trials}
    return Progress(len(trials), 0, "test_acc", lambda config: by_name[config["trial"]], out=out, **options), out


def report(progress: Progress, trial: SimpleNamespace, epoch: int, seconds: float) -> None:
    trial.last_result = {"epoch": epoch, "test_acc": 0.5, "time_this_iter_s": seconds, "time_total_s": 7.0}
    progress.on_trial_result(0, [], trial, trial.last_result)


def test_the_time_left_comes_from_the_epochs_measured_and_this_machines_compile_seconds(planned):
    progress, out = progress_of(planned, planned=planned, slots=2)
    a0, a1 = tune_trial(planned[0], 0), tune_trial(planned[1], 1)
    for trial in (a0, a1):
        progress.on_trial_start(0, [], trial)
    for epoch, seconds in enumerate((4.0, 2.0, 2.0), start=1):  # the first epoch loads the data: left out
        report(progress, a0, epoch, seconds)
    report(progress, a1, 1, 3.0)
    report(progress, a1, 2, 2.0)
    progress.on_trial_complete(0, [], a0)
    # A seed=1: 1 epoch left at 2 s on one slot; each B, at the pace measured so far (2 s, 3 epochs), compiles T=3
    # first on its slot (20 s): 20 + 6 on the other slot, and 2 + 20 + 6 after A seed=1 on this one
    assert out.getvalue().splitlines()[-1] == "  A seed=0  finished  test_acc 50.00  7s  [1 of 4 done, ETA 28s]"
    progress.on_trial_start(0, [], b0 := tune_trial(planned[2], 2))
    assert out.getvalue().splitlines()[-1] == ("  B seed=0  compiling kernels for tiny at T=3 (first run on this "
                                               "machine: about 20 s measured here; cached afterwards)")
    report(progress, a1, 3, 2.0)
    progress.on_trial_complete(0, [], a1)
    # B seed=0 has begun (its compile announced) with no epoch yet: 3 of A's 2 s; B seed=1 beside it as long, its
    # kernels compiled here once already (on a cache they filled: that second compile is not counted)
    assert out.getvalue().splitlines()[-1] == "  A seed=1  finished  test_acc 50.00  7s  [2 of 4 done, ETA 6s]"
    for epoch, seconds in enumerate((21.0, 1.0, 1.0), start=1):  # its first epoch compiled
        report(progress, b0, epoch, seconds)
    progress.on_trial_start(0, [], b1 := tune_trial(planned[3], 3))
    progress.on_trial_complete(0, [], b0)
    # B seed=1 started: no epoch yet, so 3 at its setting's pace (B seed=0's 1 s); its compile was announced
    assert out.getvalue().splitlines()[-1] == "  B seed=0  finished  test_acc 50.00  7s  [3 of 4 done, ETA 3s]"
    report(progress, b1, 1, 1.0)
    progress.on_trial_complete(0, [], b1)
    assert out.getvalue().splitlines()[-1] == "  B seed=1  finished  test_acc 50.00  7s  [4 of 4 done]"


def test_no_time_left_is_given_before_an_epoch_is_measured_and_a_search_counts_its_samples_at_the_mean(planned):
    progress, out = progress_of(planned, slots=1)  # a search: its trials are not known before they start
    a0, a1 = tune_trial(planned[0], 0), tune_trial(planned[1], 1)
    progress.on_trial_start(0, [], a0)
    a0.last_result = {"diverged": "loss nan at epoch 1", "time_total_s": 1.0}  # ended before its first epoch
    progress.on_trial_complete(0, [], a0)
    assert out.getvalue().splitlines()[-1] == "  A seed=0  failed: loss nan at epoch 1  1s  [1 of 4 done]"
    progress.on_trial_start(0, [], a1)
    report(progress, a1, 1, 5.0)
    report(progress, a1, 2, 3.0)
    report(progress, a1, 3, 3.0)
    progress.on_trial_complete(0, [], a1)
    # two samples to come, each of the mean epochs (3) at the mean pace (3 s), one at a time
    assert out.getvalue().splitlines()[-1] == "  A seed=1  finished  test_acc 50.00  7s  [2 of 4 done, ETA 18s]"
