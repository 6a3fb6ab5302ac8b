"""What only the PostgreSQL store has: its versioned schema, schemas side by side in one
database, and selection by `LEDGER_DATABASE_URL`, with the whole ledger running on it.

The store contract itself (appends, keys, chain, races, late commits) is in
`test_store_contract.py`, run against both stores.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ledger.application import Ledger
from ledger.audit import verify
from ledger.clock import ManualClock
from ledger.errors import DuplicateUsageKey, LeaseLost, StoreError
from ledger.log import StoredRecord, us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.stores import postgres as postgres_store
from ledger.stores.postgres import SCHEMA_VERSION, PostgresEventStore, append_lock_key
from ledger.stores.sqlite import SqliteEventStore
from services.bootstrap import bootstrap
from services.config import ConfigError, Settings
from tests.test_properties import as_command
from tests.test_store_contract import T0_US, charges, grant
from tests.workload import START, Workload

RATE_CARD = load_rate_card()
WORKLOAD_EVENTS = 300

OpenStore = Callable[..., PostgresEventStore]


@pytest.fixture
def open_store(postgres_url: str, postgres_schema: str) -> Iterator[OpenStore]:
    """Opens stores on this test's schema; every one is closed when the test ends."""
    opened: list[PostgresEventStore] = []

    def opener(schema: str = postgres_schema) -> PostgresEventStore:
        store = PostgresEventStore(postgres_url, schema=schema)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def schema_versions(url: str, schema: str) -> list[int]:
    with psycopg.connect(url) as connection:
        query = sql.SQL("SELECT version FROM {}.schema_version ORDER BY version")
        rows = connection.execute(query.format(sql.Identifier(schema))).fetchall()
    return [version for (version,) in rows]


def test_opening_creates_the_schema_at_the_latest_version_once(
    open_store: OpenStore, postgres_url: str, postgres_schema: str
) -> None:
    open_store().append([grant()], T0_US)
    open_store()

    assert schema_versions(postgres_url, postgres_schema) == list(range(1, SCHEMA_VERSION + 1))
    assert open_store().head().position == 1


def test_a_schema_newer_than_the_code_is_refused(
    open_store: OpenStore, postgres_url: str, postgres_schema: str
) -> None:
    open_store()
    with psycopg.connect(postgres_url) as connection:
        query = sql.SQL("INSERT INTO {}.schema_version (version) VALUES (%s)")
        connection.execute(query.format(sql.Identifier(postgres_schema)), (SCHEMA_VERSION + 1,))

    with pytest.raises(StoreError, match="newer"):
        open_store()


def test_two_schemas_in_one_database_keep_separate_logs_and_keys(
    open_store: OpenStore, postgres_url: str, postgres_schema: str
) -> None:
    other_schema = f"{postgres_schema}_other"
    try:
        one, other = open_store(), open_store(other_schema)
        one.append(charges("a", 3), T0_US)
        other.append(charges("a", 2), T0_US)

        assert (one.head().position, other.head().position) == (3, 2)
        assert len(other.prior_charges([("sub-1", "a-00002")])) == 0
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            query = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
            connection.execute(query.format(sql.Identifier(other_schema)))


def test_keys_are_found_in_a_database_whose_default_collation_is_linguistic(
    postgres_url: str,
) -> None:
    name = f"ledger_icu_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        try:
            admin.execute(
                sql.SQL(
                    "CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu"
                    " ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                ).format(sql.Identifier(name))
            )
        except psycopg.Error as exc:
            pytest.skip(f"this server cannot create an ICU database: {exc}")
        try:
            store = PostgresEventStore(conninfo_with_dbname(postgres_url, name))
            try:
                store.append(charges("a", 3), T0_US)
                assert [p.position for p in store.prior_charges(KEYS_A).values()] == [1, 2, 3]
                with pytest.raises(DuplicateUsageKey):
                    store.append(charges("a", 1), T0_US)
            finally:
                store.close()
        finally:
            admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))


def conninfo_with_dbname(url: str, dbname: str) -> str:
    return make_conninfo(url, dbname=dbname)


KEYS_A = [("sub-1", f"a-{index:05d}") for index in range(3)]


def test_an_append_that_waits_too_long_for_the_lock_gives_up_and_writes_nothing(
    postgres_url: str, postgres_schema: str
) -> None:
    store = PostgresEventStore(postgres_url, schema=postgres_schema, lock_timeout_ms=200)
    try:
        store.append([grant()], T0_US)
        with psycopg.connect(postgres_url) as holder:  # one open transaction until the end
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (append_lock_key(postgres_schema),))
            with pytest.raises(StoreError, match="gave up waiting"):
                store.append(charges("a", 2), T0_US)
        assert store.head().position == 1
        assert store.prior_charges(KEYS_A) == {}
        assert [r.position for r in store.append(charges("a", 2), T0_US)] == [2, 3]
    finally:
        store.close()


def test_a_dropped_connection_fails_one_call_and_the_next_one_reconnects(
    open_store: OpenStore, postgres_url: str
) -> None:
    store = open_store()
    store.append([grant()], T0_US)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store._db.info.backend_pid,))

    with pytest.raises(StoreError):
        store.head()
    assert [r.position for r in store.append(charges("a", 2), T0_US)] == [2, 3]
    assert len(store.prior_charges(KEYS_A)) == 2


def test_an_unreachable_server_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot connect"):
        PostgresEventStore("postgresql://nobody@127.0.0.1:1/none")


# --- configuration ----------------------------------------------------------------------------


def test_a_postgresql_url_selects_postgresql_and_its_schema() -> None:
    settings = Settings.from_env(
        {
            "LEDGER_DATA_DIR": "/srv/ledger",
            "LEDGER_DATABASE_URL": "postgresql://ledger@db:5432/ledger",
            "LEDGER_DATABASE_SCHEMA": "billing",
        }
    )

    assert settings.postgres_url() == "postgresql://ledger@db:5432/ledger"
    assert settings.database_schema == "billing"
    assert Settings.from_env({}).postgres_url() is None
    assert Settings.from_env({}).database_schema == "public"


def test_a_database_url_of_another_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="LEDGER_DATABASE_URL"):
        Settings(database_url="mysql://db/ledger").sqlite_path()


def run_workload(ledger: Ledger, clock: ManualClock) -> None:
    for step in Workload(seed=7, events=WORKLOAD_EVENTS).steps():
        clock.set(max(clock.now_us(), us_from_datetime(step.at)))
        ledger.tick()
        ledger.execute([as_command(item) for item in step.commands])


def stored(records: Iterator[StoredRecord]) -> list[tuple[int, int, bytes, bytes]]:
    return [(r.position, r.recorded_at_us, r.data, r.hash) for r in records]


def test_the_ledger_on_postgresql_writes_the_same_log_as_on_sqlite(
    tmp_path: Path, postgres_url: str, postgres_schema: str
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=postgres_url, database_schema=postgres_schema
    )
    clock = ManualClock(us_from_datetime(START))
    parts = bootstrap(settings, clock)
    try:
        assert isinstance(parts.store, PostgresEventStore)
        run_workload(parts.ledger(), clock)
        parts.projections().catch_up()
        on_postgres = stored(parts.store.read())
        report = verify(parts.store.read(), RATE_CARD)
    finally:
        parts.close()
    sqlite_clock = ManualClock(us_from_datetime(START))
    sqlite_store = SqliteEventStore(tmp_path / "reference.sqlite3")
    try:
        run_workload(Ledger(sqlite_store, RATE_CARD, sqlite_clock), sqlite_clock)
        on_sqlite = stored(sqlite_store.read())
    finally:
        sqlite_store.close()

    assert report.ok and report.records == len(on_postgres) > WORKLOAD_EVENTS
    assert on_postgres == on_sqlite
    assert not settings.read_model_path().exists(), "the read models are in PostgreSQL too"
    assert not settings.sqlite_path().exists()


def test_a_ledger_reopened_on_postgresql_folds_the_same_state(
    tmp_path: Path, postgres_url: str, postgres_schema: str
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=postgres_url, database_schema=postgres_schema
    )
    clock = ManualClock(us_from_datetime(START))
    first = bootstrap(settings, clock)
    try:
        ledger = first.ledger()
        run_workload(ledger, clock)
        state = ledger.state
    finally:
        first.close()

    again = bootstrap(settings, clock)
    try:
        assert again.ledger().state == state
    finally:
        again.close()


FROZEN_S = 1.0
"""How long a test's appender stays 'frozen' between its two round trips."""
SHORT_IDLE_MS = 300
SHORT_LEASE_MS = 300
LONG_LEASE_MS = 60_000


def _freeze_once_between_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next append sleeps FROZEN_S after its lock and head read, as a process stopped there."""
    real = postgres_store.chained
    frozen: list[bool] = []

    def chained(*args: Any) -> list[StoredRecord]:
        if not frozen:
            frozen.append(True)
            time.sleep(FROZEN_S)
        return real(*args)

    monkeypatch.setattr(postgres_store, "chained", chained)


def test_a_process_frozen_inside_an_append_frees_the_append_lock_within_its_idle_timeout(
    monkeypatch: pytest.MonkeyPatch, postgres_url: str, postgres_schema: str
) -> None:
    frozen = PostgresEventStore(
        postgres_url, schema=postgres_schema, idle_in_transaction_timeout_ms=SHORT_IDLE_MS
    )
    other = PostgresEventStore(postgres_url, schema=postgres_schema)
    try:
        _freeze_once_between_round_trips(monkeypatch)
        failures: list[BaseException] = []

        def append_frozen() -> None:
            try:
                frozen.append([grant()], T0_US)
            except BaseException as failure:
                failures.append(failure)

        thread = threading.Thread(target=append_frozen)
        thread.start()
        time.sleep(FROZEN_S / 10)  # it holds the lock now
        started = time.monotonic()
        [record] = other.append([grant("seat-2")], T0_US)
        waited_s = time.monotonic() - started
        thread.join()

        assert record.position == 1 and waited_s < FROZEN_S
        assert len(failures) == 1 and isinstance(failures[0], StoreError)
    finally:
        frozen.close()
        other.close()


def test_an_append_whose_lease_lapses_before_its_commit_is_refused_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, open_store: OpenStore
) -> None:
    store = open_store()
    lease = store.acquire(0, "worker-a", SHORT_LEASE_MS)
    assert lease is not None
    _freeze_once_between_round_trips(monkeypatch)  # past the lease, after its first check

    with pytest.raises(LeaseLost, match="lapsed"):
        store.append([grant()], T0_US, fence=lease.fence)

    assert store.head().position == 0
    taken = store.acquire(0, "worker-b", LONG_LEASE_MS)
    assert taken is not None and taken.token == lease.token + 1


def test_a_takeover_ends_the_sessions_of_a_worker_whose_heartbeat_expired(
    postgres_url: str, postgres_schema: str
) -> None:
    """Such a worker may be frozen half-way through sending an append: its session is then
    busy, not idle, and keeps the append lock until it is ended."""
    old = PostgresEventStore(postgres_url, schema=postgres_schema, application_name="worker-a")
    new = PostgresEventStore(postgres_url, schema=postgres_schema, application_name="worker-b")
    try:
        old.heartbeat("worker-a", SHORT_LEASE_MS)
        assert old.acquire(0, "worker-a", SHORT_LEASE_MS) is not None
        frozen = psycopg.connect(postgres_url, application_name="worker-a")
        frozen.execute("SELECT pg_advisory_xact_lock(%s)", (append_lock_key(postgres_schema),))
        time.sleep(SHORT_LEASE_MS / 1000 + 0.1)

        taken = new.acquire(0, "worker-b", LONG_LEASE_MS)

        assert taken is not None and taken.token == 2
        with pytest.raises(psycopg.OperationalError):
            frozen.execute("SELECT 1")
        frozen.close()
        with pytest.raises(StoreError):  # its own connection was ended too: the call fails
            old.head()
        assert old.head().position == 0  # and the next one reconnects
    finally:
        old.close()
        new.close()
