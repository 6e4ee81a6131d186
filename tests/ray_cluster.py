"""Ray clusters for tests, as `ray start` makes one on a real network: a head, then worker nodes joining it,
each its own raylet and node id, token authentication on (tests/test_cluster.py, and the session cluster of
tests/conftest.py that the studies join which do not test Ray's own start or shutdown)."""
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ray._private.utils import get_ray_client_dependency_error

from tests.studies import free_port, loopback_env, wait_for

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
        self.address = ""
        self.nodes: dict[str, tuple[str, subprocess.Popen]] = {}  # role -> (node id, 12 hex digits; its process)

    def node_id(self, role: str) -> str:
        return self.nodes[role][0]

    def start_nodes(self, roles: dict[str, tuple[str, ...]]) -> None:
        """Nodes by role with their `ray start` options, one at a time (a head first), each once the head has
        registered it. Two nodes of one host started at once sometimes race for their node info until `ray start`
        gives up (it waits 30 s, fixed in Ray 2.60; a loaded machine can take that long too): such a node is
        started again, three times at most."""
        for role, options in roles.items():
            for _ in range(3):
                self.launch(role, options)
                node_id = wait_for(lambda: self.registered(role), 120, f"the {role} node to join or give up")
                if node_id != GAVE_UP:
                    self.nodes[role] = (node_id[:12], self.nodes[role][1])
                    break
            else:
                raise AssertionError(f"ray start ({role}) gave up three times:\n"
                                     f"{(self.log_dir / f'{role}.log').read_text()[-3000:]}")

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
        self.nodes[role] = ("", process)

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
        wait_for(lambda: not group_alive(process.pid), 30, f"the {role} node's processes to end")

    def study_options(self, mlflow_uri: str, tmp_path: Path) -> tuple[str, ...]:
        """study.run's options for this cluster, with a test's store and a storage folder every node reaches (any
        folder does, on one host)."""
        return "--address", self.address, "--tracking-uri", mlflow_uri, "--storage", str(tmp_path / "shared")

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
