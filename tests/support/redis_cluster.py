"""A private Redis Cluster on loopback for tests: `EmbeddedRedis` nodes with cluster mode on,
the slots split evenly between them (no replicas)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import TracebackType

import redis
import structlog

from services.redis_server import (
    LOOPBACK_HOST,
    EmbeddedRedis,
    EmbeddedRedisError,
    free_loopback_port,
)

log = structlog.get_logger()

CLUSTER_SLOTS = 16_384
CLUSTER_BUS_PORT_OFFSET = 10_000
"""Redis Cluster nodes talk to each other on their port + 10,000."""
CLUSTER_NODE_TIMEOUT_MS = 5_000
CLUSTER_READY_TIMEOUT_S = 30.0
CLUSTER_READY_POLL_S = 0.05
MAX_PORT_PAIR_ATTEMPTS = 100
MAX_PORT = 65_535


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10,000) is free as well."""
    for _ in range(MAX_PORT_PAIR_ATTEMPTS):
        port = free_loopback_port()
        if port + CLUSTER_BUS_PORT_OFFSET > MAX_PORT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOOPBACK_HOST, port + CLUSTER_BUS_PORT_OFFSET))
            except OSError:
                continue
        return port
    raise EmbeddedRedisError("no free port pair for a Redis Cluster node")


class EmbeddedRedisCluster:
    """A private Redis Cluster of `masters` nodes on loopback (no replicas): each node an
    `EmbeddedRedis` with cluster mode on, the 16,384 slots split evenly between them.

    `startup_nodes` is what a cluster client (or `LEDGER_REDIS_CLUSTER`) is given.
    """

    def __init__(self, data_dir: Path, masters: int = 3, *, binary: Path | None = None) -> None:
        assert masters >= 1
        self.data_dir = Path(data_dir).resolve()
        self.binary = binary
        self.nodes = [
            EmbeddedRedis(
                self.data_dir / f"node-{n}",
                binary=binary,
                port=free_cluster_port(),
                appendonly=False,
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                ),
            )
            for n in range(masters)
        ]  # fmt: skip

    @property
    def startup_nodes(self) -> str:
        return ",".join(f"{LOOPBACK_HOST}:{node.port}" for node in self.nodes)

    @property
    def url(self) -> str:
        """A URL of one node; a cluster client discovers the others from it."""
        return self.nodes[0].url

    def __enter__(self) -> EmbeddedRedisCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every node, give each its share of the slots, introduce them to each other,
        and return once every node reports the cluster ok."""
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def _form(self) -> None:
        clients = [redis.Redis(host=LOOPBACK_HOST, port=node.port) for node in self.nodes]
        try:
            share = -(-CLUSTER_SLOTS // len(clients))
            for n, client in enumerate(clients):
                first, last = n * share, min((n + 1) * share, CLUSTER_SLOTS)
                client.execute_command("CLUSTER ADDSLOTS", *range(first, last))  # type: ignore[no-untyped-call]
            for client in clients[1:]:
                client.execute_command("CLUSTER MEET", LOOPBACK_HOST, self.nodes[0].port)  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + CLUSTER_READY_TIMEOUT_S
            while not all(_cluster_ok(client, len(clients)) for client in clients):
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        f"the Redis Cluster on {self.startup_nodes} did not become ok"
                    )
                time.sleep(CLUSTER_READY_POLL_S)
            log.info("embedded_redis_cluster.started", nodes=self.startup_nodes)
        finally:
            for client in clients:
                client.close()


def _cluster_ok(client: redis.Redis, nodes: int) -> bool:
    fields = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
    if not isinstance(fields, dict):  # redis-py parses it into a dict; older ones give text
        text = fields.decode() if isinstance(fields, bytes) else str(fields)
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return bool(
        fields.get("cluster_state") == "ok"
        and fields.get("cluster_known_nodes") == str(nodes)
        and fields.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
    )
