"""Support for the console's browser tests: a ledger with known data served over HTTP on a free
loopback port, and a headless Chromium (Debian's `chromium` + `chromium-driver`) to drive it.

The server is the Litestar app of `services.api` run by uvicorn on a thread, over real SQLite
files written through `Ledger`. A pump on the server's own event loop does what `ledger serve`
does between requests: it appends what fell due on the clock and catches the projections up.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from litestar import Litestar
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from ledger.application import Ledger, Outcome
from ledger.log import us_from_datetime
from projections.runner import ProjectionRunner
from schemas.commands import AddSeat, BuyPack, Command, OpenSubscription
from schemas.usage import UsageEvent
from services.api import app_from_parts
from services.auth import TokenStore
from services.bootstrap import Parts, bootstrap
from services.config import Settings

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
DESKTOP = (1366, 900)
PHONE = (390, 844)
SERVER_START_TIMEOUT_S = 15.0
PUMP_INTERVAL_S = 0.1
WAIT_S = 15.0
MAX_SCREENSHOT_HEIGHT_PX = 3_000
"""A long usage table is cut off here: the picture shows the top of the page."""

ANCHOR = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 2, 4, 10, 0, tzinfo=UTC)
ADMIN = "lt_console-test-admin"
MAX_TOKENS = 50_000_000  # every component at its bound: 10000 + 1000 + 60000 = 71000 credits
BOB_CHARGES = 64  # three pages of the console's usage table (25 rows)
SEED = {
    "subscription_id": "team-1",
    "seat_id": "alice",
    "model": "qwen3.6-plus",
    "input_tokens": 8349,
    "cached_tokens": 40794,
    "output_tokens": 573,
}


def missing_browser() -> str | None:
    """Why no browser test can run here, or None when Chromium and its driver are installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: apt-get install -y chromium chromium-driver"
    return None


def start_chromium(profile_dir: Path, download_dir: Path) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)}
    )
    return driver


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class ConsoleServer:
    """A running API + console over a ledger with the data of `populate`."""

    url: str
    tokens: TokenStore
    server: uvicorn.Server
    thread: threading.Thread
    errors: list[BaseException]
    """What failed on the server's thread (its pump included)."""
    viewer_token: str = ""
    auditor_token: str = ""

    @property
    def console_url(self) -> str:
        return self.url + "/console/"

    def get(self, path: str, token: str = ADMIN, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        request = urllib.request.Request(
            f"{self.url}{path}{'?' + query if query else ''}",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return json.load(response)

    def status_of(self, method: str, path: str, body: Any = None, token: str = ADMIN) -> int:
        """The HTTP status of one request (for probing whether a route is served)."""
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT_S) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=SERVER_START_TIMEOUT_S)
        self.tokens.close()
        if self.errors:
            raise RuntimeError(f"the console test server failed: {self.errors!r}")


def _big(event_id: str, seat: str, sub: str, at: datetime) -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        subscription_id=sub,
        seat_id=seat,
        model="qwen3.6-plus",
        occurred_at=at,
        input_tokens=MAX_TOKENS,
        cached_tokens=MAX_TOKENS,
        output_tokens=MAX_TOKENS,
    )


def _bob(i: int, instant: datetime) -> UsageEvent:
    """Bob's i-th request: every eighth an image, the rest glm-5 text, some thinking or tools."""
    if i % 8 == 7:
        return UsageEvent(
            event_id=f"bob-{i:02d}",
            subscription_id="team-1",
            seat_id="bob",
            model="qwen-image-2.0",
            images=2,
            occurred_at=instant,
        )
    return UsageEvent(
        event_id=f"bob-{i:02d}",
        subscription_id="team-1",
        seat_id="bob",
        model="glm-5",
        input_tokens=100_000 + 3_000 * i,
        cached_tokens=50_000,
        output_tokens=20_000 + 500 * i,
        thinking=i % 5 == 0,
        tool_calls=i % 3,
        occurred_at=instant,
    )


def populate(parts: Parts) -> None:
    """team-1: alice (standard) charged the seed's 3.18, then overflowing into pack p1; bob
    (premium) with text, thinking, tool and image requests over three days; packs p1 and p2.
    team-2: carol (standard), no pack, charged past her quota: uncovered and suspended."""
    ledger = Ledger(parts.store, parts.rate_card, parts.clock)
    clock = parts.clock

    def at(instant: datetime) -> None:
        clock.set(us_from_datetime(instant))  # type: ignore[attr-defined]

    def run(*commands: Command) -> None:
        for outcome in ledger.execute(list(commands)):
            assert outcome.status == "applied", outcome

    def charge(*usages: UsageEvent) -> None:
        assert {o.status for o in ledger.charge(list(usages))} == {"applied"}

    run(
        OpenSubscription("team-1", ANCHOR),
        AddSeat("team-1", "alice", "standard"),
        AddSeat("team-1", "bob", "premium"),
        OpenSubscription("team-2", ANCHOR),
        AddSeat("team-2", "carol", "standard"),
    )
    seed_at = datetime(2026, 2, 1, 10, 0, tzinfo=UTC)
    seed = UsageEvent(event_id="seed-1", occurred_at=seed_at, **SEED)  # type: ignore[arg-type]
    alice_at = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)
    carol_at = datetime(2026, 2, 3, 15, 0, tzinfo=UTC)
    steps: list[tuple[datetime, Callable[[], None]]] = [
        (seed_at + timedelta(seconds=1), lambda: charge(seed)),
        (datetime(2026, 2, 2, 10, 0, tzinfo=UTC), lambda: run(BuyPack("team-1", "p1"))),
        (datetime(2026, 2, 3, 10, 0, tzinfo=UTC), lambda: run(BuyPack("team-1", "p2"))),
        # 71000 on alice: 24996.82 left of her quota, then 46003.18 from p1 (expiring first).
        (alice_at, lambda: charge(_big("alice-big", "alice", "team-1", alice_at))),
        (carol_at, lambda: charge(_big("carol-1", "carol", "team-2", carol_at))),
    ]
    for i in range(BOB_CHARGES):
        instant = datetime(2026, 2, 2, 0, 30, tzinfo=UTC) + timedelta(minutes=45 * i)
        usage = _bob(i, instant)
        steps.append((instant + timedelta(seconds=2), lambda usage=usage: charge(usage)))
    for instant, step in sorted(steps, key=lambda s: s[0]):
        at(instant)
        step()
    at(NOW)


def start_server(data_dir: Path) -> ConsoleServer:
    """Populate a manual-clock ledger in `data_dir` and serve it on a free loopback port.

    The served parts are opened on the server's thread: their SQLite connections belong to it.
    """
    settings = Settings(data_dir=data_dir, clock="manual", clock_start=ANCHOR)
    parts = bootstrap(settings)
    try:
        populate(parts)
    finally:
        parts.close()
    tokens = TokenStore(data_dir / "tokens.sqlite3")
    tokens.set_bootstrap_admin(ADMIN)
    _, viewer = tokens.create("viewer", ["team-1"])
    _, auditor = tokens.create("auditor")
    port = _free_port()
    errors: list[BaseException] = []
    servers: list[uvicorn.Server] = []
    built = threading.Event()

    def serve() -> None:
        try:
            served = bootstrap(settings)
        except BaseException as error:
            errors.append(error)
            built.set()
            raise
        try:
            runner = served.projections()
            runner.catch_up()
            ledger = Ledger(served.store, served.rate_card, served.clock)
            app = app_from_parts(served, runner, tokens, _InlineWriter(ledger, runner))
            app.on_startup.append(_pump_starter(ledger, runner, errors))
            config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
            servers.append(uvicorn.Server(config))
        except BaseException as error:
            errors.append(error)
            raise
        finally:
            built.set()
        try:
            servers[0].run()
        finally:
            served.close()

    thread = threading.Thread(target=serve, name="console-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    built.wait(SERVER_START_TIMEOUT_S)
    while not (servers and servers[0].started):
        if errors or time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the console test server did not start: {errors}")
        time.sleep(0.02)
    return ConsoleServer(
        f"http://127.0.0.1:{port}", tokens, servers[0], thread, errors, viewer, auditor
    )


class _InlineWriter:
    """The API's writes run on the app's loop thread, where the stores were opened."""

    def __init__(self, ledger: Ledger, runner: ProjectionRunner) -> None:
        self.ledger = ledger
        self.runner = runner

    async def execute(self, commands: Sequence[Command]) -> list[Outcome]:
        outcomes = self.ledger.execute(commands)
        self.runner.catch_up()
        return outcomes


def _pump_starter(
    ledger: Ledger, runner: ProjectionRunner, errors: list[BaseException]
) -> Callable[[Litestar], None]:
    """A startup hook running, on the app's loop (so never beside a handler), what `ledger
    serve` runs between requests: the lifecycle tick and the projections' catch-up. A failure
    stops the pump and is kept in `errors`, which `ConsoleServer.stop` raises."""

    async def pump() -> None:
        try:
            while True:
                await asyncio.sleep(PUMP_INTERVAL_S)
                ledger.tick()
                runner.catch_up()
        except Exception as error:  # kept for `stop` to raise; a pump task has no caller
            errors.append(error)

    def start(app: Litestar) -> None:
        app.state["console_test_pump"] = asyncio.get_running_loop().create_task(pump())

    return start


# -- driving the page ----------------------------------------------------------------------


def wait_idle(driver: WebDriver) -> None:
    """Until the console has no request in flight (and has drawn what the last ones said)."""
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.busy") == "0"
    )


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any]) -> Any:
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=(WebDriverException,)).until(condition)


def full_page_screenshot(driver: WebDriver, path: Path, size: tuple[int, int]) -> None:
    """Emulate a viewport of `size` (phone widths as a mobile device) and save the page, from
    the top down to `MAX_SCREENSHOT_HEIGHT_PX`."""
    width, height = size
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    time.sleep(0.4)  # the chart redraws 150 ms after a resize settles
    wait_idle(driver)
    content = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {
                "x": 0,
                "y": 0,
                "width": width,
                "height": min(content["height"], MAX_SCREENSHOT_HEIGHT_PX),
                "scale": 1,
            },
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def clear_emulation(driver: WebDriver) -> None:
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def page_overflows(driver: WebDriver) -> bool:
    """True when the page scrolls sideways (wide tables must scroll inside their box)."""
    return bool(
        driver.execute_script("return document.documentElement.scrollWidth > window.innerWidth + 1")
    )
