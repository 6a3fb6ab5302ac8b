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


def test_the_audit_lists_each_admin_write_it_checked_with_who_asked_and_why(cli: Any) -> None:
    assert cli("backfill", "-", input=CORRECTED).exit_code == 0
    audit = cli("audit", "verify", "--admin-writes")
    assert audit.exit_code == 0, audit.output
    listed = [line.split("\t") for line in audit.output.splitlines()[1:]]
    who = "token tok_alice-admin (admin)"
    assert [row[1:] for row in listed] == [
        ["subscription.opened", "team-1", f"{who}: signed"],
        ["seat.added", "team-1", who],
        ["usage.reversed", "team-1", f"{who}: published twice, in part"],
        ["seat.adjusted", "team-1", f"{who}: a correction of a correction"],
        ["grant.issued", "team-1", f"{who}: goodwill"],
    ]
    assert [int(row[0]) for row in listed] == sorted(int(row[0]) for row in listed)


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


# -- ledger rerate ----------------------------------------------------------------------------

QWEN = """
[versions.models."qwen3.6-plus"]
product = "text"
input_per_1k = "0.2"
cached_per_1k = "0.02"
output_per_1k = "{output}"
thinking_per_1k = "0.4"
tool_call = "0.01"
assumed = ["thinking_per_1k", "tool_call"]
"""


def card(*versions: tuple[str, str, str]) -> str:
    """A rate card of qwen3.6-plus alone: (version, effective_from, output rate) each."""
    return "".join(
        f'[[versions]]\nversion = "{name}"\neffective_from = {start}\n' + QWEN.format(output=rate)
        for name, start, rate in versions
    )


MISPRICED_HOUR = card(
    ("v1", "2000-01-01T00:00:00Z", "1.2"),
    ("v1-doubled", "2026-02-01T10:00:00Z", "2.4"),  # the mistake: output at twice the rate
    ("v2", "2026-02-01T11:00:00Z", "1.2"),
)
FIXED = card(("fix-1", "2000-01-01T00:00:00Z", "1.2"))


def charge_at(at: str, event_id: str, seat: str = "alice") -> dict[str, Any]:
    return {"at": at, **USAGE, "seat_id": seat, "event_id": event_id}


def mispriced_log() -> str:
    return lines(
        {"at": "2026-01-31T09:00:00Z", "type": "subscription.open", "subscription_id": "team-1"},
        *(
            {
                "at": "2026-01-31T09:00:00Z",
                "type": "seat.add",
                "subscription_id": "team-1",
                "seat_id": seat,
                "tier": "standard",
            }
            for seat in ("alice", "bob")
        ),
        charge_at("2026-02-01T09:30:00Z", "before"),
        charge_at("2026-02-01T10:15:00Z", "in-1"),
        charge_at("2026-02-01T10:30:00Z", "in-2", "bob"),
        charge_at("2026-02-01T10:45:00Z", "in-3"),
        charge_at("2026-02-01T11:30:00Z", "after"),
    )


@pytest.fixture
def mispriced(tmp_path: Path) -> Any:
    """`ledger` over a data dir whose rate card doubled qwen3.6-plus's output rate for an hour,
    with a log charged under it, and the card that should have priced it."""
    (tmp_path / "ledger-card.toml").write_text(MISPRICED_HOUR)
    (tmp_path / "fixed.toml").write_text(FIXED)
    runner = CliRunner()
    env = {
        "LEDGER_RATE_CARD": str(tmp_path / "ledger-card.toml"),
        "LEDGER_CLOCK": "manual",  # corrections are made on 2 February, in the same cycle
        "LEDGER_CLOCK_START": "2026-02-02T00:00:00Z",
    }

    def run(*args: str, input: str | None = None) -> Any:
        return runner.invoke(main, ["--data-dir", str(tmp_path), *args], input=input, env=env)

    assert json.loads(run("backfill", "-", input=mispriced_log()).output)["rejected"] == 0
    return run, str(tmp_path / "fixed.toml")


HOUR = ("--from", "2026-02-01T10:00:00Z", "--to", "2026-02-01T11:00:00Z")


def _head(run: Any) -> int:
    position: int = json.loads(run("audit", "digest").output)["position"]
    return position


def test_rerate_shows_the_exact_difference_applies_it_once_and_the_audit_passes(
    mispriced: Any,
) -> None:
    run, fixed = mispriced
    dry = run("rerate", *HOUR, "--rate-card", fixed)
    assert dry.exit_code == 0, dry.output
    # 573 output tokens: 0.69 at 1.2 per 1K, 1.38 at 2.4; so 3.87 charged where 3.18 was due.
    assert [row.split() for row in dry.output.splitlines()] == [
        ["subscription", "seat", "charges", "charged", "rerated", "difference"],
        ["team-1", "alice", "2", "7.74", "6.36", "-1.38"],
        ["team-1", "bob", "1", "3.87", "3.18", "-0.69"],
        ["total", "3", "11.61", "9.54", "-2.07"],
        ["dry", "run:", "nothing", "written", "(--apply", "makes", "the", "corrections)"],
    ]
    head = _head(run)
    applied = run("rerate", *HOUR, "--rate-card", fixed, "--apply")
    assert applied.exit_code == 0, applied.output
    assert applied.output.splitlines()[-1] == (
        "applied: 3 corrections written, 0 made before, 0 refused"
    )
    assert _head(run) == head + 3
    assert run("audit", "verify").exit_code == 0
    again = run("rerate", *HOUR, "--rate-card", fixed, "--apply")
    assert again.output.splitlines()[-1] == (
        "applied: 0 corrections written, 3 made before, 0 refused"
    )
    assert _head(run) == head + 3
    usage = list(csv.DictReader(io.StringIO(run("export", "usage").output)))
    reversals = {r["reverses"]: (r["credits"], r["reason"]) for r in usage if r["reverses"]}
    assert reversals == {e: ("-0.69", "rerate:fix-1") for e in ("in-1", "in-2", "in-3")}
    charged = {r["event_id"]: r["reversed_credits"] for r in usage if r["kind"] == "charge"}
    assert charged == {
        "before": "0.00",
        "in-1": "0.69",
        "in-2": "0.69",
        "in-3": "0.69",
        "after": "0.00",
    }


def test_rerate_takes_an_undercharge_from_the_seat_and_reports_what_is_refused(
    mispriced: Any, tmp_path: Path
) -> None:
    run, _ = mispriced
    (tmp_path / "dearer.toml").write_text(card(("dear-1", "2000-01-01T00:00:00Z", "12")))
    dearer = str(tmp_path / "dearer.toml")
    before = ("--from", "2026-02-01T09:00:00Z", "--to", "2026-02-01T10:00:00Z")
    applied = run("rerate", *before, "--rate-card", dearer, "--apply")
    assert applied.exit_code == 0, applied.output
    log = list(csv.DictReader(io.StringIO(run("export", "log").output)))
    [taken] = [row for row in log if row["type"] == "seat.adjusted"]
    # 573 output tokens at 12 per 1K: 6.88 where 0.69 was charged.
    assert (taken["seat_id"], taken["credits"], taken["reason"]) == (
        "alice",
        "-6.19",
        "rerate:dear-1",
    )
    assert taken["id"].startswith("rerate-")
    (tmp_path / "absurd.toml").write_text(card(("absurd-1", "2000-01-01T00:00:00Z", "100000")))
    refused = run("rerate", *HOUR, "--rate-card", str(tmp_path / "absurd.toml"), "--apply")
    assert refused.exit_code == 3
    assert "refused for team-1/in-1" in refused.stderr
    assert run("audit", "verify").exit_code == 0
    bad = run(
        "rerate",
        "--from",
        "2026-02-01T11:00:00Z",
        "--to",
        "2026-02-01T10:00:00Z",
        "--rate-card",
        dearer,
    )
    assert bad.exit_code == 2 and "--to must be later" in bad.stderr
