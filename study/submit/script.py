"""The sbatch script of a study: a Ray cluster made of the job's nodes, `study.run` against it, and the job's time
limit handled as a pause: the study stops cleanly before it, the job requeues itself, the next allocation resumes.

The script is the product here, not a detail: a user reads it, edits it and submits it again by hand, so it is
plain bash, one step per paragraph, each saying why.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Optional

from study.errors import StudyError

# what the script's driver exits with: done; stopped by a signal (study.run's code)
FINISHED, INTERRUPTED = 0, 130
SLURM_TIME = re.compile(r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                        r"|(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)|(?P<mm>\d+)(?::(?P<ss>\d+))?)$")


def time_limit_seconds(text: str) -> int:
    """Seconds in a Slurm time limit, in each of the forms sbatch takes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = SLURM_TIME.match(text.strip())
    if match is None:
        raise StudyError(f"--time: got {text!r}, expected a Slurm time limit such as 24:00:00, 2-00:00:00 or 90 "
                         f"(minutes)")
    n = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if "d" in n:
        return ((n["d"] * 24 + n["dh"]) * 60 + n.get("dm", 0)) * 60 + n.get("ds", 0)
    if "h" in n:
        return (n["h"] * 60 + n["m"]) * 60 + n["s"]
    return n["mm"] * 60 + n.get("ss", 0)


@dataclass(frozen=True)
class SlurmJob:
    """Everything the script says, decided by study.submit: absolute paths, so the job runs the same from any
    folder."""
    name: str  # Slurm's job name, and the stem of the script's and the log's file names
    study_file: str
    profile: Optional[str]
    workdir: str  # where study.submit ran: the study file's relative paths (data_dir) mean the same in the job
    activate: str  # the line that puts study.submit's Python first on PATH
    storage: str
    tracking_uri: str
    folder: str  # where the script and its logs go
    nodes: int
    gpus_per_node: int
    cpus_per_node: int
    time: str
    stop_before: int  # seconds before the time limit that Slurm warns the script (USR1)
    max_requeues: int
    partition: Optional[str] = None
    account: Optional[str] = None
    sbatch_args: tuple[str, ...] = ()

    @property
    def log(self) -> str:
        """Slurm's output file, %j the job id; appended to over the requeues."""
        return f"{self.folder}/{self.name}-%j.log"


def sbatch_lines(job: SlurmJob) -> list[str]:
    """The #SBATCH lines, the comments between them saying why (sbatch reads these until the first command)."""
    options = [f"--job-name={job.name}", f"--nodes={job.nodes}", "--ntasks-per-node=1",
               f"--cpus-per-task={job.cpus_per_node}"]
    if job.gpus_per_node:
        options.append(f"--gres=gpu:{job.gpus_per_node}")
    options += [f"--time={job.time}"] + [f"--partition={job.partition}"] * bool(job.partition)
    options += [f"--account={job.account}"] * bool(job.account)
    lines = [f"#SBATCH {option}" for option in options]
    lines += [f"# the time limit's warning, {job.stop_before} s before it, to this script: stop the study, requeue",
              f"#SBATCH --signal=B:USR1@{job.stop_before}",
              "# a node failure requeues the job too; its log grows over the requeues",
              "#SBATCH --requeue", "#SBATCH --open-mode=append", f"#SBATCH --output={job.log}",
              f"#SBATCH --chdir={job.workdir}"]
    return lines + [f"#SBATCH {arg}" for arg in job.sbatch_args]


def script(job: SlurmJob, path: str) -> str:
    """The sbatch script of `job`, to be written at `path`."""
    q = shlex.quote
    profile = f" --profile {q(job.profile)}" if job.profile else ""
    srun_gres = f" --gres=gpu:{job.gpus_per_node}" if job.gpus_per_node else ""
    return f"""#!/bin/bash
# {job.name}: `python -m study.run` on a Ray cluster made of this job's nodes. Written by `python -m study.submit`;
# plain bash: edit it as you need, and `sbatch {path}` submits it again.
{chr(10).join(sbatch_lines(job))}

# After the time limit's warning the script requeues the job, at most this often; the next allocation resumes.
MAX_REQUEUES={job.max_requeues}
# The warning may come at any moment, also before the study starts; scancel sends TERM to every process of the job.
stopped_by="" driver="" traps=0
trap 'stopped_by="the time limit"; traps=$((traps + 1)); echo "$(date "+%F %T") the time limit is near: stopping the study"
      [ -n "$driver" ] && kill -TERM "$driver"' USR1
trap 'stopped_by="scancel"; traps=$((traps + 1))' TERM

# The environment study.submit ran in; change this line where the nodes see it elsewhere.
{job.activate}

# A Ray cluster of this job's nodes: the head here (the first node), a worker on every other, each at the address
# Slurm reaches it by. A port, a token and a temp folder of this job's own, so that jobs sharing a node never meet.
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(16))')
export RAY_AUTH_TOKEN
node_ip() {{ getent ahostsv4 "$(scontrol show node "$1" | grep -oP 'NodeAddr=\\K\\S+')" | awk 'NR == 1 {{print $1}}'; }}
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_ip=$(node_ip "${{nodes[0]}}")
if [ "${{#nodes[@]}}" -gt 1 ] && [[ "$head_ip" == 127.* ]]; then
    echo "the head node ${{nodes[0]}} resolves to $head_ip, which other nodes cannot reach: set head_ip in this script"
    exit 1
fi
port=$((20000 + SLURM_JOB_ID % 40000))
ray_log={q(job.folder)}/{job.name}-"$SLURM_JOB_ID".ray.log  # Ray's own output, apart from the study's
ray_tmp=/tmp/ray-"$SLURM_JOB_ID"  # not /tmp/ray, which another user's Ray may own, and where ray.init() looks
ray start --head --block --node-ip-address="$head_ip" --port="$port" --num-cpus="$SLURM_CPUS_ON_NODE" \\
    --num-gpus={job.gpus_per_node} --temp-dir="$ray_tmp" --include-dashboard=false --disable-usage-stats \\
    >> "$ray_log" 2>&1 &
ray_head=$!  # --block keeps Ray's processes children of this script, which the job's end stops
for _ in $(seq 120); do  # until the head listens, two minutes at most
    (exec 3<>"/dev/tcp/$head_ip/$port") 2>/dev/null && break
    kill -0 $ray_head 2>/dev/null || {{ echo "ray start failed: see $ray_log"; exit 1; }}
    sleep 1
done
for node in "${{nodes[@]:1}}"; do  # each worker counts its own node's CPUs
    srun --nodes=1 --ntasks=1 --nodelist="$node" --cpus-per-task="$SLURM_CPUS_PER_TASK"{srun_gres} bash -c \\
        "exec ray start --block --address=$head_ip:$port --node-ip-address=$(node_ip "$node") \\
         --num-cpus=\\$SLURM_CPUS_ON_NODE --num-gpus={job.gpus_per_node} --temp-dir=$ray_tmp --disable-usage-stats" \\
        >> "$ray_log" 2>&1 &
done
echo "$(date "+%F %T") job $SLURM_JOB_ID, restart ${{SLURM_RESTART_COUNT:-0}}: Ray on ${{#nodes[@]}} node(s), head $head_ip:$port"

# The study. The same command resumes it: from its trials' last checkpoints, each trial in its own MLflow run.
code={INTERRUPTED}
if [ -z "$stopped_by" ]; then
    python -m study.run {q(job.study_file)}{profile} --address "$head_ip:$port" --wait-for-nodes "${{#nodes[@]}}" \\
        --storage {q(job.storage)} --tracking-uri {q(job.tracking_uri)} &
    driver=$!
    [ -n "$stopped_by" ] && kill -TERM "$driver"
    while :; do  # a trap cuts `wait` short (status > 128) while the driver runs on: wait again
        before=$traps
        wait "$driver"; status=$?
        [ "$status" = 127 ] && break  # collected already: its status is in code
        code=$status
        [ "$traps" = "$before" ] && break
    done
fi
kill $ray_head 2>/dev/null

# Stopped after the time limit's warning, it requeues, whatever the driver's status says of the stop (130: stopped
# as asked; 143 or 15: by SIGTERM before study.run could catch it), unless it finished (0), was given a mistake
# (2) or had trials fail (1).
restarts=${{SLURM_RESTART_COUNT:-0}}
if [ "$code" = {FINISHED} ]; then
    echo "$(date "+%F %T") the study is finished (job $SLURM_JOB_ID, restart $restarts)"
elif [ "$stopped_by" = "the time limit" ] && [ "$code" != 1 ] && [ "$code" != 2 ] && [ "$restarts" -lt "$MAX_REQUEUES" ]; then
    echo "$(date "+%F %T") requeued (restart $((restarts + 1)) of at most $MAX_REQUEUES): the next allocation resumes the study"
    scontrol requeue "$SLURM_JOB_ID"
elif [ "$stopped_by" = "the time limit" ] && [ "$code" != 1 ] && [ "$code" != 2 ]; then
    echo "$(date "+%F %T") not requeued: requeued $MAX_REQUEUES times already (MAX_REQUEUES); sbatch resumes it"
    exit 1
else
    echo "$(date "+%F %T") not requeued: study.run exited with $code${{stopped_by:+ (stopped by $stopped_by)}}"
    exit "$code"
fi
"""
