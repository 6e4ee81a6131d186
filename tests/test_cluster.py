"""A Ray cluster of several nodes on this host, as `ray start` makes one on a real network: a head, then
worker nodes joining it, each its own raylet and node id, token authentication on. Trials spread over
the nodes; logical GPUs take two trials each; a driver with another token is refused; a second launch of a
running study is refused; and a worker node on another host (a network namespace) at an address of its own
(a node lost mid-trial: tests/test_node_loss.py). Real Ray, real MLflow store, real processes and signals."""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from study.errors import StudyError
from study.run.cluster import stop_orphaned_ray_agents, token_refusal
from study.run.worker import usable_gpus
from tests.ray_cluster import Cluster
from tests.studies import ROOT, free_port, run_study, small_study, start_study, steps, trial_runs, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head that runs no trials (as the driver's node on a real cluster may), a CPU node, and a node
    that declares two logical GPUs it does not have, each with 2 CPUs."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start_nodes({"head": ("--num-cpus", "0"), "cpu": ("--num-cpus", "2"),
                             "gpu": ("--num-cpus", "2", "--num-gpus", "2")})
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
def test_trials_spread_over_the_nodes_and_record_where(cluster, mlflow_uri, tmp_path):
    path = small_study(tmp_path, name="spread", epochs=1)  # 4 trials of 1 CPU: 2 CPUs a node, so both nodes
    done = run_study(tmp_path, str(path), *cluster.study_options(mlflow_uri, tmp_path), env=cluster.env)
    assert "spread: 4 trials" in done.stdout and "0 failed" in done.stdout
    runs = trial_runs(tmp_path / "mlflow.db", "spread")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    nodes = Counter(r.data.tags["ray_node"].split()[0] for r in runs)
    assert nodes == {cluster.node_id("cpu"): 2, cluster.node_id("gpu"): 2}, nodes
    assert all("gpu_ids" not in r.data.tags for r in runs)  # none asked for a GPU


@pytest.mark.slow
def test_a_driver_with_another_token_is_refused_in_one_line(cluster, mlflow_uri, tmp_path):
    path = small_study(tmp_path, name="stranger", epochs=1)
    # Ray asks for the cluster's id 20 times a second apart before it gives up (RAY_NUM_REDIS_GET_RETRIES); the
    # refusal reads the same after 2
    done = run_study(tmp_path, str(path), *cluster.study_options(mlflow_uri, tmp_path), check=False, timeout=300,
                     env={**cluster.env, "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_NUM_REDIS_GET_RETRIES": "2"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "the Ray cluster refused this driver's token" in done.stderr.strip().splitlines()[-1]


def test_a_token_refusal_is_found_where_ray_puts_it():
    refused = "RPC error: InvalidAuthToken: Authentication token is missing or incorrect. Ensure that the token"
    assert token_refusal(ray.exceptions.AuthenticationError(refused)) == refused.split(". ")[0]
    # another token: Ray 2.60 quotes the refusal's traceback in a RuntimeError behind a ConnectionError
    try:
        try:
            raise RuntimeError("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
                               f'  File "python/ray/includes/common.pxi", line 119\n'
                               f"ray.exceptions.AuthenticationError: {refused}\n")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379") from cause
    except ConnectionError as exc:
        assert token_refusal(exc) == "RPC error: InvalidAuthToken: Authentication token is missing or incorrect"
    assert token_refusal(ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379")) is None


@pytest.mark.slow
def test_the_estimate_counts_the_clusters_slots(cluster, mlflow_uri, tmp_path):
    path = small_study(tmp_path, name="priced", epochs=1)
    done = run_study(tmp_path, str(path), "--dry-run", "--estimate", *cluster.study_options(mlflow_uri, tmp_path),
                     env=cluster.env)
    # the head runs no trials: 2 CPU nodes' 4 CPUs and the logical GPUs, 1 CPU a trial
    assert f"4 trials at a time on the cluster at {cluster.address}: 4 CPUs, 2 GPUs; 1 CPU and 0 GPU per trial" \
        in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
def test_a_second_launch_of_a_running_study_is_refused(cluster, mlflow_uri, tmp_path):
    # (a killed driver's lock: test_lock, and test_resilience's driver killed and run again)
    path = small_study(tmp_path, name="twice", epochs=1, variants={"A": {}}, seeds=[0])
    args = (str(path), *cluster.study_options(mlflow_uri, tmp_path))
    first = start_study(tmp_path, *args, env=cluster.env)
    try:
        lock = wait_for(lambda: list((tmp_path / "shared").glob("twice-*.lock")), 120, "the study's lock", first)[0]
        wait_for(lambda: f"PID {first.pid} " in lock.read_text(), 30, "the lock to name its holder", first)
        first.send_signal(signal.SIGSTOP)  # frozen, it holds the lock for as long as this test needs
        second = run_study(tmp_path, *args, check=False, env=cluster.env)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"error: study twice is already running from PID {first.pid} on host {socket.gethostname()}, started at ")


@pytest.mark.slow
def test_logical_gpus_take_two_trials_each_and_runs_record_them(cluster, mlflow_uri, tmp_path):
    # the GPU node's 2 logical GPUs at 0.5 a trial take 4 trials at once; `device: cpu` is the simulation's
    # opt-out of the check that torch sees the GPU it was given
    path = small_study(tmp_path, name="halves", epochs=1, resources={"cpu": 0.5, "gpu": 0.5})
    study = yaml.safe_load(path.read_text())
    study["base"]["device"] = "cpu"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    done = run_study(tmp_path, str(path), *cluster.study_options(mlflow_uri, tmp_path), env=cluster.env)
    assert "halves: 4 trials" in done.stdout and "0 failed" in done.stdout
    runs = trial_runs(tmp_path / "mlflow.db", "halves")
    assert {r.info.status for r in runs} == {"FINISHED"}
    # each trial saw one GPU, its own (the trial checks that CUDA_VISIBLE_DEVICES is exactly it), two per GPU
    assert Counter(r.data.tags["gpu_ids"] for r in runs) == {"0": 2, "1": 2}
    assert {r.data.tags["ray_node"].split()[0] for r in runs} == {cluster.node_id("gpu")}
    assert max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs), "not all four ran at once"


def test_a_gpu_torch_cannot_see_stops_the_trial_with_one_line():
    with pytest.raises(StudyError, match=r"^torch sees 0 GPU\(s\) on node n1, but Ray gave this trial GPU 1; its "
                                         r"torch is .*, or set device: cpu to train on its CPUs \(torch .*\)$"):
        usable_gpus([1], "1", 0, "auto", "n1")
    with pytest.raises(StudyError, match="^torch sees 1 GPU"):
        usable_gpus([0, 1], "0,1", 1, "cuda", "n1")
    with pytest.raises(StudyError, match="^CUDA_VISIBLE_DEVICES is None on node n1, but Ray gave this trial GPU 0: "
                                         "it would use other trials' GPUs"):
        usable_gpus([0], None, 2, "cuda", "n1")
    assert usable_gpus([0], "0", 0, "cpu", "n1") == "0"  # the simulation: logical GPUs, trained on the CPU
    assert usable_gpus([2, 3], "2,3", 2, "auto", "n1") == "2,3"
    assert usable_gpus([], None, 0, "auto", "n1") == ""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture()
def two_hosts():
    """Two hosts on a network of their own: network namespaces joined by a veth pair, "a" at 10.213.N.1 and
    "b" at 10.213.N.2, each with its loopback up (Ray's processes on a node talk over it too). Everything
    else (files, processes) they share with this host, as hosts of a cluster share storage."""
    tag, subnet = f"{os.getpid() % 100000}", 1 + os.getpid() % 250
    names = {"a": f"isnm{tag}a", "b": f"isnm{tag}b"}
    made = []
    try:
        for name in names.values():
            ip("netns", "add", name)
            made.append(name)
        ip("link", "add", f"v{tag}a", "netns", names["a"], "type", "veth", "peer", "name", f"v{tag}b",
           "netns", names["b"])
        hosts = {}
        for end, name in names.items():
            address = f"10.213.{subnet}.{1 if end == 'a' else 2}"
            ip("-n", name, "addr", "add", f"{address}/30", "dev", f"v{tag}{end}")
            ip("-n", name, "link", "set", f"v{tag}{end}", "up")
            ip("-n", name, "link", "set", "lo", "up")
            hosts[end] = (address, ("ip", "netns", "exec", name))
        yield hosts
    finally:
        for name in made:  # the veth pair goes with them
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")
def test_trials_run_on_another_host_at_its_own_address(two_hosts, tmp_path):
    """The head, without CPUs, and the driver on host a; the only CPUs on host b: every trial crosses the network,
    its checkpoints written where the driver reads them (the shared folder), its results back. The trials train the
    study's own network, a module only in the study file's folder: Ray ships it to host b (runtime_env py_modules),
    where, without that, a task cannot import it (the hosts share this machine's disk, so the test shows both)."""
    cluster = Cluster(tmp_path, hosts={"head": two_hosts["a"], "worker": two_hosts["b"]})
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(ROOT / "examples" / "spiking_mlp.py", mine / "hostnet.py")
    try:
        cluster.start_nodes({"head": ("--num-cpus", "0"), "worker": ("--num-cpus", "2")})
        unshipped = subprocess.run(
            [*two_hosts["a"][1], sys.executable, "-c", UNSHIPPED, cluster.address, str(mine)], cwd=tmp_path,
            env=cluster.env, capture_output=True, text=True, timeout=120)
        assert unshipped.stdout.strip() == f"ModuleNotFoundError on {two_hosts['b'][0]}", unshipped.stderr[-2000:]
        path = small_study(mine, name="hosts", epochs=2, variants={"A": {"arch": "hostnet:spiking_mlp"}})
        db = tmp_path / "mlflow.db"
        done = run_study(tmp_path, str(path), "--address", cluster.address, "--tracking-uri", f"sqlite:///{db}",
                         "--storage", str(tmp_path / "shared"), env=cluster.env, where=two_hosts["a"][1])
    finally:
        cluster.stop()
    assert cluster.address.startswith(two_hosts["a"][0] + ":") and "0 failed" in done.stdout, done.stdout[-2000:]
    runs = trial_runs(db, "hosts")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    worker_node = f"{cluster.node_id('worker')} {two_hosts['b'][0]}"
    assert [r.data.tags["ray_node"] for r in runs] == [worker_node, worker_node]
    assert all(r.data.params["arch"] == "hostnet:spiking_mlp" and r.data.params["arch_source"] for r in runs)
    assert all(steps(db, r) == [1, 2] and "model.pt" in {a.path for a in MlflowClient(f"sqlite:///{db}")
                                                          .list_artifacts(r.info.run_id)} for r in runs)


# A Ray task on host b, from a driver on host a that has the module's folder on its own sys.path, as study.run does
UNSHIPPED = """
import sys
import ray
sys.path.insert(0, sys.argv[2])
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=1)
def where_it_imports():
    import ray.util
    try:
        import hostnet
        return "imported on " + ray.util.get_node_ip_address()
    except ModuleNotFoundError:
        return "ModuleNotFoundError on " + ray.util.get_node_ip_address()

print(ray.get(where_it_imports.remote()))
"""


@pytest.mark.slow
def test_a_local_study_never_joins_the_cluster_ray_start_last_recorded(tmp_path):
    """ray.init() without an address joins the cluster `ray start` last wrote into <tmp>/ray/ray_current_cluster,
    and waits minutes for it when it has gone (a Slurm job's, ended): a local study starts its own Ray."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # nothing listens there
        path = small_study(tmp_path, name="alone", epochs=1, variants={"ISNM": {}}, seeds=[0])
        done = run_study(tmp_path, str(path), env={"RAY_TMPDIR": str(ray_tmp)}, timeout=240)
        assert "alone: 1 trial (0 cached) in" in done.stdout and "GCS" not in done.stderr, done.stderr[-2000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_the_agents_a_killed_drivers_ray_left_are_stopped_and_no_others(capsys):
    """What a local Ray leaves when its driver is SIGKILLed (its agents, named by their raylet in RAY_RAYLET_PID),
    stood in for by processes of those names: the next local start stops those of a raylet that is gone."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # a raylet that was

    def agent(name: str, raylet: int) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-c", f"exec -a {name} sleep 120"], env={**os.environ, "RAY_RAYLET_PID": str(raylet)})

    left = [agent("ray::DashboardAgent", gone.pid), agent("ray::RuntimeEnvAgent", gone.pid)]
    alive = agent("ray::DashboardAgent", os.getpid())  # its raylet runs: another Ray's, whoever started it
    other = agent("sleepy", gone.pid)  # not an agent of Ray's
    try:
        wait_for(lambda: all(open(f"/proc/{p.pid}/cmdline", "rb").read().startswith(b"ray::") for p in left), 10,
                 "the stand-ins' names")
        stop_orphaned_ray_agents()
        assert [p.wait(timeout=10) for p in left] == [-signal.SIGKILL] * 2
        assert alive.poll() is None and other.poll() is None
        assert "stopped 2 Ray agent process(es) that a killed driver's Ray left running" in capsys.readouterr().out
    finally:
        for p in (*left, alive, other):
            p.kill()
            p.wait()
