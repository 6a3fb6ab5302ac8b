"""`services.client.HoldClient` against a real `ledger serve`: a streaming request served the
way the README shows (hold an estimate, serve, publish the usage with `hold_id`), extending and
releasing holds, and a refusal that says what is available."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.usage import UsageEvent
from services.client import HoldClient, LedgerRefused, UsagePublisher
from tests.service_support import Service, eventually, start_service


@pytest.fixture
def service(tmp_path: Path, redis_url: str) -> Iterator[Service]:
    yield from start_service(tmp_path, redis_url)


@pytest.fixture
def holds(service: Service) -> Iterator[HoldClient]:
    service.open("team-1", {"alice": "standard"})
    token = service.ok("POST", "/v1/tokens", {"role": "gateway", "subscription_ids": ["team-1"]})
    with HoldClient(service.api.base_url, token["token"]) as client:
        yield client


def test_a_streaming_request_holds_an_estimate_and_its_usage_settles_the_hold(
    service: Service, holds: HoldClient, redis_url: str
) -> None:
    hold = holds.hold("team-1", "alice", "req-1", credits="10.00", ttl_s=300)
    assert (hold.status, hold.credits) == ("active", "10.00")
    assert [(p.source, p.id, p.credits) for p in hold.allocation] == [("seat", "alice", "10.00")]
    # ... the request is served, streaming; then its usage goes out naming the hold:
    usage = UsageEvent(
        event_id="req-1",
        subscription_id="team-1",
        seat_id="alice",
        model="qwen3.6-plus",
        occurred_at=datetime.now(UTC),
        input_tokens=8_349,
        cached_tokens=40_794,
        output_tokens=573,
        hold_id="req-1",
    )
    with UsagePublisher(redis_url, service.stream) as publisher:
        publisher.publish(usage)
    settled = eventually(
        lambda: holds.get("team-1", "alice", "req-1"),
        lambda hold: hold.status == "settled",
        "the usage settling the hold",
    )
    assert settled.settled_by == "req-1"
    seat = service.api.get("/v1/subscriptions/team-1/seats/alice").body
    assert (seat["used"], seat["held"]) == ("3.18", "0.00")


def test_a_hold_is_extended_released_and_retried(holds: HoldClient) -> None:
    first = holds.hold("team-1", "alice", "h1", credits="5", ttl_s=60)
    assert holds.hold("team-1", "alice", "h1", credits="5", ttl_s=60) == first
    extended = holds.extend("team-1", "alice", "h1", ttl_s=600)
    assert extended.expires_at > first.expires_at
    assert holds.release("team-1", "alice", "h1").status == "released"
    with pytest.raises(LedgerRefused) as refused:
        holds.extend("team-1", "alice", "h1", ttl_s=60)
    assert (refused.value.status, refused.value.slug) == (409, "hold-not-active")


def test_a_hold_the_seat_cannot_cover_is_refused_with_what_is_available(
    holds: HoldClient,
) -> None:
    holds.hold("team-1", "alice", "most", credits="24990")
    with pytest.raises(LedgerRefused) as refused:
        holds.hold("team-1", "alice", "more", credits="20")
    assert (refused.value.slug, refused.value.available) == ("insufficient-credits", "10.00")
    with pytest.raises(LedgerRefused) as unknown:
        holds.get("team-1", "alice", "nope")
    assert unknown.value.status == 404
