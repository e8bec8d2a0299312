"""The mitigator store's contract, on both backends (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.mitigator.store import Job, PlannedJob, Store, StoreError, open_store
from monitor.procs import free_ports
from tests.pg import postgres_server, require_psycopg

T0 = 1_700_000_000.0
STARTS = "2024-05-01T10:00:00Z"
RESUMED = "resumed: the mitigator stopped while running it"


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One PostgreSQL for the module (started only if a postgresql test runs)."""
    with postgres_server(tmp_path_factory.mktemp("pg")) as url:
        yield url


def _reset_pg(url: str) -> None:
    with require_psycopg().connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS jobs, notifications")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store URL of each backend (no tables yet)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store/mitigator.db"
    pg: str = request.getfixturevalue("pg_url")
    _reset_pg(pg)
    return pg


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = open_store(url)
    yield s
    s.close()


def planned(
    fp: str,
    *,
    policy: str = "p1",
    kind: str = "apply",
    not_before: float = T0,
    starts: str = STARTS,
) -> PlannedJob:
    return PlannedJob(
        key=f"{fp}|{starts}|{policy}|{kind}",
        policy=policy,
        kind=kind,
        action_type="http",
        fingerprint=fp,
        starts_at=starts,
        alert={"labels": {"alertname": "HighLatency", "fp": fp}, "status": "firing"},
        params={"url": "http://127.0.0.1:1/scale", "replicas": 3},
        not_before=not_before,
    )


def record(store: Store, *jobs: PlannedJob, now: float = T0) -> tuple[int, list[bool]]:
    return store.record(
        group_key='{}:{alertname="HighLatency"}', receiver="mitigator", status="firing",
        alerts=len(jobs), truncated=0, body='{"version": "4"}', jobs=list(jobs), now=now,
    )  # fmt: skip


def by_key(store: Store) -> dict[str, Job]:
    """Jobs by ``fingerprint|policy|kind``."""
    return {f"{j.fingerprint}|{j.policy}|{j.kind}": j for j in store.jobs(1000)}


def count(store: Store, table: str) -> int:
    _, rows = store._exec(f"SELECT COUNT(*) FROM {table}")
    return int(rows[0][0])


def test_record_is_idempotent_on_job_keys(store: Store) -> None:
    assert record(store, planned("a"), planned("b")) == (1, [True, True])
    assert record(store, planned("a"), planned("b"), now=T0 + 1) == (2, [False, False])
    # another kind, policy or firing (startsAt) is another job; a repeat in one batch is not
    assert record(
        store,
        planned("a", kind="revert"),
        planned("a", policy="p2"),
        planned("a", starts="2024-05-02T00:00:00Z"),
        planned("c"),
        planned("c"),
        now=T0 + 2,
    ) == (3, [True, True, True, True, False])
    assert count(store, "notifications") == 3
    jobs = store.jobs()
    assert [j.key for j in jobs] == [
        f"c|{STARTS}|p1|apply",
        "a|2024-05-02T00:00:00Z|p1|apply",
        f"a|{STARTS}|p2|apply",
        f"a|{STARTS}|p1|revert",
        f"b|{STARTS}|p1|apply",
        f"a|{STARTS}|p1|apply",
    ]
    first = jobs[-1]
    assert (first.notification_id, first.owner, first.lease_until) == (1, None, None)
    assert jobs[0].notification_id == 3
    assert first.to_dict() == {
        "id": first.id,
        "key": f"a|{STARTS}|p1|apply",
        "policy": "p1",
        "kind": "apply",
        "action": "http",
        "alert": {"labels": {"alertname": "HighLatency", "fp": "a"}, "status": "firing"},
        "params": {"url": "http://127.0.0.1:1/scale", "replicas": 3},
        "state": "pending",
        "outcome": None,
        "detail": None,
        "attempts": 0,
        "not_before": T0,
        "created_at": T0,
        "started_at": None,
        "finished_at": None,
    }


def test_record_is_one_transaction(store: Store) -> None:
    bad = planned("b")
    bad.params = {"not json": object()}
    with pytest.raises(StoreError, match="not JSON serializable"):
        record(store, planned("a"), bad)
    assert (count(store, "notifications"), count(store, "jobs")) == (0, 0)
    assert record(store, planned("a"))[1] == [True]


def test_claim_takes_due_pending_jobs_in_order(store: Store) -> None:
    record(
        store,
        planned("late", not_before=T0 + 300),
        planned("first", not_before=T0 + 100),
        planned("second", not_before=T0 + 200),
        planned("tie", not_before=T0 + 100),
    )
    assert store.claim("a", 60, now=T0 + 99.5) == []
    got = store.claim("a", 60, now=T0 + 250)
    assert [j.fingerprint for j in got] == ["first", "tie", "second"]
    for j in got:
        assert (j.state, j.owner, j.started_at, j.lease_until) == (
            "running",
            "a",
            T0 + 250,
            T0 + 310,
        )
    assert store.claim("b", 60, now=T0 + 250) == []  # taken, and "late" is not due
    stored = {j.fingerprint: j for j in store.jobs(state="running")}
    assert {fp: (j.owner, j.started_at, j.lease_until) for fp, j in stored.items()} == {
        fp: ("a", T0 + 250, T0 + 310) for fp in ("first", "tie", "second")
    }
    assert [j.fingerprint for j in store.claim("b", 60, now=T0 + 300, limit=1)] == ["late"]
    assert store.claim("b", 60, now=T0 + 1000) == []


def test_claim_update_is_conditional(
    url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica claims between our SELECT and our UPDATE: we get nothing."""
    record(store, planned("x"), planned("y"))
    other = open_store(url)
    stolen: list[Job] = []
    real_exec: Callable[..., Any] = store._exec

    def racing_exec(sql: str, args: Any = ()) -> Any:
        result = real_exec(sql, args)
        if sql.startswith("SELECT") and not stolen:
            stolen.extend(other.claim("other", 60, now=T0 + 1, limit=1))
        return result

    monkeypatch.setattr(store, "_exec", racing_exec)
    try:
        got = store.claim("me", 60, now=T0 + 1)
    finally:
        other.close()
    assert [j.fingerprint for j in stolen] == ["x"]
    assert [j.fingerprint for j in got] == ["y"]
    assert {j.fingerprint: j.owner for j in store.jobs()} == {"x": "other", "y": "me"}


def test_concurrent_claimers_never_share_a_job(url: str, store: Store) -> None:
    n_jobs, n_threads = 50, 4
    record(store, *(planned(f"fp{i:02d}", not_before=T0 + i) for i in range(n_jobs)))
    stores = [open_store(url) for _ in range(n_threads)]
    got: dict[str, list[int]] = {f"w{i}": [] for i in range(n_threads)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work(owner: str, s: Store) -> None:
        try:
            barrier.wait(timeout=10)
            while jobs := s.claim(owner, 60, limit=5):
                got[owner].extend(j.id for j in jobs)
        except BaseException as e:  # reported below, not as an unhandled thread error
            errors.append(e)

    threads = [
        threading.Thread(target=work, args=(owner, s)) for owner, s in zip(got, stores, strict=True)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for s in stores:
            s.close()
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    claimed = [i for ids in got.values() for i in ids]
    assert len(claimed) == len(set(claimed)) == n_jobs
    jobs = store.jobs(1000)
    assert set(claimed) == {j.id for j in jobs}
    assert {j.id: j.owner for j in jobs} == {i: o for o, ids in got.items() for i in ids}
    assert store.jobs(1000, "pending") == []


def test_reschedule_then_finish(store: Store) -> None:
    record(store, planned("a"))
    [job] = store.claim("w1", 60, now=T0 + 10)
    store.reschedule(job.id, not_before=T0 + 100, attempts=1, detail="HTTP 503")
    [p] = store.jobs(state="pending")
    assert (p.id, p.state, p.attempts, p.not_before, p.detail) == (
        job.id, "pending", 1, T0 + 100, "HTTP 503",
    )  # fmt: skip
    assert (p.owner, p.lease_until, p.started_at) == (None, None, T0 + 10)
    assert store.claim("w2", 60, now=T0 + 99.5) == []
    [again] = store.claim("w2", 60, now=T0 + 100)
    assert (again.id, again.attempts, again.owner, again.started_at) == (job.id, 1, "w2", T0 + 10)
    store.finish(job.id, outcome="success", attempts=2, detail="scaled to 3", now=T0 + 101)
    [d] = store.jobs()
    assert (d.state, d.outcome, d.attempts, d.detail, d.finished_at) == (
        "done", "success", 2, "scaled to 3", T0 + 101,
    )  # fmt: skip
    assert (d.owner, d.lease_until) == (None, None)
    assert store.claim("w3", 60, now=T0 + 10_000) == []


def test_cancel_pending(store: Store) -> None:
    record(
        store,
        planned("b", not_before=T0 - 10),
        planned("a"),
        planned("a", kind="revert"),
        planned("a", policy="p2"),
    )
    assert [j.fingerprint for j in store.claim("w", 60, now=T0 - 5)] == ["b"]
    before = time.time()
    detail = "cancelled: the alert is resolved"
    assert store.cancel_pending(fingerprint="a", policy="p1", kind="apply", detail=detail) == 1
    after = time.time()
    assert store.cancel_pending(fingerprint="a", policy="p1", kind="apply", detail=detail) == 0
    assert store.cancel_pending(fingerprint="b", policy="p1", kind="apply", detail=detail) == 0
    jobs = by_key(store)
    assert {k: j.state for k, j in jobs.items()} == {
        "a|p1|apply": "cancelled",
        "a|p1|revert": "pending",
        "a|p2|apply": "pending",
        "b|p1|apply": "running",
    }
    cancelled = jobs["a|p1|apply"]
    assert cancelled.detail == detail
    assert cancelled.finished_at is not None and before <= cancelled.finished_at <= after
    assert sorted(j.key for j in store.claim("w", 60, now=T0 + 1)) == [
        f"a|{STARTS}|p1|revert",
        f"a|{STARTS}|p2|apply",
    ]


def test_recover(store: Store) -> None:
    record(store, *(planned(f"j{i}", not_before=T0 + i) for i in range(1, 5)))
    assert [j.fingerprint for j in store.claim("a", 60, now=T0 + 100, limit=1)] == ["j1"]
    assert [j.fingerprint for j in store.claim("b", 60, now=T0 + 100, limit=1)] == ["j2"]
    assert [j.fingerprint for j in store.claim("b", 10, now=T0 + 100, limit=1)] == ["j3"]
    # a's own running job at once, b's expired lease (j3); b's live lease (j2) stays
    assert store.recover("a", now=T0 + 150) == 2
    jobs = {j.fingerprint: j for j in store.jobs()}
    assert {fp: (j.state, j.owner, j.lease_until, j.detail) for fp, j in jobs.items()} == {
        "j1": ("pending", None, None, RESUMED),
        "j2": ("running", "b", T0 + 160, None),
        "j3": ("pending", None, None, RESUMED),
        "j4": ("pending", None, None, None),
    }
    assert store.recover("c", now=T0 + 160) == 0  # lease_until == now: not expired yet
    assert store.recover("c", now=T0 + 160.5) == 1
    got = store.claim("c", 60, now=T0 + 200)
    assert [(j.fingerprint, j.attempts) for j in got] == [(f"j{i}", 0) for i in range(1, 5)]
    assert store.recover("nobody", now=T0 + 200) == 0


def test_release_expired_takes_back_only_expired_leases_of_any_owner(store: Store) -> None:
    record(store, *(planned(f"j{i}", not_before=T0 + i) for i in range(1, 4)))
    store.claim("a", 10, now=T0 + 100, limit=1)  # j1, lease until T0 + 110
    store.claim("b", 60, now=T0 + 100, limit=1)  # j2, lease until T0 + 160
    assert store.release_expired(now=T0 + 110) == 0  # lease_until == now: not expired
    assert store.release_expired(now=T0 + 111) == 1
    jobs = {j.fingerprint: j for j in store.jobs()}
    assert {fp: (j.state, j.owner) for fp, j in jobs.items()} == {
        "j1": ("pending", None),
        "j2": ("running", "b"),
        "j3": ("pending", None),
    }
    assert jobs["j1"].detail == "resumed: the lease of the mitigator running it expired"
    assert [j.fingerprint for j in store.claim("c", 60, now=T0 + 112)] == ["j1", "j3"]


def test_last_success_and_count_actions(store: Store) -> None:
    record(
        store,
        planned("a"),
        planned("b"),
        planned("c"),
        planned("d"),
        planned("e", policy="p2"),
        planned("a", kind="revert"),
        planned("f"),
    )
    ids = {k: j.id for k, j in by_key(store).items()}
    for key, outcome, at in [
        ("a|p1|apply", "success", T0 + 100),
        ("b|p1|apply", "failure", T0 + 200),
        ("c|p1|apply", "dry_run", T0 + 300),
        ("d|p1|apply", "skipped", T0 + 350),
        ("e|p2|apply", "success", T0 + 250),
        ("a|p1|revert", "success", T0 + 400),
    ]:
        store.finish(ids[key], outcome=outcome, attempts=1, detail=outcome, now=at)
    store.cancel_pending(fingerprint="f", policy="p1", kind="apply", detail="cancelled")
    assert store.last_success("p1") == T0 + 100
    assert store.last_success("p1", "revert") == T0 + 400
    assert store.last_success("p2") == T0 + 250
    assert store.last_success("p3") is None
    assert store.count_actions(T0) == 3
    assert store.count_actions(T0, "p1") == 2
    assert store.count_actions(T0 + 150) == 2
    assert store.count_actions(T0 + 150, "p1") == 1
    assert store.count_actions(T0 + 200, "p1") == 1  # since is inclusive
    assert store.count_actions(T0 + 200.5, "p1") == 0
    assert store.count_actions(T0 + 250.5) == 0
    assert store.count_actions(T0, "p3") == 0


def test_jobs_and_applied(store: Store) -> None:
    record(store, planned("a"), planned("a", kind="revert"), planned("b"))
    record(store, planned("c"), planned("d"), now=T0 + 1)
    keys = [j.fingerprint + "/" + j.kind for j in store.jobs()]
    assert keys == ["d/apply", "c/apply", "b/apply", "a/revert", "a/apply"]
    assert [j.fingerprint for j in store.jobs(2)] == ["d", "c"]
    b = store.applied(fingerprint="b", starts_at=STARTS, policy="p1")
    assert b is not None
    store.finish(b.id, outcome="success", attempts=1, detail="ok", now=T0 + 5)
    assert [j.fingerprint for j in store.jobs(state="done")] == ["b"]
    assert [j.fingerprint for j in store.jobs(10, "pending")] == ["d", "c", "a", "a"]
    assert [j.fingerprint for j in store.jobs(1, "pending")] == ["d"]
    assert store.jobs(state="cancelled") == []
    a = store.applied(fingerprint="a", starts_at=STARTS, policy="p1")
    assert a is not None and (a.key, a.kind, a.state) == (
        f"a|{STARTS}|p1|apply",
        "apply",
        "pending",
    )
    assert store.applied(fingerprint="a", starts_at=STARTS, policy="p2") is None
    assert store.applied(fingerprint="a", starts_at="2020-01-01T00:00:00Z", policy="p1") is None
    store.ping()


def _open_together(url: str, n: int = 6) -> tuple[list[Store], list[BaseException]]:
    """Open ``url`` from ``n`` threads released by one barrier, as replicas starting together."""
    stores: list[Store] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def open_one() -> None:
        try:
            barrier.wait(timeout=10)
            stores.append(open_store(url))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return stores, errors


def test_concurrent_open_creates_the_schema_once(url: str) -> None:
    """Replicas starting together on an empty database all open it."""
    stores, errors = _open_together(url)
    try:
        assert not errors, errors
        assert len(stores) == 6
        assert record(stores[0], planned("a")) == (1, [True])
        assert [j.fingerprint for j in stores[5].jobs()] == ["a"]
    finally:
        for s in stores:
            s.close()


def test_sqlite_replicas_opening_a_new_file_together_never_see_it_locked(
    tmp_path: Path,
) -> None:
    """Case: CI run 11 failed with "database is locked" from the WAL switch.

    SQLite can refuse ``PRAGMA journal_mode=WAL`` at once, without its busy
    handler, while another connection opens the same new file: 7 of 300 rounds
    of six openers failed before the retry. 150 rounds fail at least once with
    probability ~97% at that rate; each round is ~15 ms.
    """
    for round_ in range(150):
        stores, errors = _open_together(f"sqlite:///{tmp_path}/r{round_}/mitigator.db")
        for st in stores:
            st.close()
        assert not errors, (round_, errors)
        assert len(stores) == 6


def test_postgres_store_reconnects_after_losing_its_connection(pg_url: str) -> None:
    _reset_pg(pg_url)
    store = open_store(pg_url)
    try:
        record(store, planned("a"))
        with require_psycopg().connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'monitor' AND pid <> pg_backend_pid()"
            ).fetchall()
        assert killed == [(True,)]
        with pytest.raises(StoreError, match=r"^store postgresql://postgres@127\.0\.0\.1:"):
            store.ping()  # the call that finds the connection gone fails (webhook: 503)
        store.ping()  # the next one reconnects
        assert record(store, planned("b")) == (2, [True])
        assert [j.fingerprint for j in store.jobs()] == ["b", "a"]
    finally:
        store.close()


def test_open_store_errors_name_the_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as e:
        open_store("sqlite:////proc/nonexistent/m.db")
    assert str(e.value).startswith("store sqlite:////proc/nonexistent/m.db: ")
    assert "No such file or directory" in str(e.value)
    with pytest.raises(StoreError) as e:
        open_store(f"sqlite:///{tmp_path}")  # a directory, not a database file
    assert str(e.value) == f"store sqlite:///{tmp_path}: unable to open database file"
    with pytest.raises(StoreError, match="expected sqlite:///PATH or postgresql://"):
        open_store("mysql://u:p@db/x")


def test_open_store_unreachable_postgres_hides_the_password() -> None:
    require_psycopg()
    (port,) = free_ports(1)  # nothing listens there
    for url, shown in [
        (f"postgresql://u:secret@127.0.0.1:{port}/x", f"postgresql://u:***@127.0.0.1:{port}/x"),
        (f"postgres://:secret@127.0.0.1:{port}/x", f"postgres://:***@127.0.0.1:{port}/x"),
        (
            f"postgresql://u@127.0.0.1:{port}/x?sslmode=disable&password=secret",
            f"postgresql://u@127.0.0.1:{port}/x?sslmode=disable&password=***",
        ),
    ]:
        with pytest.raises(StoreError) as e:
            open_store(url)
        msg = str(e.value)
        assert msg.startswith(f"store {shown}: connection failed: "), msg
        assert "Connection refused" in msg
        assert "secret" not in msg and "secret" not in str(e.value.__cause__)


def test_open_store_missing_postgres_database(pg_url: str) -> None:
    url = pg_url.replace("postgres@", "postgres:secret@").replace("/monitor", "/nope")
    with pytest.raises(StoreError) as e:
        open_store(url)
    msg = str(e.value)
    assert msg.startswith(f"store {url.replace(':secret@', ':***@')}: connection failed: ")
    assert 'database "nope" does not exist' in msg
    assert "secret" not in msg


def test_closed_store_refuses_calls(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError, match=r": closed$"):
        store.ping()
    store.close()  # twice is fine
