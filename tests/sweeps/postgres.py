"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` started as user ``postgres`` (``runuser``) on a
private socket directory and a free local port, removed after. Installed with apt-get when missing (root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def pg_bindir() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def ensure_postgres(timeout: float = 600.0) -> Path | None:
    """``pg_bindir()``, installing Debian's ``postgresql`` with apt-get first when it is missing and we are root
    (a fresh CI machine); None when it is missing and cannot be installed here."""
    found = pg_bindir()
    if found is not None or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=timeout, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"], check=True,
                   capture_output=True, timeout=timeout, env=env)
    return pg_bindir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server(timeout: float = 60.0) -> Iterator[str]:
    """Start a server, yield a ``postgresql+psycopg://`` URL of an empty database, stop and delete it after."""
    bindir = pg_bindir()
    if bindir is None or shutil.which("runuser") is None:
        raise FileNotFoundError("PostgreSQL is not installed (make test-db installs Debian's postgresql)")
    root = Path(tempfile.mkdtemp(prefix="lit_tricks_pg_"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    shutil.chown(root, "postgres")
    shutil.chown(sock, "postgres")
    root.chmod(0o755)
    port = _free_port()

    def as_postgres(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=timeout)

    started = False
    try:
        as_postgres(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        opts = f"-k {sock} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w",
                    "-t", str(int(timeout)), "start")
        started = True
        as_postgres(str(bindir / "createdb"), "-h", str(sock), "-p", str(port), "-U", "postgres", "optuna")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/optuna"
    finally:
        if started:
            as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
