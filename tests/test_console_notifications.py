"""The console's notifications page, in a real Chromium against a real `ledger serve`: the feed
for every reader of the subscription, and for admins the webhook endpoints (register one and
see its secret once, refused URLs, a signed test delivery and its record, delete)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser_support import (
    ADMIN,
    ConsoleServer,
    console_server,
    missing_browser,
    start_chromium,
    wait_for,
    wait_idle,
)
from tests.conftest import no_service
from tests.service_support import eventually
from tests.support.webhook_receiver import Receiver
from tests.test_console import Browser, find, find_all, go, sign_in

DENIED_URL = "http://169.254.169.254/latest/meta-data"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    reason = missing_browser()
    if reason is not None:
        no_service(f"no browser for the console tests: {reason}")
    downloads = tmp_path_factory.mktemp("downloads")
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"), downloads)
    try:
        yield Browser(driver, downloads)
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[ConsoleServer]:
    env = {"LEDGER_WEBHOOK_ALLOW_PRIVATE": "1"}
    with console_server(
        tmp_path_factory.mktemp("notify-console"), redis_url, with_bob=False, env_overrides=env
    ) as server:
        yield server


def notified(console: ConsoleServer, sub: str, count: int) -> None:
    """Wait until the notifier has derived `count` notifications of `sub` (it follows the log
    on its own: the console shows what the feed holds when it loads)."""
    eventually(
        lambda: console.get(f"/v1/subscriptions/{sub}/notifications")["items"],
        lambda items: len(items) >= count,
        f"{count} notifications of {sub}",
    )


def feed_types(driver: WebDriver) -> list[str]:
    return [cell.text for cell in find_all(driver, "#feed-table tbody td:nth-child(2)")]


def test_a_viewer_reads_the_feed_newest_first_and_manages_no_webhook(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    notified(console, "team-1", 3)
    sign_in(driver, console, console.viewer_token)
    go(driver, "notifications")
    types = wait_for(driver, lambda d: feed_types(d) or None)
    # alice's one big charge crossed 50, 80 and 100 % of her quota at once (then drew on p1).
    assert types == ["seat.threshold_reached"] * 3
    whats = [cell.text for cell in find_all(driver, "#feed-table tbody td:nth-child(3)")]
    assert "Seat alice reached 100 % of its quota (25000.00 of 25000.00 credits)." in whats
    assert not find(driver, "#webhooks-card").is_displayed()


def test_an_admin_adds_a_webhook_sees_its_secret_once_tests_it_and_deletes_it(
    browser: Browser, console: ConsoleServer, receiver: Receiver
) -> None:
    driver = browser.driver
    notified(console, "team-2", 4)
    sign_in(driver, console, ADMIN, "team-2")
    go(driver, "notifications")
    assert "seat.suspended" in wait_for(driver, lambda d: feed_types(d) or None)
    find(driver, "#webhook-url").send_keys(DENIED_URL)
    find(driver, "#webhook-create").click()
    error = wait_for(driver, lambda d: find(d, "#webhook-error").text or None)
    assert "link-local or cloud metadata" in error

    find(driver, "#webhook-url").clear()
    find(driver, "#webhook-url").send_keys(receiver.url)
    find(driver, '#webhook-types input[value="seat.suspended"]').click()
    find(driver, "#webhook-create").click()
    secret = wait_for(driver, lambda d: find(d, "#webhook-secret-value").text or None)
    wait_idle(driver)
    [row] = find_all(driver, "#webhooks-table tbody tr")
    assert receiver.url in row.text and "seat.suspended" in row.text
    find(driver, "#webhook-secret-hide").click()
    assert not find(driver, "#webhook-secret").is_displayed()
    assert secret not in driver.page_source

    row.find_element(By.CSS_SELECTOR, "[data-action=test]").click()
    wait_for(driver, lambda d: "queued" in find(d, "#webhook-result").text)
    receiver.wait_for(lambda got: any(r.json()["type"] == "webhook.test" for r in got))
    [test] = [body for body in receiver.verified(secret) if body["type"] == "webhook.test"]
    row.find_element(By.CSS_SELECTOR, "[data-action=deliveries]").click()
    outcome = wait_for(
        driver, lambda d: find(d, "#deliveries-table tbody td:nth-child(4)").text or None
    )
    assert outcome.strip() == "delivered"
    assert test["notification_id"] in find(driver, "#deliveries-table tbody").text

    row.find_element(By.CSS_SELECTOR, "[data-action=delete]").click()
    wait_for(driver, lambda d: not find_all(d, "#webhooks-table tbody tr"))
    assert console.get("/v1/subscriptions/team-2/webhooks") == {"items": []}
