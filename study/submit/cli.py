"""`python -m study.submit FILE --slurm`: run a study as a Slurm job, which outlives the job's time limit: it
stops cleanly before the limit, requeues itself, and the next allocation resumes it (docs/clusters.md)."""
from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from study.errors import StudyError, user_error_exit
from study.design.config import Study
from study.design.load import load_study
from study.tracking.pbt import schedules_in
from study.design.plan import check_data_of, plan_trials
from study.submit.script import SlurmJob, script, time_limit_seconds

STOP_BEFORE_S = 300  # Slurm may warn up to a minute early; a trial loses at most the epoch it is in
MAX_REQUEUES = 10  # a Table 1 study (200 epochs a trial) needs several 24 h jobs; a loop needs fewer than this to show
CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # newlines among them
# file systems on which sqlite's locking is unsafe (sqlite.org/lockingv3.html#how_to_corrupt)
NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "fuse.sshfs", "glusterfs",
              "fuse.glusterfs", "fuse.beegfs", "panfs", "wekafs"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.submit", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("file", help="study file (YAML), e.g. search_spaces/ablation.yaml")
    parser.add_argument("--slurm", action="store_true", help="submit to Slurm with sbatch (the one scheduler so far)")
    parser.add_argument("--profile", help="named overlay from the file's profiles:")
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the job, a Ray node each (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=0, metavar="G", help="GPUs of each node: --gres=gpu:G")
    parser.add_argument("--cpus-per-node", type=int, metavar="C",
                        help="CPUs of each node (default: what the trials that fill its GPUs ask for, else one trial's)")
    parser.add_argument("--time", default="24:00:00", help="the job's time limit, as sbatch takes it (default 24:00:00)")
    parser.add_argument("--stop-before", type=int, default=STOP_BEFORE_S, metavar="SECONDS",
                        help=f"stop the study this long before the time limit, then requeue (default {STOP_BEFORE_S})")
    parser.add_argument("--max-requeues", type=int, default=MAX_REQUEUES, metavar="N",
                        help=f"requeue after a time limit at most N times (default {MAX_REQUEUES})")
    parser.add_argument("--partition", help="Slurm partition")
    parser.add_argument("--account", help="Slurm account")
    parser.add_argument("--sbatch-arg", action="append", default=[], metavar="OPTION",
                        help="another sbatch option, e.g. --sbatch-arg=--qos=high (repeat for more)")
    parser.add_argument("--storage", default="./ray_results",
                        help="Ray results and checkpoints, on disk every node reaches (default ./ray_results); the "
                             "script and its log go in its slurm/ folder")
    parser.add_argument("--tracking-uri", help="MLflow store: a team server, or sqlite on shared disk (default: "
                                               "MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    return parser.parse_args(argv)


def activate_line() -> str:
    """The line that gives the job this Python: its virtual environment, else its folder first on PATH."""
    if sys.prefix != sys.base_prefix:
        return f"source {shlex.quote(sys.prefix)}/bin/activate"
    return f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"'


def file_system(path: Path) -> str:
    """The type of the file system `path` lies on (the longest mount point above it), from /proc/mounts."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and (str(path) + "/").startswith(fields[1].rstrip("/") + "/") and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind


def absolute_uri(uri: str) -> str:
    """A sqlite store's file as an absolute path: the job may start in another folder (a user's edit, --chdir)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def check_resources(study: Study, args: argparse.Namespace) -> None:
    gpu, cpu = study.spec.resources.gpu, study.spec.resources.cpu
    if gpu > 0 and args.gpus_per_node < gpu:
        raise StudyError(f"{study.path}: resources.gpu: {gpu:g} per trial, but --gpus-per-node {args.gpus_per_node}; "
                         f"pass --gpus-per-node {max(1, int(gpu + 0.999))} or more")
    if gpu == 0 and args.gpus_per_node:
        raise StudyError(f"--gpus-per-node {args.gpus_per_node}: {study.path} asks for no GPUs (resources.gpu: 0), so "
                         f"they would sit idle; set resources.gpu, or leave --gpus-per-node out")
    if args.cpus_per_node is not None and args.cpus_per_node < max(cpu, 1):
        raise StudyError(f"--cpus-per-node {args.cpus_per_node}: {study.path} asks for resources.cpu: {cpu:g} per trial")


def cpus_per_node(study: Study, args: argparse.Namespace) -> int:
    """--cpus-per-node, else the CPUs of as many trials as the node's GPUs take at once (one trial's without GPUs):
    Slurm's own default, one CPU a task, would leave Ray a CPU a node."""
    if args.cpus_per_node is not None:
        return args.cpus_per_node
    cpu, gpu = study.spec.resources.cpu, study.spec.resources.gpu
    trials = int(args.gpus_per_node / gpu) if gpu else 1
    return max(1, math.ceil(trials * cpu))


def check_header_values(args: argparse.Namespace) -> None:
    """StudyError for a value that would not stay within its #SBATCH line: a newline ends the line, and what
    follows runs as a command (or ends the header, so that sbatch ignores the lines after it); a space splits it."""
    values = [("--partition", args.partition), ("--account", args.account), ("--time", args.time),
              *(("--sbatch-arg", arg) for arg in args.sbatch_arg)]
    for flag, value in values:
        if value is None:
            continue
        if CONTROL.search(value):
            raise StudyError(f"{flag}: got {value!r}, expected a value without newlines or control characters")
        if flag != "--sbatch-arg" and " " in value:
            raise StudyError(f"{flag}: got {value!r}, expected a value without spaces")


def job_for(study: Study, args: argparse.Namespace) -> tuple[SlurmJob, Path]:
    """The job `args` asks for, and where its script goes; StudyError for what Slurm would refuse or a study
    cannot use."""
    from study.tracking.store import tracking_uri

    if args.nodes < 1 or args.max_requeues < 0 or args.stop_before < 1:
        wrong = ("--nodes", args.nodes, ">= 1") if args.nodes < 1 else (
            ("--max-requeues", args.max_requeues, ">= 0") if args.max_requeues < 0 else
            ("--stop-before", args.stop_before, ">= 1 (seconds)"))
        raise StudyError(f"{wrong[0]}: got {wrong[1]}, expected an integer {wrong[2]}")
    check_header_values(args)
    limit = time_limit_seconds(args.time)
    if args.stop_before >= limit:
        raise StudyError(f"--stop-before: {args.stop_before} s, not shorter than --time {args.time} ({limit} s): the "
                         f"study would stop before it started")
    for arg in args.sbatch_arg:
        if not arg.startswith("-"):
            raise StudyError(f"--sbatch-arg: got {arg!r}, expected an sbatch option such as --qos=high")
    check_resources(study, args)
    if "://" in args.storage and not args.storage.startswith("file://"):
        folder = Path("slurm").resolve()  # an object store: the script and the log stay here, on the login node
        storage = args.storage
    else:
        storage = str(Path(args.storage.removeprefix("file://")).expanduser().resolve())
        folder = Path(storage) / "slurm"
    for where in (str(folder), os.getcwd()):  # #SBATCH lines take no quotes, and read % as a pattern
        if re.search(r"[\s%]", where):
            raise StudyError(f"--storage: {where!r} holds a space or %, which an #SBATCH line cannot carry; use a "
                             f"path without them")
    uri = absolute_uri(tracking_uri(args.tracking_uri))
    if re.match(r"^\w+(\+\w+)?://(localhost|127\.[\d.]+|\[::1\])(:\d+)?(/|$)", uri):
        raise StudyError(f"--tracking-uri {uri}: the job's nodes would reach their own loopback, not this host; give "
                         f"the server's name on the cluster's network")
    name = f"isnm-{study.name}" + (f"-{study.profile}" if study.profile else "")
    job = SlurmJob(name=name, study_file=str(Path(args.file).resolve()), profile=study.profile,
                   workdir=os.getcwd(), activate=activate_line(), storage=storage,
                   tracking_uri=uri, folder=str(folder),
                   nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_node=cpus_per_node(study, args),
                   time=args.time, stop_before=args.stop_before, max_requeues=args.max_requeues,
                   partition=args.partition, account=args.account, sbatch_args=tuple(args.sbatch_arg))
    return job, folder / f"{name}.sbatch"


def sqlite_warning(uri: str) -> Optional[str]:
    """Why a sqlite store is unsafe where it lies, if it is: sqlite's locks fail on network file systems."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):])
    kind = file_system(path.parent if path.parent.exists() else Path.cwd())
    if kind in NETWORK_FS:
        return (f"warning: the tracking store {path} lies on {kind}, a network file system, where sqlite's locking is "
                f"unsafe; a team server is safer (docs/clusters.md, 'A team tracking server')")
    return None


def submitted(path: Path) -> str:
    """sbatch's job id for the script at `path`."""
    done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, timeout=120)
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    if done.returncode != 0 or not done.stdout.strip():
        raise StudyError(f"sbatch {path}: {said[-1] if said else f'exit {done.returncode}, no job id'}")
    return done.stdout.strip().split(";")[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not args.slurm:
            raise StudyError("expected --slurm: Slurm is the one scheduler study.submit knows (for a Ray cluster, run "
                             "study.run --address on one of its nodes: docs/clusters.md)")
        study = load_study(args.file, args.profile, schedules_in(args.tracking_uri))
        job, path = job_for(study, args)
        text = script(job, str(path))
        if args.dry_run:
            print(text, end="")
            return 0
        if shutil.which("sbatch") is None:
            raise StudyError("sbatch: not found; run study.submit on a Slurm login node, or --dry-run to see the script")
        warning = sqlite_warning(job.tracking_uri)
        if warning:
            print(warning, file=sys.stderr)
        # CIFAR fetched here, on the login node: compute nodes often have no internet
        check_data_of(study, plan_trials(study) if study.spec.search is None else [])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        job_id = submitted(path)
        print(f"{study.name}: Slurm job {job_id} submitted at {time.strftime('%H:%M')} ({job.nodes} node(s), "
              f"{job.time} each time, requeued at most {job.max_requeues} times)\n"
              f"  script  {path}\n  log     {job.log.replace('%j', job_id)}\n"
              f"  status  python -m study.status {study.name} --tracking-uri {job.tracking_uri}")
        return 0
    except Exception as exc:
        return user_error_exit(exc)
