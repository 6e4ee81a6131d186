"""Joining a Ray cluster, or starting Ray on this machine: the address, its checks, token authentication.

Ray itself loads only inside the functions that need it, so `study.run --dry-run` never imports it."""
from __future__ import annotations

import os
import re
import signal
import socket
import time
from typing import Optional, Sequence

from study.errors import StudyError, first_line


def cluster_address(cli_value: Optional[str]) -> Optional[str]:
    """--address, else RAY_ADDRESS, else None (a local Ray)."""
    return cli_value or os.environ.get("RAY_ADDRESS") or None


def set_ray_environment(address: Optional[str]) -> None:
    """Settings Ray reads once, on import: call before anything imports ray."""
    # Every epoch checkpoints by design (that is what resuming needs); Tune warns about it on short epochs.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune saves its experiment state at least 10 s apart by default, and only the last two trial
    # checkpoints are kept: with epochs of a second (digits) a killed driver's state could name a
    # checkpoint already deleted, and that trial could not resume
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Ctrl-C is handled by `Interrupts`, which knows it happened (Tune's own handler returns from fit
    # as if the study were done)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if address:
        # `ray start` turns token authentication on, but a joining driver follows only when told
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def no_cluster(where: str, reason: str) -> StudyError:
    return StudyError(f"--address {where}: no Ray cluster answers there ({reason}); "
                      f"start one with `ray start --head`, or leave --address out for a local Ray")


def check_address(address: Optional[str]) -> None:
    """Refuse a Ray Client address, and a host:port where nothing listens, in seconds rather than after
    Ray's own connection timeout of minutes. "auto" is left to Ray."""
    if address is None:
        return
    if address.startswith("ray://"):
        raise StudyError(f"--address {address}: Ray Client (ray://) is not supported, since Tune's driver must "
                         f"run inside the cluster; run study.run on a node of it with --address HEAD_IP:6379")
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise no_cluster(address, exc.strerror or str(exc)) from None


def token_refusal(exc: BaseException) -> Optional[str]:
    """Why the cluster refused this driver's token, if that is what `exc` comes from. A driver without a
    token gets an AuthenticationError; one with another token gets a ConnectionError ("Failed to connect
    to Ray cluster") caused by a RuntimeError whose text holds the AuthenticationError's traceback."""
    import ray

    link: BaseException | None = exc
    for _ in range(8):  # the chain is short; bounded all the same
        if link is None:
            return None
        if isinstance(link, ray.exceptions.AuthenticationError):
            text = link.message
        else:
            quoted = re.search(r"^ray\.exceptions\.AuthenticationError: (.*)$", str(link), re.M)
            text = quoted.group(1) if quoted else ""
        if text:
            return first_line(text).split(". ")[0]  # then Ray's advice on where tokens live, which ours replaces
        link = link.__cause__ or link.__context__
    return None


NODES_WAIT_S = 300  # how long a joining driver waits for the nodes it was told of (`ray start` takes seconds)


def wait_for_nodes(nodes: int, address: str) -> None:
    """Until `nodes` Ray nodes are alive: a job that starts its nodes and its driver at once (study.submit's
    script) would otherwise start the trials on the first node alone, or refuse them for want of CPUs."""
    import ray

    deadline = time.monotonic() + NODES_WAIT_S
    while (alive := sum(n["Alive"] for n in ray.nodes())) < nodes:
        if time.monotonic() > deadline:
            ray.shutdown()
            raise StudyError(f"--wait-for-nodes {nodes}: only {alive} Ray node(s) joined {address} in "
                             f"{NODES_WAIT_S} s; see the nodes' `ray start` output")
        time.sleep(1)


ORPHAN_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # what a local Ray leaves when its driver is killed


def orphaned_ray_agents() -> list[int]:
    """This user's Ray agents whose raylet is gone: a local Ray's driver SIGKILLed takes its raylet with it, but its
    DashboardAgent and RuntimeEnvAgent live on, ignoring SIGTERM. An agent names its raylet in its environment
    (RAY_RAYLET_PID); one of a raylet that runs, whoever started it, is left alone."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry.path).st_uid != os.getuid():
                continue
            with open(f"{entry.path}/cmdline", "rb") as f:
                name = f.read().split(b"\0")[0].decode(errors="replace").strip()
            if name not in ORPHAN_AGENTS:
                continue
            with open(f"{entry.path}/environ", "rb") as f:
                raylet = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v).get(b"RAY_RAYLET_PID")
        except OSError:  # ended while read, or not ours to read
            continue
        if raylet and raylet.isdigit() and not os.path.exists(f"/proc/{int(raylet)}"):
            found.append(int(entry.name))
    return found


def stop_orphaned_ray_agents() -> None:
    """Stop (SIGKILL: they ignore SIGTERM) the Ray agents an earlier driver killed outright left, saying so."""
    stopped = 0
    for pid in orphaned_ray_agents():
        try:
            os.kill(pid, signal.SIGKILL)
            stopped += 1
        except OSError:
            continue
    if stopped:
        print(f"stopped {stopped} Ray agent process(es) that a killed driver's Ray left running (their raylet is gone)")


def start_ray(address: Optional[str], verbose: bool = False, code: Sequence[str] = ()) -> None:
    """Join `address`, else start Ray on this machine (then `cluster_ready`). `code`: the files and package
    folders of the study's own network and data set, which Ray ships to every worker (runtime_env `py_modules`:
    on a node without them, and on this one, whose workers run in folders of their own, they are importable).

    A local Ray cannot be confined to 127.0.0.1: Ray 2.60 binds its servers to every interface and
    resolves a loopback node address to the routable one. Token authentication (on by default) is
    what keeps other hosts out; the dashboard stays off. Unless `verbose`, Ray's warnings (that token
    authentication is on, that a callback took a while) and the trials' own output stay off the terminal:
    what a trial has to say reaches its run and the progress lines.
    """
    import ray

    if address is None and os.path.isdir("/proc"):
        stop_orphaned_ray_agents()
    try:
        # "local", not None: None joins the cluster that `ray start` last recorded in /tmp/ray on this machine, or
        # waits minutes for it when it has gone
        ray.init(address=address or "local", include_dashboard=False, logging_level="WARNING" if verbose else "ERROR",
                 log_to_driver=verbose, runtime_env={"py_modules": list(code)} if code else None)
    except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
        refused = token_refusal(exc)
        if refused is None:
            raise no_cluster(address, first_line(str(exc))) from None
        raise StudyError(f"--address {address}: the Ray cluster refused this driver's token "
                         f"({refused}); copy the head node's ~/.ray/auth_token here "
                         f"or set RAY_AUTH_TOKEN") from None


def cluster_ready(address: Optional[str], resources, nodes: int = 1) -> None:
    """Once `nodes` nodes are alive in the cluster joined, fail early on resources it lacks."""
    import ray

    if address is not None:
        wait_for_nodes(nodes, address)
    total = ray.cluster_resources()
    if resources.gpu > total.get("GPU", 0):
        ray.shutdown()
        raise StudyError(f"resources.gpu: {resources.gpu} per trial, but the Ray cluster has "
                         f"{total.get('GPU', 0):g} GPUs; set resources.gpu: 0 or join a cluster with GPUs")
    if resources.cpu > total.get("CPU", 0):
        ray.shutdown()
        raise StudyError(f"resources.cpu: {resources.cpu} per trial, but the Ray cluster has "
                         f"{total.get('CPU', 0):g} CPUs; lower resources.cpu")
