"""A Slurm cluster for the tests: the machine's own where a controller answers, else a one-node
cluster started here (Debian's ``slurm-wlm`` and ``munge``: ``apt-get install -y slurm-wlm
munge``).

The one-node cluster lives in a fresh folder under /tmp: its own munge key and socket, its own
``slurm.conf`` (``SLURM_CONF``) and ports, ``SlurmUser=root``, ``ProctrackType=
proctrack/linuxproc``, ``TaskPlugin=task/none``, no GRES (no GPUs), and as many CPUs as the
test asks for (``SlurmdParameters=config_overrides``: the node claims them whatever the machine
has). ``munged``, ``slurmctld`` and ``slurmd`` are started by hand (no systemd) and stopped by
``Cluster.stop`` (by their pids), so nothing outside that folder changes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS = ("sbatch", "scontrol", "scancel", "squeue", "munged", "slurmctld", "slurmd")
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


class Unavailable(Exception):
    """No cluster can be had here; the message says why."""


def missing() -> str | None:
    """Why no cluster can be had here (None: the packages are installed)."""
    absent = [c for c in COMMANDS if shutil.which(c, path=PATH) is None]
    if absent:
        return (f"Slurm is not installed ({', '.join(absent)} not found): "
                "apt-get install -y slurm-wlm munge")
    return None


@dataclass
class Cluster:
    env: dict[str, str]
    """What Slurm's commands need in their environment to reach this cluster."""
    folder: Path | None = None
    """The one-node cluster's folder (None: the machine's own cluster, left alone)."""
    pids: list[int] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """A Slurm command, in ``env`` (default: this process's environment) and ``cwd``."""
        r = subprocess.run(argv, env={**(os.environ if env is None else env), "PATH": PATH,
                                      **self.env},
                           cwd=cwd, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def logs(self) -> str:
        if self.folder is None:
            return ""
        return "\n".join(f"--- {p.name} (end)\n" + "\n".join(p.read_text().splitlines()[-15:])
                         for p in sorted(self.folder.glob("*.log")))

    def stop(self) -> None:
        """End the daemons this started (slurmd, slurmctld, munged) and remove its folder."""
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        for pid in self.pids:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def answers(env: dict[str, str]) -> bool:
    """Whether a Slurm controller answers ``scontrol ping`` in this environment."""
    try:
        r = subprocess.run(["scontrol", "ping"], env={**os.environ, "PATH": PATH, **env},
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "is UP" in r.stdout


def cluster(cpus: int) -> Cluster:
    """The machine's cluster if its controller answers, else a one-node cluster with ``cpus``
    CPUs started here (its daemons run as root: SlurmUser=root)."""
    if answers({}):
        return Cluster(env={})
    if os.geteuid() != 0:
        raise Unavailable("no Slurm controller answers, and starting one here needs root "
                          "(SlurmUser=root)")
    return start(cpus)


def start(cpus: int) -> Cluster:
    folder = Path(tempfile.mkdtemp(prefix="hpo-slurm-"))
    folder.chmod(0o755)  # munged wants its socket's folder searchable by everyone
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]  # slurmd finds its node by `hostname -s`
    ctld_port, node_port = _free_port(), _free_port()
    conf = folder / "slurm.conf"
    conf.write_text(f"""\
ClusterName=hpotest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=hpo Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {"SLURM_CONF": str(conf)}
    started = Cluster(env=env, folder=folder)
    daemon_env = {"PATH": PATH, **env}
    try:
        subprocess.run([shutil.which("munged", path=PATH), f"--key-file={key}",
                        f"--socket={folder}/munge.socket", f"--pid-file={folder}/munged.pid",
                        f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed"],
                       env=daemon_env, check=True, capture_output=True, timeout=30)
        started.pids.append(_pid(folder / "munged.pid"))
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([shutil.which(daemon, path=PATH)], env=daemon_env, check=True,
                           capture_output=True, timeout=30)
            started.pids.append(_pid(folder / f"{daemon}.pid"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = started.run("sinfo", "-h", "-o", "%T", check=False)
            if r.returncode == 0 and r.stdout.strip() == "idle":
                return started
            time.sleep(0.5)
        raise RuntimeError("the one-node Slurm cluster did not come up within 60s")
    except Exception as e:
        logs = started.logs()
        started.stop()
        raise RuntimeError(f"starting a one-node Slurm cluster failed: {e}\n{logs}") from e


def _pid(path: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    raise RuntimeError(f"{path} was not written")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
