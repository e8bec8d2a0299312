"""The mitigator's durable store: notifications, planned actions and their outcomes.

Two backends with one schema and one set of statements: SQLite (WAL, the default;
one mitigator) and PostgreSQL (several mitigator replicas share it). A
notification and the jobs it plans are committed before the webhook answers 2xx,
so an accepted alert is never lost.

Idempotency: every job has a unique ``key`` = ``fingerprint|startsAt|policy|kind``
(``kind`` is ``apply`` or ``revert``); inserting an existing key is a no-op that
reports a duplicate (case C28: the same alert delivered twice by an HA pair, or
retried after a 503, runs its action once).

Claiming: a worker takes a due ``pending`` job with a conditional
``UPDATE ... WHERE state = 'pending'``; only one replica's update matches. A
``running`` job carries its owner and a lease; a restarted owner takes its own
running jobs back at once, other replicas after the lease expires.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError

SQLITE_BUSY_TIMEOUT_S = 2.0
"""How long a SQLite write waits for a lock: short, so a webhook is answered (503,
Alertmanager retries) within about two seconds rather than held past its timeout."""

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS notifications (
        id {pk},
        received_at DOUBLE PRECISION NOT NULL,
        group_key TEXT NOT NULL,
        receiver TEXT NOT NULL,
        status TEXT NOT NULL,
        alerts INTEGER NOT NULL,
        truncated INTEGER NOT NULL,
        body TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS jobs (
        id {pk},
        key TEXT NOT NULL UNIQUE,
        policy TEXT NOT NULL,
        kind TEXT NOT NULL,
        action_type TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        alert TEXT NOT NULL,
        params TEXT NOT NULL,
        state TEXT NOT NULL,
        outcome TEXT,
        detail TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        not_before DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        owner TEXT,
        lease_until DOUBLE PRECISION,
        notification_id INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, not_before)",
    "CREATE INDEX IF NOT EXISTS jobs_policy ON jobs (policy, kind, finished_at)",
    "CREATE INDEX IF NOT EXISTS jobs_alert ON jobs (fingerprint, policy)",
)

_COLUMNS = (
    "id, key, policy, kind, action_type, fingerprint, starts_at, alert, params, state, outcome, "
    "detail, attempts, not_before, created_at, started_at, finished_at, owner, lease_until, "
    "notification_id"
)


class StoreError(MonitorError):
    """The store cannot be opened or written (the webhook answers 503: Alertmanager retries)."""


@dataclass
class Job:
    """A planned action or revert, as stored.

    Attributes:
        key: idempotency key ``fingerprint|startsAt|policy|kind``.
        kind: ``apply`` or ``revert``.
        action_type: ``sidecar``, ``http`` or ``command``.
        alert: the alert as received (dict).
        params: the action's parameters (dict).
        state: ``pending``, ``running``, ``done`` or ``cancelled``.
        outcome: ``success``, ``failure``, ``dry_run``, ``skipped`` (when done).
        detail: why (an error, the skip reason, the HTTP status ...).
        not_before: unix seconds before which the job must not run.
    """

    id: int
    key: str
    policy: str
    kind: str
    action_type: str
    fingerprint: str
    starts_at: str
    alert: dict[str, Any]
    params: dict[str, Any]
    state: str
    outcome: str | None
    detail: str | None
    attempts: int
    not_before: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    owner: str | None
    lease_until: float | None
    notification_id: int | None

    def to_dict(self) -> dict[str, Any]:
        """The audit-log form (``GET /v1/actions``)."""
        return {
            "id": self.id,
            "key": self.key,
            "policy": self.policy,
            "kind": self.kind,
            "action": self.action_type,
            "alert": self.alert,
            "params": self.params,
            "state": self.state,
            "outcome": self.outcome,
            "detail": self.detail,
            "attempts": self.attempts,
            "not_before": self.not_before,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


@dataclass
class PlannedJob:
    """A job to insert: see :class:`Job` for the fields."""

    key: str
    policy: str
    kind: str
    action_type: str
    fingerprint: str
    starts_at: str
    alert: dict[str, Any]
    params: dict[str, Any]
    not_before: float


def _row_to_job(row: Sequence[Any]) -> Job:
    (id_, key, policy, kind, atype, fp, starts, alert, params, state, outcome, detail, attempts,
     not_before, created, started, finished, owner, lease, nid) = row  # fmt: skip
    return Job(
        int(id_), key, policy, kind, atype, fp, starts, json.loads(alert), json.loads(params),
        state, outcome, detail, int(attempts), float(not_before), float(created),
        started, finished, owner, lease, nid,
    )  # fmt: skip


class Store:
    """One store over a DB-API connection; methods are thread-safe (one lock).

    Use :func:`open_store` to build one from ``mitigator.store``.
    """

    def __init__(
        self, connect: Any, *, paramstyle: str, pk: str, url: str, schema_lock: str = ""
    ) -> None:
        self._connect = connect
        self._param = "?" if paramstyle == "qmark" else "%s"
        self._lock = threading.Lock()
        self._closed = False
        self.url = url
        self._conn: Any = connect()
        try:
            with self._tx() as cur:
                if schema_lock:
                    cur.execute(schema_lock)
                for stmt in SCHEMA:
                    cur.execute(stmt.format(pk=pk))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _q(self, sql: str) -> str:
        return sql.replace("?", self._param)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            if self._closed:
                raise StoreError(f"store {self.url}: closed")
            if self._conn is None or getattr(self._conn, "closed", False):
                # a lost connection (server restart, failover, killed session): the
                # call that saw it failed; this one reconnects
                if self._conn is not None:
                    with suppress(Exception):
                        self._conn.close()
                    self._conn = None
                self._conn = self._connect()
            cur = self._conn.cursor()
            try:
                yield cur
                self._conn.commit()
            except BaseException:
                with suppress(Exception):  # keep the original error (the link may be gone)
                    self._conn.rollback()
                raise
            finally:
                with suppress(Exception):
                    cur.close()

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> Any:
        try:
            with self._tx() as cur:
                cur.execute(self._q(sql), tuple(args))
                return cur.rowcount, (cur.fetchall() if cur.description else [])
        except MonitorError:
            raise
        except Exception as e:
            raise StoreError(f"store {self.url}: {e}") from e

    # --- writes ------------------------------------------------------------------

    def record(
        self, *, group_key: str, receiver: str, status: str, alerts: int, truncated: int, body: str,
        jobs: Sequence[PlannedJob], now: float | None = None,
    ) -> tuple[int, list[bool]]:  # fmt: skip
        """Store a notification and insert its jobs in one transaction.

        Returns:
            (notification id, for each job whether it was new; False = duplicate key).

        Raises:
            StoreError: the database refused the write.
        """
        now = time.time() if now is None else now
        try:
            with self._tx() as cur:
                cur.execute(
                    self._q(
                        "INSERT INTO notifications (received_at, group_key, receiver, status, "
                        "alerts, truncated, body) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id"
                    ),
                    (now, group_key, receiver, status, alerts, truncated, body),
                )
                nid = int(cur.fetchone()[0])
                fresh = []
                for j in jobs:
                    cur.execute(
                        self._q(
                            "INSERT INTO jobs (key, policy, kind, action_type, fingerprint, "
                            "starts_at, alert, params, state, attempts, not_before, created_at, "
                            "notification_id) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) "
                            "ON CONFLICT (key) DO NOTHING"
                        ),
                        (j.key, j.policy, j.kind, j.action_type, j.fingerprint, j.starts_at,
                         json.dumps(j.alert), json.dumps(j.params), j.not_before, now, nid),
                    )  # fmt: skip
                    fresh.append(cur.rowcount == 1)
                return nid, fresh
        except MonitorError:
            raise
        except Exception as e:
            raise StoreError(f"store {self.url}: {e}") from e

    def claim(
        self, owner: str, lease_seconds: float, now: float | None = None, limit: int = 8
    ) -> list[Job]:
        """Take up to ``limit`` due pending jobs for ``owner`` (state -> running)."""
        now = time.time() if now is None else now
        _, rows = self._exec(
            f"SELECT {_COLUMNS} FROM jobs WHERE state = 'pending' AND not_before <= ? "
            "ORDER BY not_before, id LIMIT ?",
            (now, limit),
        )
        claimed = []
        for row in rows:
            job = _row_to_job(row)
            n, _ = self._exec(
                "UPDATE jobs SET state = 'running', owner = ?, lease_until = ?, "
                "started_at = COALESCE(started_at, ?) WHERE id = ? AND state = 'pending'",
                (owner, now + lease_seconds, now, job.id),
            )
            if n == 1:
                job.state, job.owner, job.lease_until = "running", owner, now + lease_seconds
                job.started_at = now if job.started_at is None else job.started_at
                claimed.append(job)
        return claimed

    def reschedule(self, job_id: int, *, not_before: float, attempts: int, detail: str) -> None:
        """Put a running job back to pending (a retry after ``not_before``)."""
        self._exec(
            "UPDATE jobs SET state = 'pending', not_before = ?, attempts = ?, detail = ?, "
            "owner = NULL, lease_until = NULL WHERE id = ?",
            (not_before, attempts, detail, job_id),
        )

    def finish(
        self, job_id: int, *, outcome: str, attempts: int, detail: str, now: float | None = None
    ) -> None:
        """Mark a job done with its outcome."""
        self._exec(
            "UPDATE jobs SET state = 'done', outcome = ?, attempts = ?, detail = ?, "
            "finished_at = ?, owner = NULL, lease_until = NULL WHERE id = ?",
            (outcome, attempts, detail, time.time() if now is None else now, job_id),
        )

    def cancel_pending(self, *, fingerprint: str, policy: str, kind: str, detail: str) -> int:
        """Cancel pending jobs of an alert and policy (e.g. an apply the alert resolved
        before, or a revert the alert re-fired before); returns how many."""
        n, _ = self._exec(
            "UPDATE jobs SET state = 'cancelled', detail = ?, finished_at = ? "
            "WHERE fingerprint = ? AND policy = ? AND kind = ? AND state = 'pending'",
            (detail, time.time(), fingerprint, policy, kind),
        )
        return int(n)

    def recover(self, owner: str, now: float | None = None) -> int:
        """Take back running jobs of ``owner`` (a restart) and expired leases of others."""
        now = time.time() if now is None else now
        n, _ = self._exec(
            "UPDATE jobs SET state = 'pending', owner = NULL, lease_until = NULL, "
            "detail = 'resumed: the mitigator stopped while running it' "
            "WHERE state = 'running' AND (owner = ? OR lease_until < ?)",
            (owner, now),
        )
        return int(n)

    def release_expired(self, now: float | None = None) -> int:
        """Put back to pending the running jobs whose lease has expired, whoever owned
        them: a replica that died mid-action while the others kept running (its jobs
        would otherwise wait for some mitigator to start). Returns how many."""
        now = time.time() if now is None else now
        n, _ = self._exec(
            "UPDATE jobs SET state = 'pending', owner = NULL, lease_until = NULL, "
            "detail = 'resumed: the lease of the mitigator running it expired' "
            "WHERE state = 'running' AND lease_until < ?",
            (now,),
        )
        return int(n)

    # --- reads -------------------------------------------------------------------

    def jobs(self, limit: int = 100, state: str | None = None) -> list[Job]:
        """Newest jobs first (the audit log)."""
        where, args = ("WHERE state = ?", [state]) if state else ("", [])
        _, rows = self._exec(
            f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ?", (*args, limit)
        )
        return [_row_to_job(r) for r in rows]

    def applied(self, *, fingerprint: str, starts_at: str, policy: str) -> Job | None:
        """The apply job of this alert and policy, if any."""
        _, rows = self._exec(
            f"SELECT {_COLUMNS} FROM jobs WHERE key = ?",
            (f"{fingerprint}|{starts_at}|{policy}|apply",),
        )
        return _row_to_job(rows[0]) if rows else None

    def last_success(self, policy: str, kind: str = "apply") -> float | None:
        """When this policy last acted successfully (for its cooldown)."""
        _, rows = self._exec(
            "SELECT MAX(finished_at) FROM jobs "
            "WHERE policy = ? AND kind = ? AND outcome = 'success'",
            (policy, kind),
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def count_actions(self, since: float, policy: str | None = None) -> int:
        """Apply jobs that ran (success or failure) since ``since``, of one policy or all."""
        sql = (
            "SELECT COUNT(*) FROM jobs WHERE kind = 'apply' "
            "AND outcome IN ('success', 'failure') AND finished_at >= ?"
        )
        args: list[Any] = [since]
        if policy is not None:
            sql += " AND policy = ?"
            args.append(policy)
        _, rows = self._exec(sql, args)
        return int(rows[0][0])

    def ping(self) -> None:
        """Raise StoreError when the database does not answer."""
        self._exec("SELECT 1")


def open_store(url: str) -> Store:
    """Open ``sqlite:///PATH`` (WAL) or ``postgresql://...`` and create the tables.

    Raises:
        StoreError: the database cannot be opened (the message names it), or
            ``psycopg`` is missing for a PostgreSQL URL.
    """
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, timeout=SQLITE_BUSY_TIMEOUT_S)
            try:
                _sqlite_wal(conn)
                conn.execute("PRAGMA synchronous=FULL")
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            return Store(
                connect, paramstyle="qmark", pk="INTEGER PRIMARY KEY AUTOINCREMENT", url=url,
                # take the write lock up front: a deferred schema transaction that reads
                # then writes gets SQLITE_BUSY at once (no busy wait) when a replica
                # starting beside it commits in between
                schema_lock="BEGIN IMMEDIATE",
            )  # fmt: skip
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"store {url}: {e}") from e
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "a PostgreSQL store needs psycopg: pip install 'model-monitor[postgres]'"
            ) from None

        def pg_connect() -> Any:
            return psycopg.connect(url, connect_timeout=10)

        try:
            return Store(
                pg_connect, paramstyle="format", pk="BIGSERIAL PRIMARY KEY", url=_redact(url),
                # replicas starting together: concurrent CREATE TABLE IF NOT EXISTS can
                # fail on pg_type's unique index; serialise the schema transaction
                schema_lock="SELECT pg_advisory_xact_lock(7236012)",
            )  # fmt: skip
        except psycopg.Error as e:
            raise StoreError(f"store {_redact(url)}: {str(e).strip().splitlines()[0]}") from e
    raise StoreError(f"store {url!r}: expected sqlite:///PATH or postgresql://...")


def _sqlite_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode, waiting out replicas that are doing the same.

    Switching the journal mode needs an exclusive lock, and SQLite can answer
    "database is locked" at once, without running its busy handler, while another
    connection is opening the same new file (2 in 40 trials of six replicas
    starting together, before this retry). WAL mode persists in the file, so only
    the first opener switches it; the others read "wal" back. Retries with backoff
    (5 ms doubling to 100 ms) for up to ``SQLITE_BUSY_TIMEOUT_S``.

    Raises:
        sqlite3.OperationalError: still locked after the wait, or another error.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
            continue
        if str(mode).lower() != "wal":
            # e.g. an in-memory or read-only database keeps its mode
            raise sqlite3.OperationalError(f"journal_mode is {mode!r}, not 'wal'")
        return


def _redact(url: str) -> str:
    """Hide a password in a connection URL for messages."""
    import re

    url = re.sub(r"(://[^:/@]*):[^/@]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)
