"""Partition leases with fencing tokens: which ingest worker may append for which partition.

A lease is a row per partition: its owner, a fencing token that grows by one at every
takeover, and an expiry on the database's clock. A worker takes a partition whose lease is
absent or expired, renews it every TTL/3, and passes its `Fence` with every append; the store
checks the fence inside the append transaction, so a worker whose lease expired (paused,
partitioned, slow) can never append again: its append raises `LeaseLost`. Workers also
heartbeat a row of their own, so each knows how many are alive and takes a fair share.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import msgspec

from ledger.errors import LeaseLost

LEASE_TTL_MS = 10_000
"""How long a lease lasts unless renewed (LEDGER_LEASE_TTL_MS)."""

MIN_LEASE_TTL_MS = 100
"""Shorter leases would expire between two renewals on a busy machine."""

RENEWALS_PER_TTL = 3
"""A holder renews every TTL / 3: two renewals may fail before the lease is gone."""

DEAD_WORKER_ROWS_KEPT_S = 3_600
"""Heartbeat rows of workers gone this long are deleted by the next heartbeat."""


class Fence(msgspec.Struct, frozen=True):
    """What an append under a lease carries: the store refuses it unless the partition's lease
    still names this owner and token and has not expired."""

    partition: int
    owner: str
    token: int


def check_fence(fence: Fence, row: tuple[str, int, bool] | None) -> None:
    """Raises `LeaseLost` unless the partition's lease row, (owner, token, still live), carries
    the fence's owner and token and has not expired."""
    if row is None:
        raise LeaseLost(f"partition {fence.partition} has no lease")
    owner, token, live = row
    if (owner, token) != (fence.owner, fence.token):
        raise LeaseLost(
            f"partition {fence.partition} is held by {owner!r} under token {token}; the append "
            f"carries {fence.owner!r}, token {fence.token}"
        )
    if not live:
        raise LeaseLost(f"the lease of partition {fence.partition} (token {token}) expired")


class Lease(msgspec.Struct, frozen=True):
    partition: int
    owner: str
    token: int
    expires_at: datetime
    """On the database's clock."""

    @property
    def fence(self) -> Fence:
        return Fence(self.partition, self.owner, self.token)


class LeaseHolder(msgspec.Struct, frozen=True):
    """A partition's lease row as it stands: `live` is false once it expired."""

    partition: int
    owner: str
    token: int
    live: bool


class LeaseStore(Protocol):
    """The lease half of a store (both stores implement it, beside `EventStore`)."""

    def acquire(self, partition: int, owner: str, ttl_ms: int) -> Lease | None:
        """Take the partition when its lease is absent, expired or already `owner`'s: a new
        token (the previous one + 1), valid for `ttl_ms`. None when another owner holds it.

        The takeover is serialized with appends, so an append under the previous token either
        committed before it or is refused after it."""
        ...

    def renew(self, fence: Fence, ttl_ms: int) -> Lease | None:
        """Extend a lease still held under this fence by `ttl_ms` from now; None when it was
        lost (expired, or taken over)."""
        ...

    def release(self, fence: Fence) -> None:
        """Let the lease expire now (a graceful hand-over); no-op when no longer held."""
        ...

    def heartbeat(self, owner: str, ttl_ms: int) -> list[str]:
        """Mark `owner` alive for `ttl_ms`; return every live worker, sorted."""
        ...

    def leave(self, owner: str) -> None:
        """Forget `owner`'s heartbeat (a worker stopping gracefully)."""
        ...

    def holders(self) -> dict[int, LeaseHolder]:
        """Every partition's lease row."""
        ...


def fair_share(partitions: int, workers: list[str], owner: str) -> int:
    """How many partitions `owner` should hold: an even split of `partitions` over the sorted
    live `workers`, the first `partitions % len(workers)` of them taking one more."""
    if owner not in workers:
        workers = sorted([*workers, owner])
    base, extra = divmod(partitions, len(workers))
    return base + (1 if workers.index(owner) < extra else 0)
