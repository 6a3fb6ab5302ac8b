"""The web console in headless Chromium against a running `ledger serve` fed through its Redis
usage stream (issue 6): sign-in, the subscription and billing pages, time travel, CSV,
role-dependent admin actions with their idempotency, the manual clock, screenshots.

One serve holds the data of `tests.browser_support.populate` for the module; the admin-action
tests write to subscriptions of their own in it, and the clock test, which moves the one ledger
clock, has a serve of its own. Needs Debian's `chromium` and `chromium-driver`; without them the
browser tests skip with the reason, and fail under CI (`no_service`).
"""

from __future__ import annotations

import csv
import fnmatch
import os
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.browser_support import (
    ADMIN,
    BOB_CHARGES,
    DESKTOP,
    PHONE,
    ConsoleServer,
    clear_emulation,
    console_server,
    full_page_screenshot,
    missing_browser,
    page_overflows,
    start_chromium,
    wait_for,
    wait_idle,
)
from tests.conftest import no_service

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "screenshots"
UPDATE_SCREENSHOTS = "LEDGER_UPDATE_SCREENSHOTS"
"""Set to 1 to write the photographs into docs/screenshots (the README shows them); otherwise
they go to a temporary folder, and a test run leaves the repository as it was."""
SESSION_KEY = "credits-ledger-console"
DOWNLOAD_WAIT_S = 15.0
USAGE_PAGE_ROWS = 25  # app.js USAGE_PAGE_ROWS


@dataclass
class Browser:
    driver: WebDriver
    downloads: Path


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
def console(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[ConsoleServer]:
    """One `ledger serve` for the module; tests that write use subscriptions of their own."""
    with console_server(tmp_path_factory.mktemp("console-serve"), redis_url) as server:
        yield server


@pytest.fixture
def clock_console(browser: Browser, tmp_path: Path, redis_url: str) -> Iterator[ConsoleServer]:
    """A `ledger serve` of its own (without bob's requests), for a test that moves the clock."""
    with console_server(tmp_path, redis_url, with_bob=False) as server:
        yield server


@pytest.fixture(autouse=True)
def serve_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """When a test fails, its report shows the tail of the log of the serve it used."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed == failed_before:
        return
    for name in ("console", "clock_console"):
        if name in request.fixturenames:
            server: ConsoleServer = request.getfixturevalue(name)
            print(f"-- {name}: {server.serve.log_path} (tail) --\n{server.serve.log_tail()}")


# -- helpers --------------------------------------------------------------------------------


def find(driver: WebDriver, css: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, css)


def find_all(driver: WebDriver, css: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, css)


def sign_in(driver: WebDriver, console: ConsoleServer, token: str, sub: str = "") -> None:
    """Open the console in a clean tab session and submit the sign-in form."""
    driver.get(console.console_url)
    driver.execute_script("sessionStorage.clear()")
    driver.get(console.console_url + "#/subscription")
    driver.refresh()
    wait_for(driver, lambda d: find(d, "#token-input").is_displayed())
    find(driver, "#token-input").send_keys(token)
    find(driver, "#subscription-input").send_keys(sub)
    find(driver, "#sign-in-button").click()
    wait_for(
        driver,
        lambda d: find(d, "#app").is_displayed() or find(d, "#sign-in-error").text.strip(),
    )
    wait_idle(driver)


def go(driver: WebDriver, page: str) -> None:
    find(driver, f'#nav a[data-page="{page}"]').click()
    wait_for(driver, lambda d: find(d, f"#{page}-page").is_displayed())
    wait_idle(driver)


def cells(row: WebElement) -> list[str]:
    return [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]


def seat_row(driver: WebDriver, seat: str) -> list[str]:
    return cells(find(driver, f'#seats-table tr[data-seat-id="{seat}"]'))[:8]


def pack_row(driver: WebDriver, pack: str) -> WebElement:
    return find(driver, f'#packs-table tr[data-pack-id="{pack}"]')


USAGE_ROWS_SCRIPT = """
return Array.from(document.querySelectorAll("#usage-table tbody tr"), (row) => [
  row.getAttribute("data-event-id") || "",
  row.querySelector("time").getAttribute("datetime") || "",
  Array.from(row.querySelectorAll("th, td"), (cell) => cell.innerText.trim()),
]);
"""


def usage_rows(driver: WebDriver) -> list[dict[str, str]]:
    """The usage table's rows as shown, read in one script (a WebDriver call per cell made a
    page of 25 rows cost some 300 round trips)."""
    rows = []
    for event_id, recorded_at, text in driver.execute_script(USAGE_ROWS_SCRIPT):
        rows.append(
            {
                "event_id": event_id,
                "recorded_at": recorded_at,
                "seat_id": text[1],
                "product": text[2],
                "model": text[3],
                "credits": text[6],
                "allocation": text[7],
            }
        )
    return rows


def set_datetime(driver: WebDriver, css: str, value: str) -> None:
    """A datetime-local input's value, set as the page would read it (typing is locale-bound)."""
    driver.execute_script("arguments[0].value = arguments[1]", find(driver, css), value)


def grouped(amount: str) -> str:
    return f"{Decimal(amount):,.2f}"


def download_csv(browser: Browser) -> list[dict[str, str]]:
    for old in browser.downloads.iterdir():
        old.unlink()
    find(browser.driver, "#usage-csv").click()
    deadline = time.monotonic() + DOWNLOAD_WAIT_S
    while time.monotonic() < deadline:
        done = [p for p in browser.downloads.glob("*.csv")]
        if done and not list(browser.downloads.glob("*.crdownload")):
            with done[0].open(newline="", encoding="utf-8") as file:
                return list(csv.DictReader(file))
        time.sleep(0.1)
    raise AssertionError("the CSV download did not arrive")


RECORD_WRITES_SCRIPT = """
window.sentWrites = [];
window.loseNextReply = false;
const send = window.fetch;
window.unrecordedFetch = send;
window.fetch = (url, init = {}) => {
  if (!init.method || init.method === "GET") return send(url, init);
  window.sentWrites.push(
    {url: String(url), method: init.method, body: init.body, headers: init.headers});
  return send(url, init).then((reply) => {
    if (!window.loseNextReply) return reply;
    window.loseNextReply = false;  // the ledger has applied it; the page never hears back
    throw new TypeError("Failed to fetch");
  });
};
"""
REPLAY_SCRIPT = """
const [w, done] = arguments;
window.unrecordedFetch(w.url, {method: w.method, body: w.body, headers: w.headers})
  .then((r) => done(r.status));
"""


def record_writes(driver: WebDriver) -> None:
    """From now on the page keeps every write request it sends in `window.sentWrites`; with
    `window.loseNextReply` set, the next write reaches the ledger but its reply is lost."""
    driver.execute_script(RECORD_WRITES_SCRIPT)


def sent_writes(driver: WebDriver) -> list[dict[str, Any]]:
    """The writes recorded since the last call."""
    writes: list[dict[str, Any]] = driver.execute_script("return window.sentWrites.splice(0)")
    return writes


def replay(driver: WebDriver, write: dict[str, Any]) -> int:
    """Send `write` again from the page, exactly as sent (a retry): its HTTP status."""
    status: int = driver.execute_async_script(REPLAY_SCRIPT, write)
    return status


def confirm(driver: WebDriver, expected_text: str) -> None:
    """The confirmation dialog is open and names `expected_text`: confirm it."""
    wait_for(driver, lambda d: find(d, "#confirm-dialog").is_displayed())
    assert expected_text in find(driver, "#confirm-text").text
    find(driver, "#confirm-ok").click()


# -- serving (no browser needed) -------------------------------------------------------------


def test_the_console_is_served_at_console_with_its_assets(console: ConsoleServer) -> None:
    with urllib.request.urlopen(console.url + "/console", timeout=10) as response:
        assert response.url == console.console_url  # redirected: relative paths resolve
        assert response.headers["Content-Type"].startswith("text/html")
        assert b'<script type="module" src="app.js">' in response.read()
    for asset, media_type in (("app.js", "text/javascript"), ("app.css", "text/css")):
        with urllib.request.urlopen(console.console_url + asset, timeout=10) as response:
            assert response.headers["Content-Type"].startswith(media_type)


def test_the_console_assets_ship_in_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["services"]
    assets = sorted(p.name for p in (ROOT / "services" / "console").iterdir())
    assert {"index.html", "app.js", "app.css"} <= set(assets)
    for name in assets:
        assert any(fnmatch.fnmatch(f"console/{name}", pattern) for pattern in patterns), name


def test_tokens_self_names_the_role_the_scope_and_the_ledger_clock(
    console: ConsoleServer,
) -> None:
    viewer = console.get("/v1/tokens/self", token=console.viewer_token)
    assert (viewer["role"], viewer["subscription_ids"]) == ("viewer", ["team-1"])
    assert viewer["now"].startswith("2026-02-04T10:00:00")
    admin = console.get("/v1/tokens/self")
    assert (admin["role"], admin["subscription_ids"]) == ("admin", None)
    assert console.get("/v1/tokens/self", token=console.auditor_token)["role"] == "auditor"
    assert console.status_of("GET", "/v1/tokens/self", token="lt_unknown") == 401


# -- sign-in ---------------------------------------------------------------------------------


def test_sign_in_keeps_the_token_in_the_tab_session_only_and_never_in_the_url(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-1")
    assert find(driver, "#app").is_displayed()
    assert find(driver, "#who-text").text == "admin · team-1"
    assert ADMIN not in driver.current_url
    assert ADMIN in driver.execute_script(f"return sessionStorage.getItem('{SESSION_KEY}')")
    assert driver.execute_script("return localStorage.length") == 0
    assert ADMIN not in driver.execute_script("return document.cookie")
    driver.refresh()  # the tab's session survives a reload
    wait_for(driver, lambda d: find(d, "#app").is_displayed())
    wait_idle(driver)
    assert find(driver, "#sub-name").text == "team-1"
    find(driver, "#sign-out").click()
    assert find(driver, "#token-input").is_displayed()
    assert driver.execute_script(f"return sessionStorage.getItem('{SESSION_KEY}')") is None


def test_an_unknown_token_is_refused_at_sign_in(browser: Browser, console: ConsoleServer) -> None:
    driver = browser.driver
    sign_in(driver, console, "lt_not-a-token", "team-1")
    assert "not accepted" in find(driver, "#sign-in-error").text
    assert not find(driver, "#app").is_displayed()


# -- subscription page -----------------------------------------------------------------------


def test_the_subscription_page_shows_the_cycle_days_left_and_utilization(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-1")
    overview = console.get("/v1/subscriptions/team-1/overview")
    cycle = find(driver, "#cycle-text").text
    # Ledger clock 2026-02-04 10:00; the cycle ends 2026-02-28 09:00: 23 days 23 hours left.
    assert cycle.startswith("Cycle 1: 2026-01-31 09:00:00 → 2026-02-28 09:00:00 UTC")
    assert cycle.endswith("24 days left")
    assert find(driver, "#util-percent").text == f"{overview['utilization_percent']} %"
    bar = find(driver, "#util-bar")
    assert bar.get_attribute("aria-valuenow") == overview["utilization_percent"]
    assert find(driver, "#util-detail").text.startswith(
        f"{grouped(overview['quota_used'])} of 275,000.00 credits"
    )
    assert not find(driver, "#uncovered").is_displayed()


def test_a_seat_overflowing_into_a_pack_shows_the_seat_and_pack_balances(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-1")
    assert seat_row(driver, "alice") == [
        "alice",
        "standard",
        "25,000.00",
        "25,000.00",
        "0.00",
        "46,003.18",
        "0.00",
        "Active",
    ]
    p1, p2 = cells(pack_row(driver, "p1")), cells(pack_row(driver, "p2"))
    assert p1[:4] == ["p1", "625,000.00", "578,996.82", "0.00"] and p1[7] == "Active"
    assert p2[:4] == ["p2", "625,000.00", "625,000.00", "0.00"]
    assert p1[5] == "2026-03-02 10:00:00"
    countdown = pack_row(driver, "p1").find_element(By.CLASS_NAME, "countdown")
    first = countdown.text
    assert first.startswith(("25d 23h 59m", "26d 00h 00m")), first
    wait_for(driver, lambda d: countdown.text != first)  # it ticks
    go(driver, "billing")
    billing = console.get("/v1/subscriptions/team-1/billing")
    assert find(driver, "#total-credits").text == "1,525,000.00"  # 25000 + 250000 + 2 x 625000
    assert find(driver, "#remaining-credits").text == grouped(billing["remaining"])
    assert "Pack p1 expires 2026-03-02 10:00:00 UTC" in find(driver, "#next-expiration-detail").text
    find(driver, "#filter-seat option[value=alice]").click()
    find(driver, "#filter-apply").click()
    wait_idle(driver)
    by_id = {row["event_id"]: row for row in usage_rows(driver)}
    assert by_id["alice-big"]["allocation"] == "seat alice 24996.82; pack p1 46003.18"
    assert by_id["alice-big"]["credits"] == "71000.00"


def test_a_suspended_seat_is_clearly_marked_with_its_uncovered_credits(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-2")
    row = find(driver, '#seats-table tr[data-seat-id="carol"]')
    assert "seat-suspended" in (row.get_attribute("class") or "")
    assert seat_row(driver, "carol")[4:] == ["0.00", "0.00", "46,000.00", "⚠ Suspended"]
    uncovered = find(driver, "#uncovered")
    assert uncovered.is_displayed() and "Uncovered: 46,000.00 credits" in uncovered.text


# -- billing page ----------------------------------------------------------------------------


def test_the_seed_charge_shows_in_the_usage_table_with_its_coefficients(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-1")
    go(driver, "billing")
    row = find(driver, '#usage-table tr[data-event-id="seed-1"]')
    assert cells(row)[:8] == [
        "2026-02-01 10:00:01",
        "alice",
        "text",
        "qwen3.6-plus",
        "8,349 input · 40,794 cached · 573 output",
        "input 0.20 · cached 0.02 · output 1.20 per 1K",
        "3.18",
        "seat alice 3.18",
    ]


def test_the_chart_stacks_credits_per_day_by_seat_or_by_model(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-1")
    go(driver, "billing")
    rows = _all_usage(console, "team-1")
    total = sum(Decimal(row["credits"]) for row in rows)

    def segments() -> set[tuple[str, str]]:
        return {
            (rect.get_attribute("data-day") or "", rect.get_attribute("data-key") or "")
            for rect in find_all(driver, "#chart rect")
        }

    assert {key for _, key in segments()} == {"alice", "bob"}
    assert ("2026-02-01", "alice") in segments() and ("2026-02-02", "bob") in segments()
    assert f"{total:,.2f} credits in all" in find(driver, "#chart-caption").text
    find(driver, "input[name=stack-by][value=model]").click()
    assert {key for _, key in segments()} == {"qwen3.6-plus", "glm-5", "qwen-image-2.0"}
    assert "stacked by model" in find(driver, "#chart-caption").text


def test_the_csv_download_holds_exactly_the_filtered_rows_of_every_page(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-1")
    go(driver, "billing")
    Select(find(driver, "#filter-seat")).select_by_value("bob")
    find(driver, "#filter-apply").click()
    wait_idle(driver)
    shown = usage_rows(driver)
    while find(driver, "#usage-next").is_enabled():
        find(driver, "#usage-next").click()
        wait_idle(driver)
        shown += usage_rows(driver)
    assert len(shown) == BOB_CHARGES and len({r["event_id"] for r in shown}) == BOB_CHARGES
    downloaded = download_csv(browser)
    assert [row["event_id"] for row in downloaded] == [row["event_id"] for row in shown]
    for table_row, csv_row in zip(shown, downloaded, strict=True):
        assert csv_row["recorded_at"] == table_row["recorded_at"]
        for column in ("seat_id", "product", "model", "credits"):
            assert csv_row[column] == table_row[column]
        parts = [part.split(":") for part in csv_row["allocation"].split(";")]
        assert "; ".join(" ".join(part) for part in parts) == table_row["allocation"]
    # A narrower filter narrows the file: bob's image requests only.
    Select(find(driver, "#filter-model")).select_by_value("qwen-image-2.0")
    find(driver, "#filter-apply").click()
    wait_idle(driver)
    images = download_csv(browser)
    assert [row["event_id"] for row in images] == [r["event_id"] for r in usage_rows(driver)]
    assert len(images) == BOB_CHARGES // 8
    assert {(row["images"], row["image"], row["credits"]) for row in images} == {
        ("2", "8.00", "16.00")
    }


def test_as_of_re_renders_every_panel_from_that_instant(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-1")
    set_datetime(driver, "#as-of-input", "2026-02-01T23:00:00")
    find(driver, "#as-of-apply").click()
    wait_idle(driver)
    assert "2026-02-01 23:00:00" in find(driver, "#as-of-state").text
    assert seat_row(driver, "alice")[3:5] == ["3.18", "24,996.82"]
    assert find_all(driver, "#packs-table tbody tr") == []
    assert find(driver, "#cycle-text").text.endswith("27 days left")
    assert not find(driver, "#buy-pack").is_displayed()  # writes act on the present
    go(driver, "billing")
    assert find(driver, "#next-expiration").text == "None"
    assert [row["event_id"] for row in usage_rows(driver)] == ["seed-1"]
    assert {r.get_attribute("data-key") for r in find_all(driver, "#chart rect")} == {"alice"}
    find(driver, "#as-of-clear").click()
    wait_idle(driver)
    assert find(driver, "#as-of-state").text == ""
    assert len(usage_rows(driver)) == USAGE_PAGE_ROWS


# -- roles -----------------------------------------------------------------------------------


def test_a_viewer_sees_no_admin_actions_and_no_other_subscription(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    sign_in(driver, console, console.viewer_token)  # scoped to team-1 only: no id to type
    assert find(driver, "#who-text").text == "viewer · team-1"
    assert find(driver, "#seats-table tr[data-seat-id=alice]").is_displayed()
    assert find_all(driver, "[data-action]") == []
    for element in find_all(driver, ".admin-only"):
        assert not element.is_displayed()
    sign_in(driver, console, console.viewer_token, "team-2")
    assert "No subscription “team-2” for this token" in find(driver, "#sign-in-error").text
    assert not find(driver, "#app").is_displayed()


def test_an_auditor_reads_any_subscription_without_admin_actions_and_a_gateway_is_refused(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    sign_in(driver, console, console.auditor_token, "team-2")
    assert find(driver, "#who-text").text == "auditor · team-2"
    assert seat_row(driver, "carol")[7] == "⚠ Suspended"
    assert find_all(driver, "[data-action]") == []
    assert not find(driver, "#buy-pack").is_displayed()
    gateway = console.token("gateway", ["team-1"])
    sign_in(driver, console, gateway, "team-1")
    assert "role may not read subscriptions" in find(driver, "#sign-in-error").text


def test_an_admin_is_offered_every_admin_action(browser: Browser, console: ConsoleServer) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-1")
    assert find(driver, "#add-seat-form").is_displayed()
    assert find(driver, "#buy-pack").is_displayed()
    assert find(driver, "#correct-adjust").is_displayed()
    actions = {
        (b.get_attribute("data-action"), b.get_attribute("textContent"))
        for b in find_all(driver, "[data-action]")
    }
    assert actions == {
        ("change-tier", "Change tier…"),
        ("remove-seat", "Remove…"),
        ("reverse-charge", "Reverse…"),  # on each charge row of the usage table
    }


# -- accessibility and layout ----------------------------------------------------------------


def test_every_form_control_has_a_label(browser: Browser, console: ConsoleServer) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-1")
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, select')]"
        ".filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.id)"
    )
    assert unlabelled == []


def test_both_pages_fit_desktop_and_phone_widths_and_are_photographed(
    browser: Browser, console: ConsoleServer, tmp_path: Path
) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-1")
    folder = SCREENSHOTS if os.environ.get(UPDATE_SCREENSHOTS) == "1" else tmp_path
    try:
        for page in ("subscription", "billing"):
            go(driver, page)
            for name, size in (("desktop", DESKTOP), ("phone", PHONE)):
                path = folder / f"{page}-{name}.png"
                full_page_screenshot(driver, path, size)
                assert not page_overflows(driver), f"{page} scrolls sideways at {size}"
                assert path.stat().st_size > 0
    finally:
        clear_emulation(driver)


def test_the_console_works_from_the_keyboard(browser: Browser, console: ConsoleServer) -> None:
    driver = browser.driver
    driver.get(console.console_url)
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    wait_for(driver, lambda d: d.switch_to.active_element == find(d, "#token-input"))
    driver.switch_to.active_element.send_keys(ADMIN, Keys.TAB, "team-1", Keys.ENTER)
    wait_for(driver, lambda d: find(d, "#app").is_displayed())
    wait_idle(driver)
    find(driver, '#nav a[data-page="billing"]').send_keys(Keys.ENTER)
    wait_for(driver, lambda d: find(d, "#billing-page").is_displayed())
    go(driver, "subscription")
    find(driver, "#buy-pack").send_keys(Keys.ENTER)
    assert find(driver, "#confirm-dialog").is_displayed()
    assert driver.switch_to.active_element == find(driver, "#confirm-ok")
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)  # cancels: nothing is bought
    wait_for(driver, lambda d: not find(d, "#confirm-dialog").is_displayed())
    assert len(console.get("/v1/subscriptions/team-1/packs")["items"]) == 2


CONTRAST_SCRIPT = r"""
const luminance = (rgb) => {
  const [r, g, b] = rgb.map((c) => {
    c /= 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const parse = (color) => color.match(/[\d.]+/g).map(Number);
const background = (element) => {
  for (let e = element; e; e = e.parentElement) {
    const c = parse(getComputedStyle(e).backgroundColor);
    if (c.length < 4 || c[3] === 1) return c.slice(0, 3);
  }
  return [255, 255, 255];
};
const low = [];
for (const e of document.querySelectorAll("body *")) {
  const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!own || !e.getClientRects().length) continue;
  if (e.closest("[disabled], svg, .visually-hidden")) continue;
  const a = luminance(parse(getComputedStyle(e).color).slice(0, 3));
  const b = luminance(background(e));
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < 4.5) low.push(`${e.tagName}#${e.id}.${e.className}: ${ratio.toFixed(2)}`);
}
return low;
"""


def test_every_text_meets_wcag_aa_contrast_on_both_pages(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-2")  # a suspended seat and the uncovered callout
    for page in ("subscription", "billing"):
        go(driver, page)
        assert driver.execute_script(CONTRAST_SCRIPT) == [], page


def test_the_pages_log_no_script_or_policy_errors(browser: Browser, console: ConsoleServer) -> None:
    driver = browser.driver
    sign_in(driver, console, ADMIN, "team-1")
    driver.get_log("browser")  # what earlier tests left (a refused sign-in logs its 401)
    driver.refresh()
    wait_for(driver, lambda d: find(d, "#app").is_displayed())
    wait_idle(driver)
    go(driver, "billing")
    find(driver, "input[name=stack-by][value=model]").click()
    download_csv(browser)
    go(driver, "subscription")
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []


# -- admin writes and the manual clock ----------------------------------------------------------


def test_an_admin_adds_a_seat_changes_its_tier_and_removes_it_each_confirmed_and_idempotent(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    console.open("team-3", {"erin": "standard"})
    sign_in(driver, console, ADMIN, "team-3")
    record_writes(driver)

    def retried_once() -> None:
        """The write just sent, sent again with its Idempotency-Key, changes nothing."""
        [write] = sent_writes(driver)
        assert write["headers"]["Idempotency-Key"]
        assert replay(driver, write) == 200

    find(driver, "#add-seat-id").send_keys("dave")
    Select(find(driver, "#add-seat-tier")).select_by_value("advanced")
    find(driver, "#add-seat-form button[type=submit]").click()
    confirm(driver, "Add seat “dave” as advanced to team-3?")
    wait_for(driver, lambda d: "dave added" in find(d, "#action-result").text)
    wait_idle(driver)
    assert find(driver, "#action-result").text.startswith(
        "Seat dave added: now advanced, quota 100,000.00"
    )
    assert seat_row(driver, "dave")[1:3] == ["advanced", "100,000.00"]
    retried_once()

    find(driver, '#seats-table tr[data-seat-id="dave"] [data-action=change-tier]').click()
    Select(find(driver, "#confirm-tier")).select_by_value("premium")
    confirm(driver, "Seat dave is advanced.")
    wait_for(driver, lambda d: "now premium" in find(d, "#action-result").text)
    wait_idle(driver)
    assert seat_row(driver, "dave")[1:3] == ["premium", "250,000.00"]
    retried_once()

    find(driver, '#seats-table tr[data-seat-id="dave"] [data-action=remove-seat]').click()
    confirm(driver, "Remove seat dave?")
    wait_for(driver, lambda d: "dave removed" in find(d, "#action-result").text)
    wait_idle(driver)
    assert seat_row(driver, "dave")[7] == "Removed"
    assert find_all(driver, '#seats-table tr[data-seat-id="dave"] [data-action]') == []
    retried_once()

    def of_dave(event_type: str) -> list[dict[str, Any]]:
        return [e for e in console.log_events(event_type) if e["seat_id"] == "dave"]

    assert [e["tier"] for e in of_dave("seat.added")] == ["advanced"]
    assert len(of_dave("seat.tier_changed")) == 1
    assert len(of_dave("seat.removed")) == 1


def bought_packs(console: ConsoleServer, sub: str) -> list[str]:
    """The pack ids of every `pack.purchased` of `sub` in the log, oldest first."""
    return [
        e["pack_id"] for e in console.log_events("pack.purchased") if e["subscription_id"] == sub
    ]


def test_a_pack_purchase_whose_reply_is_lost_is_retried_with_its_key_and_buys_one_pack(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    console.open("team-4", {"gil": "standard"})
    sign_in(driver, console, ADMIN, "team-4")
    record_writes(driver)
    driver.execute_script("window.loseNextReply = true")
    find(driver, "#buy-pack").click()
    confirm(driver, "Buy a pack of 625,000 credits for team-4?")
    wait_for(driver, lambda d: find(d, "#confirm-ok").text == "Retry")
    assert "Not confirmed by the ledger" in find(driver, "#confirm-error").text
    find(driver, "#confirm-ok").click()
    wait_for(driver, lambda d: "bought" in find(d, "#action-result").text)
    wait_idle(driver)
    first, retry = sent_writes(driver)
    assert first["headers"]["Idempotency-Key"] and retry == first
    [pack] = console.get("/v1/subscriptions/team-4/packs")["items"]
    assert find(driver, "#action-result").text.startswith(
        f"Pack {pack['pack_id']} bought: 625,000.00 of 625,000.00 credits"
    )
    assert len(find_all(driver, "#packs-table tbody tr")) == 1
    assert bought_packs(console, "team-4") == [pack["pack_id"]]


def test_a_double_clicked_pack_purchase_sends_one_request_and_buys_one_pack(
    browser: Browser, console: ConsoleServer
) -> None:
    driver = browser.driver
    console.open("team-5", {"hana": "standard"})
    sign_in(driver, console, ADMIN, "team-5")
    record_writes(driver)
    find(driver, "#buy-pack").click()
    wait_for(driver, lambda d: find(d, "#confirm-dialog").is_displayed())
    ActionChains(driver).double_click(find(driver, "#confirm-ok")).perform()
    wait_for(driver, lambda d: "bought" in find(d, "#action-result").text)
    wait_idle(driver)
    [sent] = sent_writes(driver)  # the second click found the button disabled
    assert replay(driver, sent) == 200  # a retry all the same: "this pack id was bought already"
    [pack] = console.get("/v1/subscriptions/team-5/packs")["items"]
    assert bought_packs(console, "team-5") == [pack["pack_id"]]


def test_a_manual_clock_advance_shows_the_reset_cycle_and_an_expired_pack(
    browser: Browser, clock_console: ConsoleServer
) -> None:
    console, driver = clock_console, browser.driver
    moved = console.move_clock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    assert {(c["subscription_id"], c["cycle"]) for c in moved["cycles_started"]} == {
        ("team-1", 1),
        ("team-2", 1),
    }
    assert [(p["pack_id"], p["expired"]) for p in moved["packs_expired"]] == [("p1", "578996.82")]
    sign_in(driver, console, ADMIN, "team-1")
    cycle = find(driver, "#cycle-text").text
    assert cycle.startswith("Cycle 2: 2026-02-28 09:00:00 → 2026-03-31 09:00:00 UTC")
    assert cycle.endswith("29 days left")  # 2026-03-02 12:00 → 03-31 09:00: 28 days 21 hours
    assert seat_row(driver, "alice")[3:8] == ["0.00", "25,000.00", "0.00", "0.00", "Active"]
    p1 = cells(pack_row(driver, "p1"))
    assert (p1[2], p1[3], p1[6], p1[7]) == ("0.00", "578,996.82", "expired", "Expired")
    assert "pack-expired" in (pack_row(driver, "p1").get_attribute("class") or "")
    assert cells(pack_row(driver, "p2"))[7] == "Active"
    go(driver, "billing")
    assert find(driver, "#total-credits").text == "900,000.00"  # 275,000 of seats + p2
    assert "Pack p2 expires 2026-03-03 10:00:00 UTC" in find(driver, "#next-expiration-detail").text
    assert find_all(driver, "#chart rect") == []  # nothing deducted yet this cycle


def _all_usage(console: ConsoleServer, sub: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    params: dict[str, str] = {"limit": "1000"}
    while True:
        page = console.get(f"/v1/subscriptions/{sub}/usage", **params)
        rows += page["items"]
        if page["next_cursor"] is None:
            return rows
        params["cursor"] = page["next_cursor"]


def test_the_seats_table_shows_what_holds_hold_and_what_is_available(
    browser: Browser, clock_console: ConsoleServer
) -> None:
    console, driver = clock_console, browser.driver
    hold = {"hold_id": "h1", "credits": "1000", "ttl_s": 3600}
    console.ok("POST", "/v1/subscriptions/team-1/seats/alice/holds", hold)
    sign_in(driver, console, ADMIN, "team-1")
    seat = console.get("/v1/subscriptions/team-1/seats/alice")
    assert (seat["held"], seat["available"]) == ("1000.00", "1202996.82")
    assert cells(find(driver, '#seats-table tr[data-seat-id="alice"]'))[8:10] == [
        "1,000.00",
        "1,202,996.82",
    ]
