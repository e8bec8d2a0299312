"""A throwaway PostgreSQL server for the store tests (Debian ``postgresql`` package).

The server listens on 127.0.0.1 only, on a free port, with trust auth, fsync off
and its socket in a temp dir; it is stopped by PID (fast shutdown, then SIGKILL).
As root the data dir belongs to the ``postgres`` user (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from monitor.procs import free_ports

START_TIMEOUT_S = 30.0


def _unavailable(why: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"CI: {why} (apt-get install postgresql; pip install 'psycopg[binary]')")
    pytest.skip(why)


def pg_bindir() -> Path | None:
    """The directory of ``initdb``/``postgres``: on PATH, else the newest Debian one."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return dirs[-1].parent if dirs else None


def require_psycopg() -> Any:
    """The psycopg module; skip when missing, fail under ``$CI``."""
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg not installed")
    return psycopg


@contextmanager
def postgres_server(tmp_path: Path) -> Iterator[str]:
    """Start PostgreSQL, create database ``monitor`` and yield its URL; stop it after.

    Skips when PostgreSQL or psycopg is missing, fails instead under ``$CI``.
    ``tmp_path`` receives the server log (``postgres.log``).
    """
    bindir = pg_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb) not installed")
    psycopg = require_psycopg()
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        pw = pwd.getpwnam("postgres")
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    base = Path(tempfile.mkdtemp(prefix="pg-"))
    proc: subprocess.Popen[bytes] | None = None
    log_path = tmp_path / "postgres.log"
    try:
        if run_as:
            os.chown(base, run_as["user"], run_as["group"])
        data = base / "data"
        init = subprocess.run(
            [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-locale",
             "-E", "UTF8", "--no-sync"],
            cwd=base, capture_output=True, text=True, timeout=START_TIMEOUT_S, **run_as,
        )  # fmt: skip
        if init.returncode:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr}")
        (port,) = free_ports(1)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [bindir / "postgres", "-D", data, "-p", str(port), "-k", base,
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                cwd=base, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **run_as,
            )  # fmt: skip
        admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited {proc.returncode}: {log_path.read_text()}")
            try:
                with psycopg.connect(admin, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("CREATE DATABASE monitor")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres not ready in {START_TIMEOUT_S:g} s: {log_path.read_text()}"
                    ) from None
                time.sleep(0.1)
        yield f"postgresql://postgres@127.0.0.1:{port}/monitor"
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: ends client sessions
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        shutil.rmtree(base, ignore_errors=True)
