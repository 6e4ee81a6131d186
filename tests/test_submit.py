"""study.submit: the sbatch script of a study, the mistakes refused before anything is submitted, and a real Slurm
job (tests/slurm_cluster.py) that hits its time limit, requeues itself and resumes the study to the end."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from study.errors import StudyError
from study.records import Tag
from study.submit.cli import absolute_uri, check_header_values, file_system, parse_args, sqlite_warning
from study.submit.script import FINISHED, TEMPLATE, SlurmJob, filled, script, time_limit_seconds
from tests.slurm_cluster import Slurm
from tests.studies import ROOT, loopback_env, small_study, steps, trial_runs, wait_for, with_store


def submit(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.submit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env or loopback_env())


@pytest.mark.parametrize("text, seconds", [("90", 5400), ("2:30", 150), ("24:00:00", 86400), ("2-0", 172800),
                                           ("1-12:30", 131400), ("1-00:00:05", 86405)])
def test_time_limits_read_as_sbatch_reads_them(text, seconds):
    assert time_limit_seconds(text) == seconds


@pytest.mark.parametrize("text", ["\n\n90", "90\n", " 90", "2-0:0:0:0", "1:2:3:4", "tomorrow"])
def test_what_sbatch_would_not_read_as_a_time_limit_is_refused(text):
    with pytest.raises(StudyError, match="--time: got .*, expected a Slurm time limit"):
        time_limit_seconds(text)


@pytest.mark.parametrize("flag, value, expected", [
    ("--partition", "gpu\ntouch /tmp/x/pwned", "without newlines or control characters"),
    ("--account", "lab\rrm -rf ~", "without newlines or control characters"),
    ("--sbatch-arg", "--qos=high\ntouch /tmp/x/pwned", "without newlines or control characters"),
    ("--time", "\n\n90", "without newlines or control characters"),  # would end the header: --signal ignored
    ("--partition", "gpu debug", "without spaces"),
    ("--account", "lab\x00", "without newlines or control characters"),
])
def test_a_value_that_would_leave_its_sbatch_line_is_refused(flag, value, expected):
    args = parse_args(["study.yaml", "--slurm", f"{flag}={value}"])
    with pytest.raises(StudyError, match=f"^{flag}: got {re.escape(repr(value))}, expected a value {expected}$"):
        check_header_values(args)
    check_header_values(parse_args(["study.yaml", "--slurm", "--partition=gpu", "--account=lab", "--time=1-12:00",
                                    "--sbatch-arg=--comment=a b"]))  # a space within an sbatch option is sbatch's


def test_the_script_fills_every_placeholder_of_its_template_and_keeps_its_header_whole():
    job = SlurmJob(name="isnm-x", study_file="/a b/x.yaml", profile="demo", workdir="/w", activate="source /v/bin/activate",
                   storage="/s", tracking_uri="sqlite:////t/mlflow.db", folder="/s/slurm", nodes=2, gpus_per_node=4,
                   cpus_per_node=16, time="10", stop_before=60, max_requeues=3, partition="gpu", sbatch_args=("--qos=x",))
    text = script(job, "/s/slurm/isnm-x.sbatch")
    assert "{{" not in text and "}}" not in text
    assert "python -m study.run '/a b/x.yaml' --profile demo --address" in text and f'"$code" = {FINISHED}' in text
    lines = text.splitlines()
    header = lines[1:lines.index("")]  # sbatch reads #SBATCH lines until the first command
    assert all(line.startswith("#") for line in header) and "#SBATCH --signal=B:USR1@60" in header, header
    assert header[-1] == "#SBATCH --qos=x"
    with pytest.raises(ValueError, match="placeholders"):
        filled(TEMPLATE.read_text(), {"name": "x"})


def test_the_dry_run_prints_a_script_bash_accepts_and_writes_nothing(tmp_path):
    path = small_study(tmp_path, name="dry", resources={"cpu": 2, "gpu": 0.5})
    done = submit(tmp_path, str(path), "--slurm", "--nodes", "3", "--gpus-per-node", "4", "--time", "2-00:00:00",
                  "--partition", "gpu", "--sbatch-arg=--qos=high", "--dry-run")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    slurm = tmp_path / "ray_results" / "slurm"
    for line in ["#SBATCH --nodes=3", "#SBATCH --gres=gpu:4", "#SBATCH --cpus-per-task=16",  # 8 trials of 2 CPUs
                 "#SBATCH --time=2-00:00:00", "#SBATCH --partition=gpu", "#SBATCH --signal=B:USR1@300",
                 "#SBATCH --requeue", f"#SBATCH --output={slurm}/isnm-dry-%j.log", "#SBATCH --qos=high",
                 f"source {sys.prefix}/bin/activate", "export RAY_AUTH_MODE=token", "MAX_REQUEUES=10"]:
        assert line in text.splitlines(), line
    assert f"python -m study.run {path} --address" in text and f"--tracking-uri sqlite:///{tmp_path}/mlflow.db" in text
    assert not slurm.exists()


@pytest.mark.parametrize("args, message", [
    ((), "expected --slurm"),
    (("--slurm",), "resources.gpu: 0.5 per trial, but --gpus-per-node 0; pass --gpus-per-node 1 or more"),
    (("--slurm", "--gpus-per-node", "2", "--time", "5", "--stop-before", "300"),
     "--stop-before: 300 s, not shorter than --time 5 (300 s)"),
    (("--slurm", "--gpus-per-node", "2", "--time", "tomorrow"), "--time: got 'tomorrow', expected a Slurm time limit"),
    (("--slurm", "--gpus-per-node", "2", "--sbatch-arg", "qos=high"), "--sbatch-arg: got 'qos=high', expected"),
    (("--slurm", "--gpus-per-node", "2", "--nodes", "0"), "--nodes: got 0, expected an integer >= 1"),
    (("--slurm", "--gpus-per-node", "2", "--partition", "gpu\ntouch pwned"),
     "--partition: got 'gpu\\ntouch pwned', expected a value without newlines or control characters"),
    (("--slurm", "--gpus-per-node", "2", "--storage", "my results"), "holds a space or %, which an #SBATCH line"),
    (("--slurm", "--gpus-per-node", "2", "--tracking-uri", "http://127.0.0.1:5000"),
     "the job's nodes would reach their own loopback"),
])
def test_mistakes_are_one_line_before_anything_is_submitted(tmp_path, args, message):
    path = small_study(tmp_path, name="wrong", resources={"cpu": 1, "gpu": 0.5})
    done = submit(tmp_path, str(path), *args)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "ray_results").exists()


def test_gpus_a_study_does_not_use_are_refused(tmp_path):
    done = submit(tmp_path, str(small_study(tmp_path)), "--slurm", "--gpus-per-node", "4", "--dry-run")
    assert done.returncode == 2 and "asks for no GPUs (resources.gpu: 0), so they would sit idle" in done.stderr


def test_without_sbatch_it_says_where_to_run(tmp_path):
    env = {**loopback_env(), "PATH": str(Path(sys.executable).parent)}
    done = submit(tmp_path, str(small_study(tmp_path)), "--slurm", env=env)
    assert done.returncode == 2 and "sbatch: not found; run study.submit on a Slurm login node" in done.stderr


def test_a_sqlite_store_on_a_network_file_system_is_warned_of(monkeypatch, tmp_path):
    assert file_system(Path("/proc/self")) == "proc"
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    assert sqlite_warning(f"sqlite:///{tmp_path}/mlflow.db") is None
    monkeypatch.setattr("study.submit.cli.file_system", lambda path: "nfs4")
    assert "lies on nfs4, a network file system, where sqlite's locking is unsafe" in sqlite_warning(
        f"sqlite:///{tmp_path}/mlflow.db")
    assert sqlite_warning("http://127.0.0.1:5000") is None


@pytest.fixture(scope="module")
def slurm():
    cluster = Slurm()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs jobs as their users and munged as munge: root only")
def test_a_study_outlives_its_jobs_time_limit_and_scancel(slurm, tmp_path):
    """A study longer than what its job may run: the time limit's warning (USR1 to the batch script, as the
    script's `--signal=B:USR1@60` asks of Slurm) stops the study, the job requeues itself and the next allocation
    resumes it. scancel then stops it, not requeued, and `sbatch` of the same script (with a longer limit) resumes
    it to the end. Every trial ends FINISHED in one run, every epoch logged once, each run tagged with the job and
    the restart it last trained in; study.status follows it all.

    The warning is sent the way Slurm sends it (`scancel --batch --signal=USR1`), once the first allocation has
    trained two epochs: Slurm's own clock (a limit in whole minutes, looked at every 30 s) would make the test's
    verdict depend on how fast this machine trains, and alone on an idle machine the study finished before it."""
    epochs = 14  # the warning comes after the second: the rest outlasts the signal's delivery on any machine
    path = small_study(tmp_path, name="slurmed", epochs=epochs, variants={"ISNM": {}}, seeds=[0, 1])
    with_store(tmp_path)
    db, uri = tmp_path / "mlflow.db", f"sqlite:///{tmp_path}/mlflow.db"
    env = {**loopback_env(), **slurm.env, "PYTHONPATH": str(ROOT)}
    del env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]  # the job's Ray is a `ray start` cluster, on 127.0.0.1 (NodeAddr)
    done = submit(tmp_path, str(path), "--slurm", "--time", "10", "--stop-before", "60", "--cpus-per-node", "2",
                  "--max-requeues", "8", env=env)
    assert done.returncode == 0, done.stderr
    job = done.stdout.split("Slurm job ", 1)[1].split()[0]
    script = done.stdout.split("script  ", 1)[1].split()[0]
    assert "#SBATCH --signal=B:USR1@60" in Path(script).read_text()  # what has Slurm send the warning
    log = tmp_path / "ray_results" / "slurm" / f"isnm-slurmed-{job}.log"

    def status() -> str:
        return subprocess.run([sys.executable, "-m", "study.status", "slurmed", "--tracking-uri", uri], env=env,
                              capture_output=True, text=True, timeout=120).stdout

    def epochs_logged() -> list[int]:
        return [len(steps(db, run)) for run in trial_runs(db, "slurmed")]

    began = time.monotonic()
    wait_for(lambda: max(epochs_logged(), default=0) >= 2, 600, f"job {job} to train two epochs")
    running = status()  # as a user on the login node asks
    assert f"job {job}, RUNNING" in running and "restart 0" in running, running
    slurm.run("scancel", "--batch", "--signal=USR1", job)

    def resumed() -> bool:
        after = (log.read_text() if log.exists() else "").partition(f"job {job}, restart 1: Ray on")[2]
        return "epoch " in after  # the second allocation trains

    wait_for(resumed, 600, f"job {job} to be requeued and resume")
    first = log.read_text()
    assert "the time limit is near: stopping the study" in first and "requeued (restart 1 of at most 8)" in first
    slurm.run("scancel", job)
    wait_for(lambda: slurm.job(job).get("JobState") in ENDED, 120, f"job {job} to end")
    assert slurm.job(job)["JobState"] == "CANCELLED" and slurm.job(job)["Restarts"] == "1"  # not requeued
    cancelled = status()
    assert "slurm   job" in cancelled and "0 running" in cancelled, cancelled
    for run in trial_runs(db, "slurmed"):  # nothing counted finished that is not
        assert (run.info.status == "FINISHED") == (steps(db, run) == list(range(1, epochs + 1))), run.info.status
    partial = epochs_logged()

    # sbatch's own options override the script's
    again = slurm.run("sbatch", "--parsable", "--time=15", script).strip()
    assert again and again != job
    wait_for(lambda: slurm.job(again).get("JobState") in ENDED, 840, f"job {again} to end")
    text = (log.parent / f"isnm-slurmed-{again}.log").read_text()
    fields = slurm.job(again)
    assert fields["JobState"] == "COMPLETED", text[-4000:]
    assert f"the study is finished (job {again}, restart {fields['Restarts']})" in text, text[-4000:]
    runs = trial_runs(db, "slurmed")
    assert sorted((r.data.tags[Tag.VARIANT], r.data.tags[Tag.SEED]) for r in runs) == [("ISNM", "0"), ("ISNM", "1")]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert steps(db, run) == list(range(1, epochs + 1))  # each epoch once, over three allocations
        assert run.data.tags[Tag.SLURM_JOB] == again and run.data.tags[Tag.SLURM_RESTARTS] == fields["Restarts"]
    final = status()
    assert "2 finished" in final and f"epochs  {2 * epochs} of {2 * epochs} (100%)" in final, final
    assert f"slurm   job {again}" in final and f"restart {fields['Restarts']}" in final, final
    print(f"jobs {job} and {again}: epochs {partial} at scancel, {time.monotonic() - began:.0f} s")


def test_the_kuberay_manifest_runs_a_study_run_command_that_parses():
    """deploy/kuberay/rayjob.yaml is untested on Kubernetes; its command at least stays one study.run takes."""
    from study.run.cli import parse_args
    from study.design.load import load_study

    job = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayjob.yaml").read_text())
    command = job["spec"]["entrypoint"].split()
    assert command[:3] == ["python", "-m", "study.run"] and job["kind"] == "RayJob"
    args = parse_args(command[3:])
    load_study(ROOT / args.file)
    assert job["spec"]["rayClusterSpec"]["rayVersion"] in (ROOT / "constraints.txt").read_text()
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
