"""The `ledger` command line over a real SQLite log: backfill, replay, audit, export."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from services.cli import main

SEED_USAGE = {
    "event_id": "seed-1",
    "subscription_id": "team-1",
    "seat_id": "alice",
    "model": "qwen3.6-plus",
    "input_tokens": 8349,
    "cached_tokens": 40794,
    "output_tokens": 573,
    "occurred_at": "2026-02-01T10:00:00Z",
}


def lines(*items: dict) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


HISTORY = lines(
    {"at": "2026-01-31T09:00:00Z", "type": "subscription.open", "subscription_id": "team-1"},
    {
        "at": "2026-01-31T09:00:00Z",
        "type": "seat.add",
        "subscription_id": "team-1",
        "seat_id": "alice",
        "tier": "standard",
    },
    {
        "at": "2026-01-31T09:00:00Z",
        "type": "seat.add",
        "subscription_id": "team-1",
        "seat_id": "bob",
        "tier": "premium",
    },
    {"at": "2026-02-01T10:00:01Z", **SEED_USAGE},
    {
        "at": "2026-02-02T10:00:00Z",
        "type": "pack.buy",
        "subscription_id": "team-1",
        "pack_id": "p1",
    },
    {
        "at": "2026-02-03T10:00:00Z",
        **SEED_USAGE,
        "event_id": "big",
        "input_tokens": 10_000_000,
        "cached_tokens": 0,
        "output_tokens": 20_000_000,
    },
    {"at": "2026-02-03T10:00:00Z", **SEED_USAGE},
    {"at": "2026-02-04T10:00:00Z", **SEED_USAGE, "output_tokens": 1},
    {"at": "2026-02-04T10:00:00Z", **SEED_USAGE, "event_id": "x", "model": "gpt-99"},
)


@pytest.fixture
def cli(tmp_path: Path):
    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(main, ["--data-dir", str(tmp_path), *args], input=input)

    return run


@pytest.fixture
def history(cli):
    result = cli("backfill", "-", input=HISTORY)
    assert result.exit_code == 0, result.output
    return result


def test_backfill_reports_applied_duplicate_and_rejected_lines(history):
    summary = json.loads(history.stdout.strip().splitlines()[-1])
    assert (summary["applied"], summary["duplicate"], summary["rejected"]) == (6, 1, 2)
    refused = [json.loads(line) for line in history.stderr.strip().splitlines()]
    assert [(r["line"], r["reason"]) for r in refused] == [
        (8, "duplicate_conflict"),
        (9, "unknown_model"),
    ]


def test_replay_prints_balances_as_of_the_head(cli, history):
    result = cli("replay", "--json")
    assert result.exit_code == 0, result.output
    [view] = [json.loads(line) for line in result.stdout.splitlines()]
    alice = next(seat for seat in view["seats"] if seat["seat_id"] == "alice")
    assert (alice["used_ucr"], alice["status"]) == (25_000_000_000, "active")
    [pack] = view["packs"]
    assert pack["remaining_ucr"] == 625_000_000_000 - (26_000_000_000 - 25_000_000_000 + 3_180_000)


def test_replay_until_an_instant_answers_the_past(cli, history):
    result = cli("replay", "--json", "--until", "2026-02-01T23:00:00Z")
    [view] = [json.loads(line) for line in result.stdout.splitlines()]
    alice = next(seat for seat in view["seats"] if seat["seat_id"] == "alice")
    assert alice["used_ucr"] == 3_180_000
    assert view["packs"] == []


def test_replay_until_a_position_and_a_bad_bound(cli, history):
    assert "as of position 3" in cli("replay", "--until", "position:3").stdout
    bad = cli("replay", "--until", "last tuesday")
    assert bad.exit_code == 2
    assert bad.stderr.startswith("ledger: ") and len(bad.stderr.strip().splitlines()) == 1


def test_audit_verify_passes_on_an_untouched_log(cli, history):
    result = cli("audit", "verify")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: ")


def test_audit_digest_prints_the_head_position_and_hash(cli, history):
    digest = json.loads(cli("audit", "digest").stdout)
    assert digest["position"] > 0 and len(digest["hash"]) == 64


@pytest.mark.parametrize("position", [1, 4, 7])
def test_changing_one_byte_of_one_record_fails_the_audit_at_exactly_that_position(
    cli, history, tmp_path, position
):
    assert json.loads(cli("audit", "digest").stdout)["position"] == 7
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        (data,) = db.execute("SELECT data FROM log WHERE position = ?", (position,)).fetchone()
        tampered = bytearray(data)
        index = tampered.index(b"team-1")
        tampered[index] ^= 0x01  # 't' becomes 'u'
        db.execute("UPDATE log SET data = ? WHERE position = ?", (bytes(tampered), position))
    result = cli("audit", "verify")
    assert result.exit_code == 1
    assert f"audit failed at position {position}:" in result.stderr


def test_a_charge_rewritten_with_its_hash_recomputed_still_fails_the_audit(cli, history, tmp_path):
    """Re-hashing the chain hides a tampered byte from the chain check, not from re-pricing."""
    from ledger.log import EVENT_DECODER, EVENT_ENCODER, record_hash
    from schemas.events import UsageCharged

    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        rows = db.execute(
            "SELECT position, recorded_at_us, data FROM log ORDER BY position"
        ).fetchall()
        charge_at = next(p for p, _, d in rows if isinstance(EVENT_DECODER.decode(d), UsageCharged))
        prev = bytes(32)
        for position, recorded, data in rows:
            if position == charge_at:
                charge = EVENT_DECODER.decode(data)
                assert isinstance(charge, UsageCharged) and charge.credits_ucr == 3_180_000
                data = EVENT_ENCODER.encode(msgspec.structs.replace(charge, credits_ucr=3_170_000))
            digest = record_hash(prev, position, recorded, data)
            db.execute(
                "UPDATE log SET data = ?, prev_hash = ?, hash = ? WHERE position = ?",
                (data, prev, digest, position),
            )
            prev = digest
    result = cli("audit", "verify")
    assert result.exit_code == 1
    assert f"audit failed at position {charge_at}:" in result.stderr


def test_export_usage_as_csv_has_one_row_per_charge(cli, history):
    result = cli("export", "usage", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["event_id"] for r in rows] == ["seed-1", "big"]
    assert (rows[0]["credits"], rows[0]["allocation"]) == ("3.18", "seat:alice=3.18")
    assert (rows[1]["credits"], rows[1]["pack_credits"]) == ("26000.00", "1003.18")


def test_export_usage_as_jsonl_filtered_by_time(cli, history):
    result = cli("export", "usage", "--format", "jsonl", "--from", "2026-02-02T00:00:00Z")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["event_id"] for r in rows] == ["big"]


def test_a_malformed_backfill_line_exits_non_zero_with_one_line(cli):
    result = cli("backfill", "-", input='{"type": "seat.add", "tier": "gold"}\n')
    assert result.exit_code == 2
    assert result.stderr.startswith("ledger: line 1:")


def test_every_command_has_help():
    for args in (
        ["--help"],
        ["replay", "--help"],
        ["audit", "verify", "--help"],
        ["audit", "digest", "--help"],
        ["export", "usage", "--help"],
        ["backfill", "--help"],
    ):
        assert CliRunner().invoke(main, args).exit_code == 0


def test_the_installed_entry_point_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(tmp_path), "audit", "digest"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == {"position": 0, "hash": "00" * 32}


def test_snapshots_are_created_shown_with_their_validity_and_pruned(cli, history, tmp_path):
    assert cli("snapshot", "show").stdout == "no snapshots\n"
    created = cli("snapshot", "create")
    assert created.exit_code == 0, created.output
    assert created.stdout.startswith("snapshot at position 7: ")
    assert "position 7 " in cli("snapshot", "show").stdout
    assert cli("snapshot", "show").stdout.rstrip().endswith("valid")
    with sqlite3.connect(tmp_path / "ledger.snapshots.sqlite3") as db:
        db.execute("UPDATE snapshots SET state = substr(state, 1, 10)")
    assert "skipped: its checksum does not match" in cli("snapshot", "show").stdout
    again = cli("snapshot", "create")
    assert again.exit_code == 0, again.output
    for until in ("position:7", "position:5"):
        full = cli("replay", "--json", "--until", until)
        assert full.exit_code == 0, full.output
        assert cli("replay", "--json", "--from-snapshot", "--until", until).stdout == full.stdout
    pruned = cli("snapshot", "prune", "--keep", "1")
    assert (pruned.exit_code, pruned.stdout) == (0, "deleted 0 snapshot(s)\n")
    assert cli("snapshot", "prune", "--keep", "0").exit_code == 2
