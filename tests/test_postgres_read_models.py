"""Read models in PostgreSQL: where their tables live, how they are versioned, what a lost
connection does to the one writer and to readers, and `ledger serve` answering usage pages from
them. (The read model contract itself runs over both stores in tests/test_projections.py.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ledger.errors import StoreError
from projections.runner import ProjectionRunner
from projections.stores.postgres import (
    SCHEMA_VERSION,
    PostgresReadModelStore,
    writer_lock_key,
)
from projections.usage import UsageQuery
from services.bootstrap import bootstrap
from services.config import Settings
from tests.service_support import Service, eventually, start_service
from tests.test_projections import SUB, handcrafted_log

READ_MODEL_TABLES = {
    "rm_checkpoints",
    "rm_subscriptions",
    "rm_seats",
    "rm_packs",
    "rm_usage",
    "rm_schema_version",
}
CONCURRENT_OPENERS = 4


def tables_of(url: str, schema: str) -> set[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
    return {name for (name,) in rows}


def kill_backend(url: str, connection: psycopg.Connection[Any]) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (connection.info.backend_pid,))


@pytest.fixture
def open_store(postgres_url: str, postgres_schema: str) -> Iterator[Any]:
    opened: list[PostgresReadModelStore] = []

    def open_store() -> PostgresReadModelStore:
        store = PostgresReadModelStore(postgres_url, handcrafted_log(), schema=postgres_schema)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def test_with_the_log_in_postgresql_the_read_models_are_rm_tables_in_its_schema(
    tmp_path: Path, postgres_url: str, postgres_schema: str
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=postgres_url, database_schema=postgres_schema
    )
    parts = bootstrap(settings)
    try:
        assert isinstance(parts.read_store, PostgresReadModelStore)
        assert parts.read_store.schema == postgres_schema
    finally:
        parts.close()
    tables = tables_of(postgres_url, postgres_schema)
    assert tables >= READ_MODEL_TABLES
    assert "log" in tables, "beside the log"
    assert not settings.read_model_path().exists()


def test_stores_opened_at_once_on_a_new_schema_migrate_it_once(
    postgres_url: str, postgres_schema: str
) -> None:
    opened: list[PostgresReadModelStore] = []
    failures: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(PostgresReadModelStore(postgres_url, [], schema=postgres_schema))  # type: ignore[arg-type]
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(CONCURRENT_OPENERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in opened:
        store.close()
    assert failures == []
    with psycopg.connect(postgres_url) as connection:
        versions = connection.execute(
            sql.SQL("SELECT version FROM {}.rm_schema_version").format(
                sql.Identifier(postgres_schema)
            )
        ).fetchall()
    assert versions == [(version,) for version in range(1, SCHEMA_VERSION + 1)]


def test_read_models_of_a_newer_version_than_the_code_are_refused(
    open_store: Any, postgres_url: str, postgres_schema: str
) -> None:
    open_store().close()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("INSERT INTO {}.rm_schema_version (version) VALUES (%s)").format(
                sql.Identifier(postgres_schema)
            ),
            (SCHEMA_VERSION + 1,),
        )
    with pytest.raises(StoreError, match="newer than this code"):
        open_store()


def test_the_writer_lock_is_a_session_advisory_lock_on_a_key_of_the_schema(
    open_store: Any, postgres_url: str, postgres_schema: str
) -> None:
    store = open_store()
    assert store.try_lock_writer()
    key = writer_lock_key(postgres_schema)
    with psycopg.connect(postgres_url) as connection:
        # A bigint key shows as its high 32 bits (classid) and low 32 bits (objid).
        locks = connection.execute(
            "SELECT classid::bigint, objid::bigint, pid FROM pg_locks"
            " WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        ).fetchall()
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    holders = [pid for high, low, pid in locks if (high << 32) | low == unsigned]
    assert holders == [store._db.info.backend_pid]
    assert writer_lock_key(postgres_schema + "x") != key


def test_a_writer_whose_connection_was_dropped_writes_no_more_and_another_takes_over(
    open_store: Any, postgres_url: str
) -> None:
    events = handcrafted_log()
    writer, other = open_store(), open_store()
    assert writer.try_lock_writer()
    runner = ProjectionRunner(events, writer)
    events.visible = 5
    runner.catch_up()
    events.visible = None
    kill_backend(postgres_url, writer._db)

    with pytest.raises(StoreError):
        runner.catch_up()
    with pytest.raises(StoreError, match="writes no more"):
        runner.catch_up()
    assert other.try_lock_writer(), "the lock went with the session"
    assert ProjectionRunner(events, other).catch_up() == events.head().position


def test_a_store_that_holds_no_writer_lock_reconnects_after_a_dropped_connection(
    open_store: Any, postgres_url: str
) -> None:
    store = open_store()
    ProjectionRunner(handcrafted_log(), store).catch_up()
    kill_backend(postgres_url, store._db)
    with pytest.raises(StoreError):
        store.checkpoint()
    assert store.checkpoint() == handcrafted_log().head().position


def test_a_reader_connects_at_first_use_reads_only_and_reconnects(
    open_store: Any, postgres_url: str
) -> None:
    store = open_store()
    ProjectionRunner(handcrafted_log(), store).catch_up()
    reader = store.reader()
    try:
        assert reader.checkpoint() == handcrafted_log().head().position
        assert reader._db is not None
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader._db.execute("DELETE FROM rm_usage")
        kill_backend(postgres_url, reader._db)
        with pytest.raises(StoreError):
            reader.checkpoint()
        assert [row.position for row in reader.page(UsageQuery(SUB, limit=2)).items] == [8, 11]
    finally:
        reader.close()


# -- ledger serve on PostgreSQL ------------------------------------------------------------------


@pytest.fixture
def postgres_service(
    tmp_path: Path, redis_url: str, postgres_url: str, postgres_schema: str
) -> Iterator[Service]:
    yield from start_service(
        tmp_path,
        redis_url,
        env_overrides={
            "LEDGER_DATABASE_URL": postgres_url,
            "LEDGER_DATABASE_SCHEMA": postgres_schema,
        },
    )


def test_ledger_serve_on_postgresql_shows_the_seed_charge_from_postgresql_read_models(
    postgres_service: Service, postgres_url: str, postgres_schema: str
) -> None:
    service = postgres_service
    service.open("seed", {"alice": "standard"})
    event_id = service.publish(
        "seed", "alice", input_tokens=8_349, cached_tokens=40_794, output_tokens=573
    )
    page = eventually(
        lambda: service.api.get("/v1/subscriptions/seed/usage"),
        lambda r: r.status == 200 and len(r.body["items"]) == 1,
        "the seed charge in its usage page",
    )
    [row] = page.body["items"]
    assert (row["event_id"], row["credits"]) == (event_id, "3.18")
    with psycopg.connect(postgres_url) as connection:
        schema = sql.Identifier(postgres_schema)
        usage = connection.execute(
            sql.SQL("SELECT subscription_id, seat_id, model FROM {}.rm_usage").format(schema)
        ).fetchall()
        seat = connection.execute(
            sql.SQL("SELECT used_ucr FROM {}.rm_seats WHERE seat_id = 'alice'").format(schema)
        ).fetchone()
    assert usage == [("seed", "alice", "qwen3.6-plus")]
    assert seat == (3_180_000,)
    assert not (service.data_dir / "ledger.readmodels.sqlite3").exists()
