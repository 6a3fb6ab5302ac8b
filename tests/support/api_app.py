"""The HTTP API over real SQLite files for the API tests: a ledger with two subscriptions, two
packs and charges that overflow seats into packs, served in process (a Litestar test client),
its admin token, and the check that an answer is a given RFC 9457 problem."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from ledger.application import Ledger
from ledger.clock import Clock, ManualClock
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import SqliteEventStore
from projections.runner import ProjectionRunner
from projections.stores.sqlite import SqliteReadModelStore
from schemas.commands import AddSeat, BuyPack, Command, OpenSubscription
from schemas.usage import UsageEvent
from services.api.app import create_app
from services.api.problems import PROBLEM_BASE
from services.auth.tokens import SqliteTokenStore, TokenStore
from services.metrics import LedgerMetrics
from services.writer import LedgerWriter

ANCHOR = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 2, 4, 10, 0, tzinfo=UTC)
ADMIN = "lt_test-admin-token"
MAX_TOKENS = 50_000_000  # every component at its bound: 10000 + 1000 + 60000 = 71000 credits
SEED = {
    "subscription_id": "team-1",
    "seat_id": "alice",
    "model": "qwen3.6-plus",
    "input_tokens": 8349,
    "cached_tokens": 40794,
    "output_tokens": 573,
    "occurred_at": datetime(2026, 2, 1, 10, 0, tzinfo=UTC),
}


@dataclass
class Api:
    client: TestClient[Any]
    tokens: TokenStore
    data_dir: Path
    clock: Clock
    metrics: LedgerMetrics

    def get(self, path: str, token: str | None = ADMIN, **params: Any) -> Any:
        return self.client.get(path, params=params, headers=auth(token))

    def post(self, path: str, body: Any = None, token: str | None = ADMIN, **headers: str) -> Any:
        return self.client.post(path, json=body, headers=auth(token) | headers)

    def patch(self, path: str, body: Any, token: str | None = ADMIN) -> Any:
        return self.client.patch(path, json=body, headers=auth(token))

    def delete(self, path: str, token: str | None = ADMIN) -> Any:
        return self.client.delete(path, headers=auth(token))

    def logged(self, event_type: str) -> list[dict[str, Any]]:
        """Every event of this type in the log."""
        records = self.get("/v1/log", limit=1000).json()["items"]
        return [r["event"] for r in records if r["event"]["type"] == event_type]

    def token(self, role: str, subscription_ids: list[str] | None = None) -> tuple[str, str]:
        return self.tokens.create(role, subscription_ids)  # type: ignore[arg-type]


def auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def big_usage(event_id: str, seat: str, sub: str = "team-1") -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        subscription_id=sub,
        seat_id=seat,
        model="qwen3.6-plus",
        occurred_at=ANCHOR,
        input_tokens=MAX_TOKENS,
        cached_tokens=MAX_TOKENS,
        output_tokens=MAX_TOKENS,
    )


@contextmanager
def open_api(tmp_path: Path, **options: Any) -> Iterator[Api]:
    """The API over the ledger of these tests, in `tmp_path`; `options` go to `create_app`."""
    # Like `ledger serve`: the ledger and the read models live on one writer thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer") as executor:
        app, clock, metrics, close = executor.submit(
            _open_app, tmp_path, executor, options
        ).result()
        tokens = SqliteTokenStore(tmp_path / "tokens.sqlite3")
        tokens.set_bootstrap_admin(ADMIN)
        app = app(tokens)
        with TestClient(app) as client:
            yield Api(client, tokens, tmp_path, clock, metrics)
        tokens.close()
        executor.submit(close).result()


def _open_app(
    tmp_path: Path, executor: ThreadPoolExecutor, options: dict[str, Any]
) -> tuple[Any, ManualClock, Any, Any]:
    store = SqliteEventStore(tmp_path / "ledger.sqlite3")
    read_path = tmp_path / "ledger.readmodels.sqlite3"
    read_store = SqliteReadModelStore(read_path, store)
    clock = ManualClock(us_from_datetime(ANCHOR))
    ledger = Ledger(store, load_rate_card(), clock)

    def run(*commands: Command) -> None:
        for outcome in ledger.execute(list(commands)):
            assert outcome.status == "applied", outcome

    run(
        OpenSubscription("team-1", ANCHOR),
        AddSeat("team-1", "alice", "standard"),
        AddSeat("team-1", "bob", "premium"),
        OpenSubscription("team-2", ANCHOR),
        AddSeat("team-2", "carol", "standard"),
    )
    clock.set(us_from_datetime(datetime(2026, 2, 1, 10, 0, 1, tzinfo=UTC)))
    [seed] = ledger.charge([UsageEvent(event_id="seed-1", **SEED)])  # type: ignore[arg-type]
    assert seed.status == "applied"
    clock.set(us_from_datetime(datetime(2026, 2, 2, 10, 0, tzinfo=UTC)))
    run(BuyPack("team-1", "p1"))
    clock.set(us_from_datetime(datetime(2026, 2, 3, 10, 0, tzinfo=UTC)))
    run(BuyPack("team-1", "p2"))
    # 10 x 71000 on alice: her 25000 quota (less 3.18), then all of p1, then 60003.18 of p2.
    outcomes = ledger.charge([big_usage(f"big-{i}", "alice") for i in range(10)])
    # carol has no pack: 25000 covered, 46000 uncovered, and she is suspended.
    outcomes += ledger.charge([big_usage("carol-1", "carol", "team-2")])
    assert {o.status for o in outcomes} == {"applied"}
    clock.set(us_from_datetime(NOW))
    runner = ProjectionRunner(store, read_store)
    runner.catch_up()
    metrics = LedgerMetrics()

    def app(tokens: TokenStore) -> Any:
        return create_app(
            events=store,
            read_models=read_store.reader(),
            runner=runner,
            tokens=tokens,
            clock=clock,
            writer=LedgerWriter(ledger, runner, executor),
            metrics=metrics,
            **options,
        )

    def close() -> None:
        read_store.close()
        store.close()

    return app, clock, metrics, close


def expect_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM_BASE + slug
    assert body["status"] == status and body["title"] and body["detail"]
    return body
