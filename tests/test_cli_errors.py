"""Every `ledger` command fails in one line on stderr, `ledger: <what>`, with the exit code of
its kind (2 bad input or settings, 3 refused by the ledger, 4 something that cannot be
reached): real processes, bad input of every sort, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service_support import newcomer_env, run_ledger_in

CASES = [
    # (what, args, environment, exit code, the line starts with)
    ("an unknown command", ["nosuchcommand"], {}, 2, "ledger: No such command"),
    ("an unknown option", ["replay", "--bogus"], {}, 2, "ledger: No such option '--bogus'"),
    ("a port out of range", ["serve", "--port", "99999"], {}, 2, "ledger: Invalid value"),
    (
        "a file that is not there",
        ["backfill", "no-such-file.jsonl"],
        {},
        2,
        "ledger: Invalid value for 'SOURCE'",
    ),
    (
        "an output file that cannot be written",
        ["export", "usage", "-o", "/proc/no/such/dir/out.csv"],
        {},
        4,
        "ledger: Could not open file",
    ),
    (
        "a Redis URL that is not one",
        ["audit", "digest"],
        {"LEDGER_REDIS_URL": "http://127.0.0.1:6379"},
        2,
        "ledger: LEDGER_REDIS_URL must be a redis://",
    ),
    (
        "a --redis-url that is not one",
        ["simulate", "--redis-url", "localhost:6379", "--no-setup"],
        {},
        2,
        "ledger: --redis-url must be a redis://",
    ),
    (
        "an event with a part missing",
        ["publish", "--subscription", "t", "--seat", "s"],
        {},
        2,
        "ledger: --subscription needs --model",
    ),
    (
        "a Redis that does not answer",
        [
            *("publish", "--redis-url", "redis://127.0.0.1:1"),
            *("--subscription", "t", "--seat", "s", "--model", "m"),
        ],
        {},
        4,
        "ledger: Redis: Error 111 connecting",
    ),
    (
        "a Redis that does not answer",
        ["simulate", "--redis-url", "redis://127.0.0.1:1", "--no-setup"],
        {},
        4,
        "ledger: Redis: Error 111 connecting",
    ),
    (
        "a PostgreSQL that does not answer",
        ["--database-url", "postgresql://ledger@127.0.0.1:1/ledger", "audit", "digest"],
        {},
        4,
        "ledger: cannot connect to PostgreSQL",
    ),
    (
        "a database URL of another kind",
        ["--database-url", "mysql://x", "audit", "digest"],
        {},
        2,
        "ledger: LEDGER_DATABASE_URL must be",
    ),
    (
        "a rate card that is not there",
        ["audit", "digest"],
        {"LEDGER_RATE_CARD": "no-such-card.toml"},
        2,
        "ledger: cannot read rate card no-such-card.toml",
    ),
    (
        "a data dir that cannot be made",
        ["--data-dir", "/proc/no/such/dir", "audit", "digest"],
        {},
        4,
        "ledger: [Errno 2] No such file or directory",
    ),
    ("a bad instant", ["replay", "--until", "yesterday"], {}, 2, "ledger: as_of 'yesterday'"),
]


@pytest.mark.parametrize(
    ("args", "env", "code", "start"),
    [case[1:] for case in CASES],
    ids=[f"{case[0]}: {' '.join(case[1])}" for case in CASES],
)
def test_a_failure_is_one_line_on_stderr_with_its_exit_code(
    tmp_path: Path, args: list[str], env: dict[str, str], code: int, start: str
) -> None:
    done = run_ledger_in(tmp_path, *args, env=newcomer_env(**env))
    assert (done.returncode, done.stderr.count("\n")) == (code, 1), done.stderr
    assert done.stderr.startswith(start), done.stderr
    assert "Traceback" not in done.stderr


def test_a_group_named_without_its_command_shows_what_it_can_do(tmp_path: Path) -> None:
    done = run_ledger_in(tmp_path, "audit")
    assert done.returncode == 2
    assert "digest" in done.stdout and "verify" in done.stdout
    assert done.stderr == ""


def test_help_is_no_failure(tmp_path: Path) -> None:
    for args in (["--help"], ["publish", "-h"]):
        done = run_ledger_in(tmp_path, *args)
        assert (done.returncode, done.stderr) == (0, ""), args
        assert done.stdout.startswith("Usage: ")
