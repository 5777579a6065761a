"""A throwaway PostgreSQL server for the tests, started from Debian's binaries on a free port."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from streams.broker import free_port


def _binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _run(argv: list[str]) -> None:
    # Started from / so the `postgres` user never needs to read the caller's working directory.
    done = subprocess.run(argv, capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stdout[-1500:]} {done.stderr[-1500:]}")


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a SQLAlchemy URL: `SMARTRETRY_TEST_POSTGRES_URL` if set, else a server started here."""
    configured = os.environ.get("SMARTRETRY_TEST_POSTGRES_URL")
    if configured:
        yield configured
        return
    bindir = _binaries()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: run `make system-deps` (Debian: apt-get install postgresql)")
    data = tempfile.mkdtemp(prefix="smartretry-pg-")
    port = free_port()
    # PostgreSQL refuses to run as root; run it as the `postgres` user the Debian package creates.
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    _run([*prefix, f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
          "--locale=C.UTF-8"])
    _run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-w", "-l", f"{data}/server.log",
          "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start"])
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.2)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
