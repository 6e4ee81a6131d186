"""A Ray cluster of several nodes on this host, as `ray start` makes one on a real network: a head, then
worker nodes joining it, each its own raylet and node id, token authentication on. Trials spread over
the nodes; a node lost mid-trial costs a retry, not an epoch; logical GPUs take two trials each; a
second launch of a running study is refused; and a worker node on another host (a network namespace) at
an address of its own. Real Ray, real MLflow store, real processes and signals."""
import json
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
import torch
import yaml
from mlflow.tracking import MlflowClient
from ray._private.utils import get_ray_client_dependency_error

from isnm import train
from study.errors import StudyError
from study.run.cluster import token_refusal
from study.run.worker import usable_gpus
from study.spec.config import load_study
from study.spec.plan import plan_trials
from tests.studies import (finished_output, free_port, loopback_env, run_study, small_study, start_study, steps,
                           trial_runs, wait_for)

RAY = Path(sys.executable).parent / "ray"
ENABLE_CLUSTERS = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
GAVE_UP = "gave up"


class Cluster:
    """Ray nodes on this host, each a `ray start --block` in a process group of its own, by role ("head" first)."""

    def __init__(self, log_dir: Path, hosts: dict[str, tuple[str, tuple[str, ...]]] | None = None):
        self.log_dir = log_dir
        # role -> (the node's address, the command that runs a program on its host); by default every node
        # on this host at 127.0.0.1, run directly
        self.hosts = hosts or {}
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
        # what `ray start` and every driver read: the mode (a joining node does not turn it on by itself) and
        # the shared secret, which would otherwise come from ~/.ray/auth_token
        self.env = {**loopback_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        # loopback_env turns multi-node clusters off, so that a local Ray stays on 127.0.0.1; these nodes
        # resolve 127.0.0.1 to this host's own address, as every Ray cluster on Linux does
        del self.env[ENABLE_CLUSTERS]
        # a lost node is declared dead after 5 missed health checks a second apart, not Ray's 15 s or more
        self.env.update(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="5")
        self.address = ""
        self.nodes: dict[str, tuple[str, subprocess.Popen]] = {}  # role -> (node id, 12 hex digits; its process)
        self.options: dict[str, tuple[str, ...]] = {}  # role -> its `ray start` options
        self.lost: list[str] = []  # roles of nodes killed, started again by `replace_lost_nodes`

    def node_id(self, role: str) -> str:
        return self.nodes[role][0]

    def start_nodes(self, roles: dict[str, tuple[str, ...]]) -> None:
        """Nodes by role with their `ray start` options, started together (a head alone, first), once the head
        has registered each. `ray start` gives up when its node has not registered within 30 s (fixed in Ray
        2.60), which a loaded machine can take: such a node is started again, three times at most."""
        pending = dict(roles)
        for _ in range(3):
            for role, options in pending.items():
                self.launch(role, options)
            for role in list(pending):
                node_id = wait_for(lambda: self.registered(role), 120, f"the {role} node to join or give up")
                if node_id != GAVE_UP:
                    self.nodes[role] = (node_id[:12], self.nodes[role][1])
                    del pending[role]
            if not pending:
                return
        raise AssertionError(f"ray start ({', '.join(pending)}) gave up three times:\n"
                             f"{(self.log_dir / f'{next(iter(pending))}.log').read_text()[-3000:]}")

    def launch(self, role: str, options: tuple[str, ...]) -> None:
        node_ip, run_there = self.host(role)
        if role == "head":
            port = free_port()
            where = ["--head", "--port", str(port), "--temp-dir", str(self.temp_dir), "--include-dashboard", "false"]
            if get_ray_client_dependency_error() is None:  # Ray Client's server (with grpcio, which the bench extra
                where += ["--ray-client-server-port", str(free_port())]  # brings) listens on 10001 unless moved
            self.address = f"{node_ip}:{port}"
        else:
            where = ["--address", self.address]
        with open(self.log_dir / f"{role}.log", "a") as out:
            process = subprocess.Popen([*run_there, str(RAY), "start", "--block", "--node-ip-address", node_ip,
                                        "--disable-usage-stats", *where, *options], env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes[role], self.options[role] = ("", process), options

    def host(self, role: str) -> tuple[str, tuple[str, ...]]:
        return self.hosts.get(role, ("127.0.0.1", ()))

    def registered(self, role: str) -> str:
        """The node id of `role` once the head has registered it, GAVE_UP when its `ray start` ended, else ""."""
        process = self.nodes[role][1]
        if process.poll() is not None:
            kill_group(process.pid)  # whatever it had started
            return GAVE_UP
        node_id = raylet_node_id(process.pid)
        gcs_log = self.temp_dir / "session_latest/logs/gcs_server.out"
        return node_id if node_id and gcs_log.is_file() and f"node_id={node_id}" in gcs_log.read_text() else ""

    def kill(self, node_id: str) -> None:
        """A node lost as a host is lost: its raylet, its workers and every other process of it, SIGKILLed."""
        role = next(role for role, (known, _) in self.nodes.items() if known == node_id)
        _, process = self.nodes.pop(role)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        self.lost.append(role)
        wait_for(lambda: not group_alive(process.pid), 30, f"the {role} node's processes to end")

    def replace_lost_nodes(self) -> None:
        self.start_nodes({role: self.options[role] for role in self.lost})
        self.lost.clear()

    def stop(self) -> None:
        """Every node's processes SIGKILLed (nothing of a test cluster needs a clean stop), its files removed."""
        for _, process in self.nodes.values():
            kill_group(process.pid)
            process.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def raylet_node_id(pid: int) -> str:
    """The node id the raylet started by `ray start` (process `pid`) runs as, "" until it runs."""
    found = subprocess.run(["pgrep", "-P", str(pid), "-x", "raylet"], capture_output=True, text=True).stdout.split()
    for raylet in found:
        try:
            args = Path(f"/proc/{raylet}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        return next((a.split("=", 1)[1] for a in args if a.startswith("--node_id=")), "")
    return ""


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head that runs no trials (as the driver's node on a real cluster may), a CPU node, and a node
    that declares two logical GPUs it does not have, each with 2 CPUs."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start_nodes({"head": ("--num-cpus", "0")})
        cluster.start_nodes({"cpu": ("--num-cpus", "2"), "gpu": ("--num-cpus", "2", "--num-gpus", "2")})
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def cluster(ray_cluster):
    """The module's cluster, with any node an earlier test killed started again."""
    ray_cluster.replace_lost_nodes()
    return ray_cluster


def on_cluster(cluster: Cluster, mlflow_uri: str, tmp_path: Path) -> tuple[str, ...]:
    """study.run's options for `cluster`, with this test's store and a storage folder every node reaches (any
    folder does, on one host)."""
    return "--address", cluster.address, "--tracking-uri", mlflow_uri, "--storage", str(tmp_path / "shared")


@pytest.mark.slow
def test_trials_spread_over_the_nodes_and_record_where(cluster, mlflow_uri, tmp_path):
    path = small_study(tmp_path, name="spread", epochs=1)  # 4 trials of 1 CPU: 2 CPUs a node, so both nodes
    done = run_study(tmp_path, str(path), *on_cluster(cluster, mlflow_uri, tmp_path), env=cluster.env)
    assert "spread: 4 trials" in done.stdout and "0 failed" in done.stdout
    runs = trial_runs(tmp_path / "mlflow.db", "spread")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    nodes = Counter(r.data.tags["ray_node"].split()[0] for r in runs)
    assert nodes == {cluster.node_id("cpu"): 2, cluster.node_id("gpu"): 2}, nodes
    assert all("gpu_ids" not in r.data.tags for r in runs)  # none asked for a GPU


@pytest.mark.slow
def test_a_driver_with_another_token_is_refused_in_one_line(cluster, mlflow_uri, tmp_path):
    path = small_study(tmp_path, name="stranger", epochs=1)
    done = run_study(tmp_path, str(path), *on_cluster(cluster, mlflow_uri, tmp_path), check=False, timeout=300,
                     env={**cluster.env, "RAY_AUTH_TOKEN": secrets.token_hex(16)})
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
    done = run_study(tmp_path, str(path), "--dry-run", "--estimate", *on_cluster(cluster, mlflow_uri, tmp_path),
                     env=cluster.env)
    # the head runs no trials: 2 CPU nodes' 4 CPUs and the logical GPUs, 1 CPU a trial
    assert f"4 trials at a time on the cluster at {cluster.address}: 4 CPUs, 2 GPUs; 1 CPU and 0 GPU per trial" \
        in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
def test_a_second_launch_of_a_running_study_is_refused(cluster, mlflow_uri, tmp_path):
    # (a killed driver's lock: test_lock, and test_resilience's driver killed and run again)
    path = small_study(tmp_path, name="twice", epochs=1, variants={"A": {}}, seeds=[0])
    args = (str(path), *on_cluster(cluster, mlflow_uri, tmp_path))
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
    done = run_study(tmp_path, str(path), *on_cluster(cluster, mlflow_uri, tmp_path), env=cluster.env)
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


@pytest.mark.slow
def test_a_node_lost_mid_trial_resumes_on_another_in_the_same_run(cluster, mlflow_uri, tmp_path):
    epochs = 8  # about a second each: the node is killed several epochs before the trial could end
    path = small_study(tmp_path, name="lost", epochs=epochs, variants={"GSG": {"surrogate.schedule": "gradual"}},
                       seeds=[5])
    db = tmp_path / "mlflow.db"
    driver = start_study(tmp_path, str(path), *on_cluster(cluster, mlflow_uri, tmp_path), env=cluster.env)
    try:
        # an epoch in MLflow: the driver holds its checkpoint, on the storage every node reads
        (run,) = wait_for(lambda: [r for r in trial_runs(db, "lost") if steps(db, r)], 240, "an epoch logged", driver)
        lost = run.data.tags["ray_node"].split()[0]
        cluster.kill(lost)
        assert len(steps(db, run)) < epochs, "the trial ended before its node was lost: the test needs longer epochs"
        output = finished_output(driver, 300)
    finally:
        driver.kill()
    assert driver.returncode == 0, output[-3000:]
    (run,) = trial_runs(db, "lost")
    survivor = run.data.tags["ray_node"].split()[0]
    assert run.info.status == "FINISHED" and run.data.tags["retries"] == "1"
    assert [n.split()[0] for n in run.data.tags["ray_nodes"].split(", ")] == [lost, survivor]
    assert survivor in {node_id for node_id, _ in cluster.nodes.values()}
    assert steps(db, run) == list(range(1, epochs + 1))  # one run, every epoch exactly once
    # Ray's own record of what the trial reported: each epoch once, and after the restart (its count of
    # iterations since a restore begins again) it went on from the checkpoint, not from epoch 1
    (record,) = tmp_path.glob(f"shared/lost-*/{run.data.tags['ray_trial_id']}/result.json")
    reported = [json.loads(line) for line in record.read_text().splitlines()]
    assert [r["epoch"] for r in reported] == list(range(1, epochs + 1))
    resumed = [r["epoch"] for r in reported if r["iterations_since_restore"] == 1]
    assert resumed[0] == 1 and len(resumed) == 2 and 1 < resumed[1] <= epochs, resumed
    # and trained as one uninterrupted run on the CPU does, to the bit
    (trial,) = plan_trials(load_study(path))
    torch.set_num_threads(1)  # the trial had one CPU
    reference: list[dict] = []
    train(trial.config, on_epoch=lambda metrics, _: reference.append(metrics))
    client = MlflowClient(mlflow_uri)
    for key in ("test_acc", "train_acc", "train_loss", "spike_rate"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == {m["epoch"]: m[key] for m in reference}, key


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
    # the head, without CPUs, and the driver on host a; the only CPUs on host b: every trial crosses the
    # network, its checkpoints written where the driver reads them (the shared folder), its results back
    cluster = Cluster(tmp_path, hosts={"head": two_hosts["a"], "worker": two_hosts["b"]})
    try:
        cluster.start_nodes({"head": ("--num-cpus", "0")})
        cluster.start_nodes({"worker": ("--num-cpus", "2")})
        path = small_study(tmp_path, name="hosts", epochs=2, variants={"A": {}})
        db = tmp_path / "mlflow.db"
        done = run_study(tmp_path, str(path), "--address", cluster.address, "--tracking-uri", f"sqlite:///{db}",
                         "--storage", str(tmp_path / "shared"), env=cluster.env, where=two_hosts["a"][1])
    finally:
        cluster.stop()
    assert cluster.address.startswith(two_hosts["a"][0] + ":") and "0 failed" in done.stdout
    runs = trial_runs(db, "hosts")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    worker_node = f"{cluster.node_id('worker')} {two_hosts['b'][0]}"
    assert [r.data.tags["ray_node"] for r in runs] == [worker_node, worker_node]
    assert all(steps(db, r) == [1, 2] and "model.pt" in {a.path for a in MlflowClient(f"sqlite:///{db}")
                                                          .list_artifacts(r.info.run_id)} for r in runs)
