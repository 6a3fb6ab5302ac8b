"""The console's corrections in headless Chromium against a running `ledger serve`: an admin
adjusts a seat, grants credits, reverses a charge and voids a pack, each confirmed with a
required reason and its result shown; the history panel lists them with who asked and why; a
viewer sees the history and no correction actions."""

from __future__ import annotations

from datetime import UTC, datetime

from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.browser_support import ADMIN, ConsoleServer, usage, wait_for, wait_idle
from tests.test_console import (  # noqa: F401 (fixtures)
    Browser,
    browser,
    cells,
    console,
    download_csv,
    find,
    find_all,
    go,
    seat_row,
    serve_log_on_failure,
    set_datetime,
    sign_in,
    usage_rows,
)


def history(driver: WebDriver) -> list[list[str]]:
    """The history panel's rows, newest first: when, action, about, credits, by, reason."""
    return [cells(row) for row in find_all(driver, "#history-table tbody tr")]


def correct(driver: WebDriver, button: str, expected_text: str, **fields: str) -> str:
    """Open a correction's dialog, fill `fields` (input id -> text), confirm: the result."""
    find(driver, f"#{button}").click()
    wait_for(driver, lambda d: find(d, "#confirm-dialog").is_displayed())
    assert expected_text in find(driver, "#confirm-text").text
    for field, text in fields.items():
        find(driver, f"#{field}").send_keys(text)
    find(driver, "#confirm-ok").click()
    wait_for(driver, lambda d: not find(d, "#confirm-dialog").is_displayed())
    wait_idle(driver)
    return str(find(driver, "#action-result").text)


def test_an_admin_corrects_with_a_reason_and_the_history_shows_who_and_why(
    browser: Browser,  # noqa: F811
    console: ConsoleServer,  # noqa: F811
) -> None:
    driver = browser.driver
    console.open("team-9", {"erin": "standard"})
    console.buy_pack("team-9", "p9")
    at = datetime(2026, 2, 4, 9, 0, tzinfo=UTC)
    console.charge(usage("e9-1", "team-9", "erin", at, input_tokens=8_349, output_tokens=573))
    sign_in(driver, console, ADMIN, "team-9")
    admin_id = console.get("/v1/tokens/self")["token_id"]

    find(driver, "#correct-adjust").click()
    wait_for(driver, lambda d: find(d, "#confirm-dialog").is_displayed())
    find(driver, "#confirm-credits").send_keys("500")
    find(driver, "#confirm-ok").click()  # no reason: refused before anything is sent
    assert "Give a reason" in find(driver, "#confirm-error").text
    assert console.log_events("seat.adjusted") == []
    find(driver, "#confirm-reason").send_keys("goodwill for the outage")
    find(driver, "#confirm-ok").click()
    wait_for(driver, lambda d: not find(d, "#confirm-dialog").is_displayed())
    wait_idle(driver)
    assert "Seat adjusted" in find(driver, "#action-result").text
    assert "500.00 credits" in find(driver, "#action-result").text
    assert seat_row(driver, "erin")[2] == "25,500.00"
    [newest, *_] = history(driver)
    assert newest[1:] == [
        "Seat adjusted",
        newest[2],
        "500.00",
        f"{admin_id} (admin)",
        "goodwill for the outage",
    ]
    assert newest[2].endswith("on seat erin")

    find(driver, "#correct-grant").click()
    wait_for(driver, lambda d: find(d, "#confirm-dialog").is_displayed())
    find(driver, "#confirm-credits").send_keys("1000")
    set_datetime(driver, "#confirm-expires", "2026-03-01T00:00")
    find(driver, "#confirm-reason").send_keys("promised by sales")
    find(driver, "#confirm-ok").click()
    wait_for(driver, lambda d: "Credits granted" in find(d, "#action-result").text)
    wait_idle(driver)

    result = correct(
        driver,
        "correct-reverse",
        "Give back a charge",
        **{"confirm-event": "e9-1", "confirm-reason": "published twice"},
    )
    assert "Charge reversed" in result and "of charge e9-1" in result
    go(driver, "billing")
    reversal = [r for r in usage_rows(driver) if r["credits"].endswith("(reverses e9-1)")]
    assert len(reversal) == 1 and reversal[0]["credits"].startswith("-")
    [charge] = [r for r in usage_rows(driver) if r["event_id"] == "e9-1"]
    assert charge["credits"].endswith("reversed)")
    downloaded = {row["event_id"]: row for row in download_csv(browser)}
    [reversal_id] = [e for e, row in downloaded.items() if row["kind"] == "reversal"]
    assert downloaded[reversal_id]["reverses"] == "e9-1"
    assert downloaded[reversal_id]["reason"] == "published twice"
    assert downloaded["e9-1"]["reversed"] == downloaded["e9-1"]["credits"]
    go(driver, "subscription")

    find(driver, "#correct-void").click()
    wait_for(driver, lambda d: find(d, "#confirm-dialog").is_displayed())
    Select(find(driver, "#confirm-kind")).select_by_value("packs")
    find(driver, "#confirm-source").send_keys("p9")
    find(driver, "#confirm-reason").send_keys("payment refunded")
    find(driver, "#confirm-ok").click()
    wait_for(driver, lambda d: "Pack voided" in find(d, "#action-result").text)
    wait_idle(driver)
    actions = [(row[1], row[5]) for row in history(driver)]
    assert actions[:4] == [
        ("Pack voided", "payment refunded"),
        ("Charge reversed", "published twice"),
        ("Credits granted", "promised by sales"),
        ("Seat adjusted", "goodwill for the outage"),
    ]
    assert [e["reason"] for e in console.log_events("pack.voided")] == ["payment refunded"]


def test_a_viewer_sees_the_history_but_no_correction_actions(
    browser: Browser,  # noqa: F811
    console: ConsoleServer,  # noqa: F811
) -> None:
    driver = browser.driver
    sign_in(driver, console, console.viewer_token)
    assert not find(driver, "#correct-adjust").is_displayed()
    actions = [row[1] for row in history(driver)]
    assert "Pack bought" in actions and "Subscription opened" in actions


def test_a_correction_retried_against_ledger_serve_answers_the_same(
    console: ConsoleServer,  # noqa: F811
) -> None:
    """The retry's answer comes from the projector's history index, in another process."""
    console.open("team-10", {"finn": "standard"})
    path = "/v1/subscriptions/team-10/seats/finn/adjustments"
    body = {"adjustment_id": "a-10", "credits": "-1.5", "reason": "typo"}
    first = console.request("POST", path, body)
    again = console.request("POST", path, body)
    assert (first.status, again.status) == (201, 200)
    assert again.body == first.body and first.body["credits"] == "-1.50"
    assert console.request("POST", path, body | {"reason": "other"}).status == 409


def test_an_admin_reverses_a_charge_from_its_usage_row(
    browser: Browser,  # noqa: F811
    console: ConsoleServer,  # noqa: F811
) -> None:
    driver = browser.driver
    console.open("team-11", {"gus": "standard"})
    at = datetime(2026, 2, 4, 9, 30, tzinfo=UTC)
    console.charge(usage("e11-1", "team-11", "gus", at, input_tokens=8_349, output_tokens=573))
    sign_in(driver, console, ADMIN, "team-11")
    go(driver, "billing")
    find(driver, '#usage-table tr[data-event-id="e11-1"] [data-action=reverse-charge]').click()
    wait_for(driver, lambda d: find(d, "#confirm-dialog").is_displayed())
    assert find(driver, "#confirm-event").get_attribute("value") == "e11-1"
    find(driver, "#confirm-credits").send_keys("1")
    find(driver, "#confirm-reason").send_keys("part of it was a retry")
    find(driver, "#confirm-ok").click()
    wait_for(driver, lambda d: not find(d, "#confirm-dialog").is_displayed())
    wait_idle(driver)
    [charge] = [r for r in usage_rows(driver) if r["event_id"] == "e11-1"]
    assert charge["credits"].endswith("(1.00 reversed)")
    [logged] = [e for e in console.log_events("usage.reversed") if e["event_id"] == "e11-1"]
    assert (logged["credits_ucr"], logged["reason"]) == (1_000_000, "part of it was a retry")
    viewer = console.token("viewer", ["team-11"])
    sign_in(driver, console, viewer)
    go(driver, "billing")
    assert find_all(driver, "#usage-table [data-action=reverse-charge]") == []
