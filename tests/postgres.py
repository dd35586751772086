"""A throwaway PostgreSQL server on 127.0.0.1 for the tests of the MLflow and Optuna stores.

It uses the machine's own server binaries (Debian's `postgresql` package; `.ci/run` installs it when
missing): initdb into a temporary folder, `pg_ctl start` on a free port with password authentication,
one fresh database per test. Under root the server runs as the `postgres` user, since PostgreSQL refuses
to run as root.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD = "mdr", "s3cret-pw"


class Unavailable(Exception):
    """No PostgreSQL server can be started here; the message says what to install."""


def server_binaries() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if candidates:
        return Path(candidates[-1]).parent
    raise Unavailable("no PostgreSQL server binaries (pg_ctl, initdb): install them (`apt-get install postgresql`; "
                      ".ci/run does) to test the MLflow and Optuna stores on PostgreSQL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    bin: Path
    folder: Path
    port: int
    as_user: dict

    def _run(self, *cmd: str) -> None:
        result = subprocess.run([str(self.bin / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=120,
                                **self.as_user)
        if result.returncode != 0:
            log = self.folder / "server.log"
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}\n"
                               f"{log.read_text()[-2000:] if log.exists() else ''}")

    def start(self) -> "Server":
        (self.folder / "pw").write_text(PASSWORD + "\n")
        self._run("initdb", "-D", str(self.folder / "data"), "-U", USER, f"--pwfile={self.folder / 'pw'}",
                  "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-o", options, "-l", str(self.folder / "server.log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def database(self, prefix: str = "db") -> str:
        """A new empty database; its SQLAlchemy URL (with the password, as a user would write it)."""
        import psycopg2

        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{name}"


def start_server() -> Server:
    binaries = server_binaries()
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise Unavailable("psycopg2 is not installed: `pip install -e .[test]` (make test) installs it") from None
    as_user: dict = {}
    folder = Path(tempfile.mkdtemp(prefix="mdr-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses root: run it as the `postgres` user, in a folder it owns
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            raise Unavailable("running as root and there is no `postgres` user to run the server as "
                              "(`apt-get install postgresql` creates it)") from None
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    return Server(binaries, folder, free_port(), as_user).start()
