"""A throwaway PostgreSQL server for the tests, the benchmarks and devkit stacks: Debian's own
binaries (`postgresql` package, installed by `make system-packages`), a fresh cluster, one port.

    server = start_postgres(workdir)
    url = server.create_database("faceid_t1")  # postgresql://faceid@127.0.0.1:PORT/faceid_t1
    Store.open(url, key, password=server.password)  # or [store] password = server.password_ref
    server.stop()

Its only door is TCP on 127.0.0.1 with scram-sha-256: the superuser `faceid` has a random password,
kept in WORKDIR/postgres.password (0600) so that a configuration can name it as a `file:` secret
reference, and never put in a URL. No Unix socket at all (unix_socket_directories is empty): nothing
uses one, and a socket path under a pytest folder easily passes the 107-byte limit of sun_path.
PostgreSQL refuses to run as root: as root, initdb, postgres and pg_ctl run as the `postgres` OS
user that Debian's package creates, in a directory it owns (mode 0700). The server runs as a
devkit.procs.ServerProcess: its output is read by the test run's leak scan, and it is stopped when
the interpreter exits if nobody stopped it (SIGINT: PostgreSQL's fast shutdown).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from devkit.procs import ServerProcess, free_port
from devkit.secrets_used import register as register_secret

SUPERUSER = "faceid"
OS_USER = "postgres"  # Debian's package creates it; we never do
HOST = "127.0.0.1"
READY_LINE = r"database system is ready to accept connections"
_DB_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
START_TIMEOUT_S = 60.0  # a busy 2-core machine; it takes about a second otherwise
PORT_TRIES = 3  # free_port() may lose its port to another process before the server binds it

# A throwaway cluster whose loss on a crash costs nothing: durability switched off, which
# makes initdb, CREATE DATABASE and every commit several times faster. The store's atomicity
# does not depend on these (transactions and row locks behave the same); its tests of what
# survives a crash kill the connector, never this server.
SPEED_OVER_DURABILITY = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be run here; the message says what is missing and how to get it."""


def find_binaries() -> Path:
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql (Debian puts initdb
    there, not on PATH), else the folder of an initdb on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(re.sub(r"\D", "", Path(p).parts[-3]) or 0),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL is not installed: no initdb under /usr/lib/postgresql/*/bin or on PATH; "
        "`make system-packages` installs Debian's postgresql package"
    )


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that drops root to the `postgres` user (nothing when not root), and
    that user."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, and PostgreSQL refuses to: it needs the {OS_USER!r} OS user that "
            "Debian's postgresql package creates, and there is none (reinstall postgresql-common)"
        ) from None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise PostgresUnavailable("running as root needs setpriv (util-linux) to drop to postgres")
    # --pdeathsig: if this process dies without stopping it (kill -9, a CI timeout), the server
    # gets a fast shutdown instead of living on as an orphan with its superuser.
    prefix = [
        setpriv,
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--pdeathsig=SIGINT",
        "--",
    ]
    return prefix, user


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` (no supplementary groups) may enter every folder down to `path`."""
    for folder in [path, *path.parents]:
        info = folder.stat()
        if info.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass
class PostgresServer:
    port: int
    data_dir: Path
    password_file: Path
    password: str = field(repr=False)
    process: ServerProcess = field(repr=False)
    bin_dir: Path = field(repr=False)
    run_as: list[str] = field(repr=False)
    #: A folder made outside the workdir because the postgres user could not reach it: removed
    #: at stop.
    scratch: Path | None = field(default=None, repr=False)

    @property
    def password_ref(self) -> str:
        """The password as a secret reference, for `[store] password`."""
        return f"file:{self.password_file}"

    def url(self, db: str) -> str:
        """The database's URL, without the password (it is given apart)."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        self._execute("CREATE DATABASE {}", name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Remove a database and end whatever sessions it still has (a test's leftovers)."""
        self._execute("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    def _execute(self, statement: str, name: str) -> None:
        import psycopg  # only this server's users need the driver
        from psycopg import sql

        if not _DB_NAME_RE.fullmatch(name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        query = sql.SQL(statement).format(sql.Identifier(name))
        with psycopg.connect(
            self.url("postgres"), password=self.password, autocommit=True, connect_timeout=10
        ) as conn:
            conn.execute(query)

    def stop(self) -> None:
        """`pg_ctl stop -m fast` (open sessions are ended), then nothing of it is left running;
        its output stays readable through `process`. Safe to call twice."""
        if self.process.returncode is None:
            subprocess.run(
                [
                    *self.run_as,
                    str(self.bin_dir / "pg_ctl"),
                    *("stop", "-m", "fast", "-w", "-t", "30", "-D", str(self.data_dir)),
                ],
                cwd=self.data_dir.parent,
                capture_output=True,
                check=False,
                timeout=60,
            )
        self.process.stop()  # collects its output; SIGKILL to the group had pg_ctl failed
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


def start_postgres(workdir: Path) -> PostgresServer:
    """A fresh cluster in WORKDIR/postgres (or, as root when the postgres user cannot enter
    WORKDIR, in a folder of its own under the temporary directory), answering when returned.
    Raises PostgresUnavailable when PostgreSQL cannot be run here."""
    bin_dir = find_binaries()
    run_as, user = _run_as()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = None
    home = workdir / "postgres"
    if user is not None and not _reachable(workdir, user):
        scratch = Path(tempfile.mkdtemp(prefix="faceid-postgres-"))
        scratch.chmod(0o711)  # entered, not listed
        home = scratch / "postgres"
    home.mkdir(mode=0o700)
    data_dir = home / "data"
    if user is not None:
        os.chown(home, user.pw_uid, user.pw_gid)
    password = secrets.token_urlsafe(24)
    register_secret("PostgreSQL password", password)
    password_file = workdir / "postgres.password"
    _write_private(password_file, password)
    try:
        _initdb(bin_dir, run_as, user, home, data_dir, password)
        process, port = _serve(bin_dir, run_as, home, data_dir, workdir)
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    server = PostgresServer(
        port, data_dir, password_file, password, process, bin_dir, run_as, scratch
    )
    atexit.register(server.stop)  # before procs' own stop at exit: pg_ctl first, then cleanup
    return server


def _initdb(
    bin_dir: Path,
    run_as: list[str],
    user: pwd.struct_passwd | None,
    home: Path,
    data_dir: Path,
    password: str,
) -> None:
    # initdb reads the password from a file the server's user can read; it lives a moment only.
    pwfile = home / "initdb.password"
    _write_private(pwfile, password)
    if user is not None:
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    try:
        done = subprocess.run(
            [
                *run_as,
                str(bin_dir / "initdb"),
                *("-D", str(data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}"),
                *("--auth=scram-sha-256", "-E", "UTF8", "--locale=C"),
                *("--no-sync", "--no-instructions"),
            ],
            cwd=home,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    finally:
        pwfile.unlink()
    if done.returncode != 0:
        raise PostgresUnavailable(f"initdb failed ({done.returncode}):\n{done.stderr[-2000:]}")


def _serve(
    bin_dir: Path, run_as: list[str], home: Path, data_dir: Path, workdir: Path
) -> tuple[ServerProcess, int]:
    """The postmaster in the foreground on a free port (another try when the port was taken)."""
    attempt = 0
    while True:
        attempt += 1
        port = free_port()
        settings = [
            f"listen_addresses={HOST}",
            f"port={port}",
            "unix_socket_directories=",
            *SPEED_OVER_DURABILITY,
        ]
        argv = [*run_as, str(bin_dir / "postgres"), "-D", str(data_dir)]
        for setting in settings:
            argv += ["-c", setting]
        process = ServerProcess(
            argv, cwd=home, stop_signal=signal.SIGINT, log_prefix=workdir / "postgres"
        ).start()
        try:
            process.wait_line(READY_LINE, START_TIMEOUT_S, stream="stderr")
            return process, port
        except RuntimeError as err:
            process.stop()
            if "could not bind" not in process.stderr() or attempt == PORT_TRIES:
                raise PostgresUnavailable(f"PostgreSQL did not start: {err}") from None
