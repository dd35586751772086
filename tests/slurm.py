"""A throwaway single-node SLURM cluster on 127.0.0.1 for the test of the SLURM executor profile.

It uses the machine's own binaries (Debian's `slurmctld slurmd slurmdbd slurm-client munge mariadb-server`;
`.ci/run` installs them when missing), every config, socket, log and state file in one temporary folder:
munged with its own key, MariaDB without grant tables as slurmdbd's store (the executor plugin polls job
states with `sacct`, which needs accounting), slurmdbd, slurmctld and one slurmd node named `mdrnode`
with this machine's cores. Clients find it through $SLURM_CONF (`Cluster.env`). No cgroups (containers):
proctrack/linuxproc and task/none. Every daemon is stopped, and the folder removed, by `stop()`.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.postgres import free_port

NEEDED = {
    "munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "slurmdbd": "slurmdbd",
    "sbatch": "slurm-client", "sacct": "slurm-client", "srun": "slurm-client", "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
}
SBIN = ("/usr/sbin", "/usr/bin")
NODE = "mdrnode"


class Unavailable(Exception):
    """No SLURM cluster can be started here; the message says what to install."""


def binary(name: str) -> str:
    found = shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)
    if not found:
        raise FileNotFoundError(name)
    return found


def check_binaries() -> dict[str, str]:
    missing = sorted({pkg for name, pkg in NEEDED.items() if not _has(name)})
    if missing:
        raise Unavailable(f"no SLURM test cluster: install {' '.join(missing)} (`apt-get install slurmctld slurmd "
                          "slurmdbd slurm-client munge mariadb-server`; .ci/run does, as root)")
    if os.geteuid() != 0:
        raise Unavailable("the throwaway SLURM cluster runs its daemons as root (slurmd must start jobs); "
                          "run this test as root, as .ci/run does")
    return {name: binary(name) for name in NEEDED}


def _has(name: str) -> bool:
    try:
        binary(name)
        return True
    except FileNotFoundError:
        return False


@dataclass
class Cluster:
    folder: Path
    bins: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """What a SLURM client (sbatch, sacct, snakemake's plugin) needs to reach this cluster. The jobstep
        plugin drops SLURM_CONF before its srun inside a job (a real cluster's config is in /etc/slurm), so
        PATH leads first to an srun that sets it again."""
        return {"SLURM_CONF": str(self.folder / "slurm.conf"), "PATH": f"{self.folder / 'bin'}:{os.environ['PATH']}"}

    def client(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env={**os.environ, **self.env})
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def _daemon(self, name: str, *args: str) -> None:
        log = open(self.folder / f"{name}.out", "w")
        self.procs.append(subprocess.Popen([self.bins[name], *args], stdout=log, stderr=subprocess.STDOUT,
                                           env={**os.environ, **self.env}, start_new_session=True))

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0].args[0]} exited with {dead[0].returncode} while waiting for {what}:\n"
                                   + self.logs())
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(self.folder.glob("*.log"))
                         + sorted(self.folder.glob("*.out")))

    def start(self) -> "Cluster":
        f = self.folder
        user = getpass.getuser()
        host = socket.gethostname().split(".")[0]
        ports = {k: free_port() for k in ("db", "dbd", "ctld", "slurmd")}
        cpus = os.cpu_count() or 1
        # munge: its own key and socket; every SLURM component is pointed at the socket
        (f / "munge").mkdir(mode=0o755)
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge_socket = f / "munge" / "munge.socket"
        self._daemon("munged", "-F", "--force", f"--key-file={key}", f"--socket={munge_socket}",
                     f"--pid-file={f / 'munge' / 'munged.pid'}", f"--log-file={f / 'munged.log'}",
                     f"--seed-file={f / 'munge' / 'munged.seed'}")
        self._wait("munged", munge_socket.exists)
        # MariaDB without grant tables: slurmdbd creates its database on first start
        subprocess.run([self.bins["mariadb-install-db"], f"--datadir={f / 'db'}", "--user=root", "--auth-root-authentication-method=normal",
                        "--skip-test-db"], capture_output=True, text=True, check=True, timeout=120)
        self._daemon("mariadbd", "--no-defaults", f"--datadir={f / 'db'}", f"--socket={f / 'db.sock'}", "--user=root",
                     "--bind-address=127.0.0.1", f"--port={ports['db']}", "--skip-grant-tables", "--skip-name-resolve",
                     f"--pid-file={f / 'db.pid'}", f"--log-error={f / 'mariadb.log'}", "--innodb-flush-log-at-trx-commit=0")
        self._wait("MariaDB", lambda: _listening(ports["db"]))
        auth = f"AuthType=auth/munge\nAuthInfo=socket={munge_socket}\n"
        dbd_conf = f / "slurmdbd.conf"
        dbd_conf.write_text(
            f"{auth}DbdHost={host}\nDbdAddr=127.0.0.1\nDbdPort={ports['dbd']}\nSlurmUser={user}\n"
            f"PidFile={f / 'slurmdbd.pid'}\nLogFile={f / 'slurmdbd.log'}\nDebugLevel=info\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={ports['db']}\n"
            f"StorageUser={user}\nStoragePass=none\nStorageLoc=slurm_acct_db\n")
        dbd_conf.chmod(0o600)  # slurmdbd refuses a readable config (it holds the database password)
        (f / "bin").mkdir()
        (f / "bin" / "srun").write_text(f"#!/bin/sh\nSLURM_CONF={f / 'slurm.conf'} exec {self.bins['srun']} \"$@\"\n")
        (f / "bin" / "srun").chmod(0o755)
        (f / "state").mkdir()
        (f / "spool").mkdir()
        (f / "slurm.conf").write_text(
            f"ClusterName=mdrtest\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser={user}\n{auth}"
            f"SlurmctldPort={ports['ctld']}\nSlurmdPort={ports['slurmd']}\n"
            f"StateSaveLocation={f / 'state'}\nSlurmdSpoolDir={f / 'spool' / '%n'}\n"
            f"SlurmctldPidFile={f / 'slurmctld.pid'}\nSlurmdPidFile={f / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={f / 'slurmctld.log'}\nSlurmdLogFile={f / 'slurmd.log'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nSlurmdParameters=config_overrides\n"
            "MpiDefault=none\nReturnToService=2\nSchedulerType=sched/backfill\nMinJobAge=300\n"
            "SchedulerParameters=sched_interval=1\nKillWait=5\nAccountingStoreFlags=job_comment\n"
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost={host}\n"
            f"AccountingStoragePort={ports['dbd']}\nAccountingStoragePass={munge_socket}\nJobCompType=jobcomp/none\n"
            f"NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={cpus} RealMemory=64000 State=UNKNOWN\n"
            f"PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP\n")
        # slurmdbd reads slurmdbd.conf beside $SLURM_CONF
        self._daemon("slurmdbd", "-D")
        self._wait("slurmdbd", lambda: _listening(ports["dbd"]))
        # the cluster must exist in the accounting database before slurmctld registers with it
        self._wait("the cluster in slurmdbd", self._register)
        self._daemon("slurmctld", "-D", "-i")
        self._wait("slurmctld", lambda: self.client("scontrol", "ping", check=False).stdout.count("UP") > 0)
        self._daemon("slurmd", "-D", "-N", NODE)
        self._wait(f"node {NODE} idle", lambda: "idle" in self.client("sinfo", "-h", "-o", "%T", check=False).stdout)
        return self

    def _register(self) -> bool:
        self.client("sacctmgr", "-i", "add", "cluster", "mdrtest", check=False)
        return "mdrtest" in self.client("sacctmgr", "-n", "list", "cluster", "format=cluster", check=False).stdout

    def stop(self) -> None:
        if self.procs and any(p.args[0].endswith("slurmctld") and p.poll() is None for p in self.procs):
            # every job of this cluster is ours: end them before their slurmd goes
            self.client("scancel", "--full", f"--cluster=mdrtest", "-u", getpass.getuser(), check=False)
            time.sleep(1)
        for proc in reversed(self.procs):  # slurmd, slurmctld, slurmdbd, mariadbd, munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_cluster() -> Cluster:
    bins = check_binaries()
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="mdr-slurm-")), bins)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise


def start_cluster_or_skip() -> Cluster:
    """For a pytest fixture: the started cluster, or the test skipped with what to install."""
    import pytest

    try:
        return start_cluster()
    except Unavailable as e:
        pytest.skip(str(e))
