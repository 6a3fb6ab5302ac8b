"""Support for the console's browser tests: a running `ledger serve` fed through its Redis usage
stream with known data, and a headless Chromium (Debian's `chromium` + `chromium-driver`) to
drive it.

The data goes in only the ways a deployment's would: subscriptions, seats and packs through the
admin API, usage as `XADD <stream> * data <json>` the way a gateway publishes it, each at its
instant of a manual ledger clock moved with `POST /v1/clock`. Nothing writes the ledger directly.
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.service_support import Response, Service, start_service

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
WAIT_S = 15.0
CHARGE_WAIT_S = 30.0
"""Longest the ledger may take to charge what was published (its log shows the charge)."""
CHARGE_POLL_S = 0.01
MAX_LOG_PAGE_RECORDS = 1_000  # services/api/audit.py MAX_LOG_PAGE_RECORDS
MAX_SCREENSHOT_HEIGHT_PX = 3_000
"""A long usage table is cut off here: the picture shows the top of the page."""

ANCHOR = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 2, 4, 10, 0, tzinfo=UTC)
ADMIN = "lt_console-test-admin"
MAX_TOKENS = 50_000_000  # every component at its bound: 10000 + 1000 + 60000 = 71000 credits
BOB_CHARGES = 64  # three pages of the console's usage table (25 rows)


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
    driver = webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)}
    )
    return driver


def rfc3339(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class ConsoleServer:
    """A running `ledger serve` (API + console) and the ways a test feeds and reads it."""

    serve: Service
    viewer_token: str = ""
    auditor_token: str = ""
    log_scanned: int = field(default=0)
    """The log position `charge` has read up to."""

    @property
    def url(self) -> str:
        return self.serve.api.base_url

    @property
    def console_url(self) -> str:
        return self.url + "/console/"

    def request(
        self, method: str, path: str, body: Any = None, token: str = ADMIN, **kw: Any
    ) -> Response:
        return self.serve.api.with_token(token).request(method, path, body, **kw)

    def ok(self, method: str, path: str, body: Any = None, token: str = ADMIN, **kw: Any) -> Any:
        """The JSON body of a request that must succeed."""
        reply = self.request(method, path, body, token, **kw)
        assert reply.status < 300, (method, path, reply.status, reply.body)
        return reply.body

    def get(self, path: str, token: str = ADMIN, **params: str) -> Any:
        return self.ok("GET", path, token=token, params=params)

    def status_of(self, method: str, path: str, body: Any = None, token: str = ADMIN) -> int:
        return self.request(method, path, body, token).status

    # -- feeding it as a deployment would ------------------------------------------------

    def move_clock(self, instant: datetime) -> Any:
        """`POST /v1/clock`: the manual ledger clock jumps forward to `instant`."""
        return self.ok("POST", "/v1/clock", {"now": rfc3339(instant)})

    def open(self, sub: str, seats: dict[str, str], anchor: datetime | None = None) -> None:
        body = {"subscription_id": sub}
        if anchor is not None:
            body["anchor"] = rfc3339(anchor)
        self.ok("POST", "/v1/subscriptions", body)
        for seat, tier in seats.items():
            self.ok("POST", f"/v1/subscriptions/{sub}/seats", {"seat_id": seat, "tier": tier})

    def buy_pack(self, sub: str, pack_id: str) -> None:
        self.ok("POST", f"/v1/subscriptions/{sub}/packs", {"pack_id": pack_id})

    def token(self, role: str, subscription_ids: list[str] | None = None) -> str:
        body: dict[str, Any] = {"role": role}
        if subscription_ids is not None:
            body["subscription_ids"] = subscription_ids
        created = self.ok("POST", "/v1/tokens", body)
        return str(created["token"])

    def charge(self, *events: dict[str, Any]) -> None:
        """Publish usage events on the stream and wait (bounded) until the log holds a charge
        of each; a dead letter fails at once with its reason."""
        for event in events:
            self.serve.publish_event(event)
        waiting = {str(event["event_id"]) for event in events}
        deadline = time.monotonic() + CHARGE_WAIT_S
        while waiting:
            page = self.get("/v1/log", after=str(self.log_scanned), limit=str(MAX_LOG_PAGE_RECORDS))
            for record in page["items"]:
                self.log_scanned = record["position"]
                if record["event"]["type"] == "usage.charged":
                    waiting.discard(record["event"]["event_id"])
            if not waiting:
                return
            dead = self.serve.dead_letters()
            assert not dead, f"dead-lettered: {dead}"
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not charged within {CHARGE_WAIT_S:g} s: {sorted(waiting)}\n"
                    + self.serve.log_tail()
                )
            time.sleep(CHARGE_POLL_S)

    def log_events(self, event_type: str) -> list[dict[str, Any]]:
        """Every event of `event_type` in the log, oldest first (`GET /v1/log`, all pages)."""
        found: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.get("/v1/log", after=str(after), limit=str(MAX_LOG_PAGE_RECORDS))
            found += [r["event"] for r in page["items"] if r["event"]["type"] == event_type]
            if not page["items"]:
                return found
            after = page["items"][-1]["position"]


def usage(event_id: str, sub: str, seat: str, at: datetime, **counts: Any) -> dict[str, Any]:
    """A usage event as a gateway publishes it onto the usage stream."""
    return {
        "event_id": event_id,
        "subscription_id": sub,
        "seat_id": seat,
        "model": "qwen3.6-plus",
        "occurred_at": rfc3339(at),
        **counts,
    }


def _big(event_id: str, seat: str, sub: str, at: datetime) -> dict[str, Any]:
    return usage(
        event_id,
        sub,
        seat,
        at,
        input_tokens=MAX_TOKENS,
        cached_tokens=MAX_TOKENS,
        output_tokens=MAX_TOKENS,
    )


def _bob(i: int, instant: datetime) -> dict[str, Any]:
    """Bob's i-th request: every eighth an image, the rest glm-5 text, some thinking or tools."""
    if i % 8 == 7:
        return usage(f"bob-{i:02d}", "team-1", "bob", instant, model="qwen-image-2.0", images=2)
    return usage(
        f"bob-{i:02d}",
        "team-1",
        "bob",
        instant,
        model="glm-5",
        input_tokens=100_000 + 3_000 * i,
        cached_tokens=50_000,
        output_tokens=20_000 + 500 * i,
        thinking=i % 5 == 0,
        tool_calls=i % 3,
    )


def populate(server: ConsoleServer, *, with_bob: bool = True) -> None:
    """team-1: alice (standard) charged the seed's 3.18, then overflowing into pack p1; bob
    (premium) with text, thinking, tool and image requests over two days (`with_bob`); packs p1
    and p2. team-2: carol (standard), no pack, charged past her quota: uncovered and suspended.
    Each step runs at its instant of the ledger clock, which ends at `NOW`."""
    server.open("team-1", {"alice": "standard", "bob": "premium"}, anchor=ANCHOR)
    server.open("team-2", {"carol": "standard"}, anchor=ANCHOR)
    seed_at = datetime(2026, 2, 1, 10, 0, tzinfo=UTC)
    alice_at = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)
    carol_at = datetime(2026, 2, 3, 15, 0, tzinfo=UTC)
    # The seed's worked example: 1.67 + 0.82 + 0.69 = 3.18 credits.
    seed = usage(
        "seed-1",
        "team-1",
        "alice",
        seed_at,
        input_tokens=8_349,
        cached_tokens=40_794,
        output_tokens=573,
    )
    steps: list[tuple[datetime, Callable[[], None]]] = [
        (seed_at + timedelta(seconds=1), lambda: server.charge(seed)),
        (datetime(2026, 2, 2, 10, 0, tzinfo=UTC), lambda: server.buy_pack("team-1", "p1")),
        (datetime(2026, 2, 3, 10, 0, tzinfo=UTC), lambda: server.buy_pack("team-1", "p2")),
        # 71000 on alice: 24996.82 left of her quota, then 46003.18 from p1 (expiring first).
        (alice_at, lambda: server.charge(_big("alice-big", "alice", "team-1", alice_at))),
        (carol_at, lambda: server.charge(_big("carol-1", "carol", "team-2", carol_at))),
    ]
    for i in range(BOB_CHARGES if with_bob else 0):
        instant = datetime(2026, 2, 2, 0, 30, tzinfo=UTC) + timedelta(minutes=45 * i)
        event = _bob(i, instant)
        steps.append((instant + timedelta(seconds=2), lambda event=event: server.charge(event)))
    for instant, step in sorted(steps, key=lambda s: s[0]):
        server.move_clock(instant)
        step()
    server.move_clock(NOW)


@contextmanager
def console_server(
    work_dir: Path,
    redis_url: str,
    *,
    with_bob: bool = True,
    env_overrides: Mapping[str, str] | None = None,
) -> Iterator[ConsoleServer]:
    """A `ledger serve` on a manual clock from `ANCHOR`, fed by `populate`, with a viewer token
    scoped to team-1 and an auditor token made through `POST /v1/tokens`."""
    running = contextmanager(start_service)
    with running(
        work_dir,
        redis_url,
        admin_token=ADMIN,
        clock_start=rfc3339(ANCHOR),
        env_overrides=env_overrides,
    ) as serve:
        server = ConsoleServer(serve)
        populate(server, with_bob=with_bob)
        server.viewer_token = server.token("viewer", ["team-1"])
        server.auditor_token = server.token("auditor")
        yield server


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
