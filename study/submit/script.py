"""The sbatch script of a study (job.sh, filled in): a Ray cluster made of the job's nodes, `study.run` against it, and the job's time
limit handled as a pause: the study stops cleanly before it, the job requeues itself, the next allocation resumes.

The script is the product here, not a detail: a user reads it, edits it and submits it again by hand, so it is
plain bash, one step per paragraph, each saying why.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from study.errors import StudyError

# what the script's driver exits with: done; stopped by a signal (study.run's code)
FINISHED, INTERRUPTED = 0, 130
SLURM_TIME = re.compile(r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                        r"|(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)|(?P<mm>\d+)(?::(?P<ss>\d+))?)$")


def time_limit_seconds(text: str) -> int:
    """Seconds in a Slurm time limit, in each of the forms sbatch takes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = SLURM_TIME.fullmatch(text)  # not .match: its $ passes a trailing newline
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


TEMPLATE = Path(__file__).with_name("job.sh")
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def filled(template: str, values: dict[str, object]) -> str:
    """`template` with each {{name}} replaced by values[name]; a name without a value, or a value without its
    name, is an error in this module, not the user's."""
    names = set(PLACEHOLDER.findall(template))
    if names != set(values):
        raise ValueError(f"{TEMPLATE.name}: placeholders {sorted(names)}, values for {sorted(values)}")
    return PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), template)


def script(job: SlurmJob, path: str) -> str:
    """The sbatch script of `job`, to be written at `path`: job.sh, filled in. Paths and the tracking URI go in
    shell-quoted; the #SBATCH values are study.submit's to check (no newline, no control character)."""
    q = shlex.quote
    return filled(TEMPLATE.read_text(), {
        "name": job.name, "path": path, "sbatch_lines": "\n".join(sbatch_lines(job)),
        "max_requeues": job.max_requeues, "activate": job.activate, "folder": q(job.folder),
        "gpus_per_node": job.gpus_per_node,
        "srun_gres": f" --gres=gpu:{job.gpus_per_node}" if job.gpus_per_node else "",
        "study": q(job.study_file), "profile_option": f" --profile {q(job.profile)}" if job.profile else "",
        "storage": q(job.storage), "tracking_uri": q(job.tracking_uri),
        "finished": FINISHED, "interrupted": INTERRUPTED})
