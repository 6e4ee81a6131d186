"""A real Slurm for tests: its own munged, slurmctld and slurmd (Debian's slurm-wlm and munge, which `.ci/run`
installs), one node, this host, on 127.0.0.1, every file and socket in a folder of the test's. Root only: slurmd
runs jobs as their users, and munged must run as the munge user (runuser)."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.studies import free_port, wait_for

REQUEUE_DELAY_S = 10  # a requeued job waits this long (cred_expire; Slurm's default 120 s) before it starts again


def slurm_conf(root: Path, munge_socket: Path) -> str:
    host = socket.gethostname()
    return f"""ClusterName=isnmtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire={REQUEUE_DELAY_S}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=3600
KillWait=10
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class Slurm:
    """munged, slurmctld and slurmd on this host; `env` is what sbatch, squeue and scontrol need (SLURM_CONF)."""

    def __init__(self):
        # not under pytest's folders, which only root may enter: munged runs as the munge user
        self.root = root = Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp"))
        root.chmod(0o755)
        munge = root / "munge"  # munged wants its socket's folder its own, and not writable by others
        for folder in (munge, root / "state", root / "spool"):
            folder.mkdir(parents=True)
        shutil.chown(munge, "munge", "munge")
        munge.chmod(0o755)
        self.munge_socket = munge / "munge.sock"
        self.conf = root / "slurm.conf"
        self.conf.write_text(slurm_conf(root, self.munge_socket))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pid_files = [munge / "munged.pid", root / "slurmctld.pid", root / "slurmd.pid"]

    def start(self) -> None:
        missing = [p for p in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged") if not Path(p).exists()]
        assert not missing, f"{', '.join(missing)} missing: install Debian's slurm-wlm and munge (.ci/run does)"
        munge = self.munge_socket.parent
        as_munge = ["runuser", "-u", "munge", "--"]
        subprocess.run([*as_munge, "mungekey", "--create", "--keyfile", str(munge / "munge.key")], check=True)
        subprocess.run([*as_munge, "munged", f"--socket={self.munge_socket}", f"--key-file={munge / 'munge.key'}",
                        f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                        f"--seed-file={munge / 'munged.seed'}"], check=True)
        for daemon in ("slurmctld", "slurmd"):  # each forks into the background once it is up
            subprocess.run([f"/usr/sbin/{daemon}", "-f", str(self.conf)], env=self.env, check=True, timeout=60)
        wait_for(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T"), 60, "the Slurm node to be idle")

    def run(self, *command: str) -> str:
        """A Slurm command's output (sbatch, squeue, scontrol ...) against this Slurm."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60).stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job`'s fields (JobState, Restarts, ...); jobs stay listed for an hour after they end."""
        fields = self.run("scontrol", "show", "job", "-o", job_id).split()
        return dict(field.split("=", 1) for field in fields if "=" in field)

    def stop(self) -> None:
        for pid_file in reversed(self.pid_files):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except (OSError, ValueError):
                pass  # never started, or already gone
        shutil.rmtree(self.root, ignore_errors=True)
