"""The command line and corrections: `ledger export log` lists the admin writes with who asked
and why; `ledger export usage` shows reversals beside the charges they reverse; the audit
passes over a log with every correction."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from services.cli import main

ACTOR = {"token_id": "tok_alice-admin", "role": "admin"}
USAGE = {
    "subscription_id": "team-1",
    "seat_id": "alice",
    "model": "qwen3.6-plus",
    "input_tokens": 8349,
    "cached_tokens": 40794,
    "output_tokens": 573,
    "occurred_at": "2026-02-01T10:00:00Z",
}


def lines(*items: dict[str, Any]) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


CORRECTED = lines(
    {
        "at": "2026-01-31T09:00:00Z",
        "type": "subscription.open",
        "subscription_id": "team-1",
        "actor": ACTOR,
        "reason": "signed",
    },
    {
        "at": "2026-01-31T09:00:00Z",
        "type": "seat.add",
        "subscription_id": "team-1",
        "seat_id": "alice",
        "tier": "standard",
        "actor": ACTOR,
    },
    {"at": "2026-02-01T10:00:01Z", **USAGE, "event_id": "e1"},
    {"at": "2026-02-01T10:00:02Z", **USAGE, "event_id": "e2"},
    {
        "at": "2026-02-02T10:00:00Z",
        "type": "usage.reverse",
        "subscription_id": "team-1",
        "event_id": "e2",
        "reversal_id": "r1",
        "credits_ucr": 1_000_000,
        "reason": "published twice, in part",
        "actor": ACTOR,
    },
    {
        "at": "2026-02-02T10:00:00Z",
        "type": "seat.adjust",
        "subscription_id": "team-1",
        "seat_id": "alice",
        "adjustment_id": "a1",
        "credits_ucr": -2_000_000,
        "reason": "a correction of a correction",
        "actor": ACTOR,
    },
    {
        "at": "2026-02-02T10:00:00Z",
        "type": "grant.issue",
        "subscription_id": "team-1",
        "grant_id": "g1",
        "credits_ucr": 5_000_000,
        "expires_at": "2026-02-10T00:00:00Z",
        "reason": "goodwill",
        "actor": ACTOR,
    },
)


@pytest.fixture
def cli(tmp_path: Path) -> Any:
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Any:
        return runner.invoke(main, ["--data-dir", str(tmp_path), *args], input=input)

    return run


def test_export_log_lists_admin_writes_with_who_asked_and_why(cli: Any) -> None:
    assert cli("backfill", "-", input=CORRECTED).exit_code == 0
    done = cli("export", "log", "--format", "csv")
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(io.StringIO(done.output)))
    assert [(r["type"], r["id"], r["credits"], r["reason"]) for r in rows] == [
        ("subscription.opened", "team-1", "", "signed"),
        ("seat.added", "alice", "25000.00", ""),
        ("usage.reversed", "r1", "1.00", "published twice, in part"),
        ("seat.adjusted", "a1", "-2.00", "a correction of a correction"),
        ("grant.issued", "g1", "5.00", "goodwill"),
    ]
    assert {(r["actor_token_id"], r["actor_role"]) for r in rows} == {("tok_alice-admin", "admin")}
    assert rows[2]["event_id"] == "e2" and rows[2]["parts"] == "seat:alice=1.00(returned)"
    jsonl = cli("export", "log", "--format", "jsonl", "--subscription", "team-1")
    assert jsonl.exit_code == 0, jsonl.output
    entries = [json.loads(line) for line in jsonl.output.splitlines()]
    assert [e["type"] for e in entries] == [r["type"] for r in rows]
    assert entries[3]["actor"] == ACTOR and entries[3]["event"]["credits_ucr"] == -2_000_000
    audit = cli("audit", "verify")
    assert audit.exit_code == 0 and "5 admin writes, 3 of them corrections" in audit.output


def test_export_usage_shows_a_reversal_beside_the_charge_it_reverses(cli: Any) -> None:
    assert cli("backfill", "-", input=CORRECTED).exit_code == 0
    done = cli("export", "usage", "--format", "csv")
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(io.StringIO(done.output)))
    assert [
        (r["kind"], r["event_id"], r["credits"], r["reverses"], r["reversed_credits"]) for r in rows
    ] == [
        ("charge", "e1", "3.18", "", "0.00"),
        ("charge", "e2", "3.18", "", "1.00"),
        ("reversal", "r1", "-1.00", "e2", "0.00"),
    ]
    assert rows[2]["seat_credits"] == "-1.00" and rows[2]["reason"] == "published twice, in part"
    jsonl = cli("export", "usage", "--format", "jsonl")
    reversal = [json.loads(line) for line in jsonl.output.splitlines()][-1]
    assert (reversal["kind"], reversal["reverses"], reversal["credits_ucr"]) == (
        "reversal",
        "e2",
        -1_000_000,
    )
