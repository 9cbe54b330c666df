"""A throwaway PostgreSQL server for the tests: a fresh cluster in a temporary folder, listening on 127.0.0.1 at a
free port, with password authentication (scram-sha-256, so a wrong password is really refused), stopped and
removed afterwards. PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user (whom
Debian's packages create) and its commands run as that user; otherwise as this user.

Where the server's binaries are missing, the tests that need one are skipped with a reason saying how to install
them (`.ci/run` installs them on CI).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL = "install PostgreSQL's server (Debian/Ubuntu: `apt-get install postgresql`; .ci/run does this on CI)"
USER = "postgres"  # the database superuser, and the system user that owns the cluster when running as root


@dataclass
class PgServer:
    """A running throwaway server: `url(db)` is the SQLAlchemy URL Optuna's RDBStorage takes."""

    host: str
    port: int
    password: str
    directory: Path
    bin_dir: Path
    _databases: int = 0

    def url(self, database: str = "postgres", *, password: str | None = None, port: int | None = None) -> str:
        password = self.password if password is None else password
        return f"postgresql+psycopg2://{USER}:{password}@{self.host}:{port or self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; returns its name."""
        import psycopg2

        self._databases += 1
        name = name or f"test{self._databases}"
        conn = psycopg2.connect(host=self.host, port=self.port, user=USER, password=self.password, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL server's binaries (Debian keeps them in /usr/lib/postgresql/VERSION/bin), else the
    ones on PATH; None where there are none."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> tuple:
        name = Path(path).parent.parent.name
        return tuple(int(p) if p.isdigit() else 0 for p in name.split("."))

    if found:
        return Path(max(found, key=version)).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl", path=str(Path(initdb).parent)):
        return Path(initdb).parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(command: list[str]) -> list[str]:
    """`command` run as the cluster's owner: the postgres user when this is root, else as it is."""
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", USER, "--", *command]
    return ["su", USER, "-s", "/bin/sh", "-c", shlex.join(command)]


def _run(command: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(_as_owner(command), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _skip_reason() -> str | None:
    """Why no throwaway server can start here (None: it can)."""
    if find_bin_dir() is None:
        return f"PostgreSQL's server binaries (initdb, pg_ctl) were not found; {INSTALL}"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install -r requirements.txt installs psycopg2-binary)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            return f"running as root and there is no {USER!r} user to run PostgreSQL as; {INSTALL}"
    return None


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer]:
    """Start a throwaway cluster (skipping the test where PostgreSQL is missing), yield it, stop and remove it."""
    why = _skip_reason()
    if why:
        pytest.skip(why)
    bin_dir = find_bin_dir()
    # Not under pytest's tmp_path: as root that folder is root's alone, and the postgres user must enter it.
    directory = Path(tempfile.mkdtemp(prefix="emnist-pg-", dir=tempfile.gettempdir()))
    data, log, pwfile = directory / "data", directory / "server.log", directory / "password"
    password = secrets.token_urlsafe(16)
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        owner = pwd.getpwnam(USER)
        for path in (directory, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    os.chmod(directory, 0o700)
    os.chmod(pwfile, 0o600)
    started = False
    try:
        init = _run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            directory,
        )  # fmt: skip
        if init.returncode != 0:
            pytest.fail(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        for _attempt in range(3):  # a free port may be taken between finding it and the server binding it
            port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {directory} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            start = _run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"],
                directory,
            )
            if start.returncode == 0:
                started = True
                break
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"], directory)
        if not started:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"the throwaway PostgreSQL server did not start: {start.stderr.strip()}\n{tail}")
        yield PgServer("127.0.0.1", port, password, directory, bin_dir)
    finally:
        if started:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate", "-w"], directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for a test module (each test makes its own database in it)."""
    with pg_server() as server:
        yield server
