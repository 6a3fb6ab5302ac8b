"""Webhooks: registering refuses URLs the ledger will not call (400 naming the rule); a delivery
that fails (500, a timeout, a refused connection) is retried with backoff until it succeeds, in
order, each attempt recorded; an endpoint that fails for the whole retry window is disabled and
says so in the feed."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.notifier.urls import METADATA_RULE, PRIVATE_RULE, SCHEME_RULE
from tests.service_support import Service, eventually, start_service
from tests.support.api_app import Api, expect_problem, open_api
from tests.support.webhook_receiver import Receiver

HOOKS = "/v1/subscriptions/team-1/webhooks"
TO_80_PERCENT = {"input_tokens": 5_000_000, "output_tokens": 16_000_000}
"""20,200 of a standard seat's 25,000 credits: past 50 and 80 % in one charge."""
FAST_RETRIES = {
    "LEDGER_WEBHOOK_ALLOW_PRIVATE": "1",
    "LEDGER_WEBHOOK_TIMEOUT_S": "1",
    "LEDGER_WEBHOOK_RETRY_BASE_MS": "1500",
}
"""Retries 1.5, 3 and 6 s (+/- 20 %) after each failure: time for the test to close and open
the receiver's port between two of them, even on a busy machine."""


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_api(tmp_path) as api:
        yield api


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("ftp://hooks.example.com/in", SCHEME_RULE),
        ("file:///etc/passwd", SCHEME_RULE),
        ("https://user:secret@hooks.example.com/in", SCHEME_RULE),
        ("http://169.254.169.254/latest/meta-data", METADATA_RULE),
        ("http://[fd00:ec2::254]/", METADATA_RULE),
        ("http://metadata.google.internal/", METADATA_RULE),
        ("http://127.0.0.1:8080/in", PRIVATE_RULE),
        ("http://localhost/in", PRIVATE_RULE),
        ("http://10.0.0.7/in", PRIVATE_RULE),
        ("http://192.168.1.1/in", PRIVATE_RULE),
    ],
)
def test_a_url_the_ledger_will_not_call_is_a_400_naming_the_rule(
    api: Api, url: str, rule: str
) -> None:
    problem = expect_problem(api.post(HOOKS, {"url": url}), 400, "invalid-body")
    assert problem["reason"] == rule
    assert rule in problem["detail"]
    assert api.get(HOOKS).json() == {"items": []}


@pytest.mark.parametrize("url", ["http://169.254.169.254/", "http://[fd00:ec2::254]/"])
def test_metadata_addresses_are_refused_even_where_private_ones_are_allowed(
    tmp_path: Path, url: str
) -> None:
    with open_api(tmp_path, allow_private_webhooks=True) as api:
        assert api.post(HOOKS, {"url": "http://127.0.0.1:9/in"}).status_code == 201
        problem = expect_problem(api.post(HOOKS, {"url": url}), 400, "invalid-body")
        assert problem["reason"] == METADATA_RULE


def test_the_secret_is_shown_once_and_an_endpoint_reads_back_without_it(api: Api) -> None:
    given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    created = api.post(
        HOOKS,
        {
            "url": "https://hooks.example.com/in",
            "secret": given,
            "webhook_id": "ops",
            "event_types": ["seat.suspended"],
        },
    )
    assert created.status_code == 201
    assert created.json()["secret"] == given
    generated = api.post(HOOKS, {"url": "https://hooks.example.com/all"}).json()
    assert generated["secret"].startswith("whsec_") and generated["webhook_id"].startswith("wh_")
    listed = api.get(HOOKS).json()["items"]
    assert {w["webhook_id"] for w in listed} == {"ops", generated["webhook_id"]}
    assert all("secret" not in w for w in listed)
    assert "secret" not in api.get(f"{HOOKS}/ops").json()
    assert (
        api.post(HOOKS, {"url": "https://other.example.com/", "webhook_id": "ops"}).status_code
        == 409
    )
    assert api.delete(f"{HOOKS}/ops").status_code == 204
    expect_problem(api.get(f"{HOOKS}/ops"), 404, "not-found")


def test_only_admins_manage_webhooks(api: Api) -> None:
    _, viewer = api.token("viewer", ["team-1"])
    expect_problem(api.get(HOOKS, token=viewer), 403, "forbidden")
    expect_problem(
        api.post(HOOKS, {"url": "https://x.example.com/"}, token=viewer), 403, "forbidden"
    )


# -- deliveries through `ledger serve` ----------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def _deliveries(service: Service, hook: str) -> list[dict[str, Any]]:
    path = f"/v1/subscriptions/team/webhooks/{hook}/deliveries"
    return list(reversed(service.ok("GET", path)["items"]))


def test_failed_deliveries_are_retried_in_order_until_one_succeeds_each_attempt_recorded(
    tmp_path: Path, redis_url: str, receiver: Receiver
) -> None:
    receiver.script = [(500, 0.0), (204, 3.0)]  # a 500, then an answer after the timeout
    for service in start_service(tmp_path, redis_url, env_overrides=FAST_RETRIES):
        hook, attempts, feed = _fail_three_times(service, receiver)
    first, second = (n["notification_id"] for n in feed)
    assert [(a["notification_id"], a["attempt"], a["outcome"]) for a in attempts] == [
        (first, 1, "failed"),
        (first, 2, "failed"),
        (first, 3, "failed"),
        (first, 4, "delivered"),
        (second, 1, "delivered"),
    ]
    assert [a["status_code"] for a in attempts] == [500, None, None, 204, 204]
    assert attempts[1]["error"].startswith("ReadTimeout")
    assert attempts[2]["error"].startswith("ConnectError")
    assert all(a["duration_ms"] >= 0 for a in attempts)
    assert attempts[1]["duration_ms"] >= 900  # the whole timeout
    assert receiver.ids() == [first, first, first, second]  # the timed-out one arrived too
    assert all(b["attempted_at"] > a["attempted_at"] for a, b in itertools.pairwise(attempts))
    verified = receiver.verified(hook["secret"])
    assert [body["data"]["threshold_percent"] for body in verified] == [50, 50, 50, 80]


def _fail_three_times(
    service: Service, receiver: Receiver
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    service.open("team", {"alice": "standard"})
    hook = service.ok("POST", "/v1/subscriptions/team/webhooks", {"url": receiver.url})
    service.publish("team", "alice", "e1", **TO_80_PERCENT)

    def attempts() -> list[dict[str, Any]]:
        return _deliveries(service, hook["webhook_id"])

    eventually(attempts, lambda d: len(d) >= 2, "the second attempt")
    receiver.stop()  # the third attempt finds the port closed
    eventually(attempts, lambda d: len(d) >= 3, "the third attempt")
    receiver.start()
    done = eventually(attempts, lambda d: len(d) >= 5, "the two notifications delivered")
    return hook, done, service.ok("GET", "/v1/subscriptions/team/notifications")["items"]


def test_an_endpoint_failing_for_the_whole_window_is_disabled_and_the_feed_says_so(
    tmp_path: Path, redis_url: str, receiver: Receiver
) -> None:
    receiver.status = 503
    env = {
        **FAST_RETRIES,
        "LEDGER_WEBHOOK_RETRY_BASE_MS": "200",
        "LEDGER_WEBHOOK_RETRY_WINDOW_S": "1",
    }
    for service in start_service(tmp_path, redis_url, env_overrides=env):
        hook, disabled, feed = _fail_until_disabled(service, receiver)
        attempts = len(receiver.received)
        time.sleep(1.0)
        assert len(receiver.received) == attempts  # nothing more is sent to it
    assert disabled["disabled_at"] is not None
    assert disabled["failing_since"] is not None
    assert feed[-1]["type"] == "webhook.disabled"
    assert feed[-1]["data"]["webhook_id"] == hook["webhook_id"]
    assert attempts >= 2


def _fail_until_disabled(
    service: Service, receiver: Receiver
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    service.open("team", {"alice": "standard"})
    hook = service.ok("POST", "/v1/subscriptions/team/webhooks", {"url": receiver.url})
    path = f"/v1/subscriptions/team/webhooks/{hook['webhook_id']}"
    service.publish("team", "alice", "e1", **TO_80_PERCENT)
    disabled = eventually(
        lambda: service.ok("GET", path), lambda w: w["status"] == "disabled", "disabled"
    )
    return hook, disabled, service.ok("GET", "/v1/subscriptions/team/notifications")["items"]
