"""The projector process: it brings the read model tables to the log's head on its own, only
one writes a read store at a time, and it does not outlive the process that started it. The
first two run over both kinds of store: SQLite files, and the log and read models in one
PostgreSQL schema."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.log import us_from_datetime
from projections.balances import dump
from projections.replay import balances_as_of
from schemas.usage import UsageEvent
from services.bootstrap import bootstrap, open_event_store, open_read_store
from services.config import Settings
from services.projector import Projector
from tests.workload import START, Workload

WAIT_S = 30.0


def written_log(settings: Settings, events: int = 600, seed: int = 5) -> int:
    """A decided workload appended to the settings' log; returns its head position."""
    clock = ManualClock(us_from_datetime(START))
    parts = bootstrap(settings, clock)
    ledger = Ledger(parts.store, parts.rate_card, clock)
    for step in Workload(seed=seed, events=events).steps():
        clock.set(max(clock.now_us(), us_from_datetime(step.at)))
        ledger.tick()
        ledger.execute([c for c in step.commands if not isinstance(c, UsageEvent)])
        ledger.charge([c for c in step.commands if isinstance(c, UsageEvent)])
    head = parts.store.head().position
    parts.close()
    return head


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path)
    return Settings(
        data_dir=tmp_path,
        database_url=request.getfixturevalue("postgres_url"),
        database_schema=request.getfixturevalue("postgres_schema"),
    )


def checkpoint(settings: Settings) -> int:
    events = open_event_store(settings)
    store = open_read_store(settings, events)
    try:
        return store.checkpoint()
    finally:
        store.close()
        events.close()


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_projector_brings_the_tables_to_the_head_equal_to_a_replay(settings: Settings) -> None:
    head = written_log(settings)
    projector = Projector(settings)
    projector.start()
    try:
        wait_for(lambda: checkpoint(settings) == head, "the projector to reach the head")
    finally:
        projector.stop()
    parts = bootstrap(settings)
    try:
        tables = parts.read_store.load_balances()
        assert dump(tables) == dump(balances_as_of(parts.store, head))
    finally:
        parts.close()


def test_a_second_projector_waits_for_the_first_to_stop(settings: Settings) -> None:
    written_log(settings, events=50)
    first, second = Projector(settings), Projector(settings)
    first.start()
    try:
        wait_for(lambda: checkpoint(settings) > 0, "the first projector")
        second.start()
        time.sleep(1.0)
        assert second.alive, "the second one waits on the lock instead of failing"
        head = written_log(settings, events=50, seed=6)
        wait_for(lambda: checkpoint(settings) == head, "the head")
        first.stop()
        assert second.alive
        head = written_log(settings, events=50, seed=7)
        wait_for(lambda: checkpoint(settings) == head, "the second projector to take over")
    finally:
        first.stop()
        second.stop()


def test_the_projector_stops_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    written_log(settings, events=50)
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "\n".join(
                [
                    "import time",
                    "from pathlib import Path",
                    "from services.config import Settings",
                    "from services.projector import Projector",
                    f"projector = Projector(Settings(data_dir=Path({str(tmp_path)!r})))",
                    "projector.start()",
                    "print(projector.pid, flush=True)",
                    "time.sleep(600)",
                ]
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    wait_for(lambda: checkpoint(settings) > 0, "the projector to start")
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def child_gone() -> bool:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return True
        # A zombie re-parented to us (or to init) counts as gone once it has exited.
        state = Path(f"/proc/{child_pid}/stat").read_text().split()[2]
        return state == "Z"

    wait_for(child_gone, "the orphaned projector to exit")
