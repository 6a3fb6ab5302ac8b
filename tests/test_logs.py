"""How log lines look: JSON lines for machines, structlog's console rendering at a terminal, and
LEDGER_LOG_FORMAT choosing either (real processes, with stderr a file or a pseudo-terminal)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

LOG_ONE_LINE = (
    "import structlog;"
    "from services.config import Settings;"
    "from services.logs import configure_logging;"
    "configure_logging(Settings.from_env().log_format);"
    "structlog.get_logger('t').info('hello', answer=42)"
)
READ_CHUNK_BYTES = 4_096


def env_with(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(changes)
    return env


def logged_to_a_file(**env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", LOG_ONE_LINE],
        env=env_with(**env),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stderr


def logged_to_a_terminal(**env: str) -> str:
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", LOG_ONE_LINE],
            env=env_with(**env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
        )
        os.close(terminal)
        output = b""
        while True:
            try:
                chunk = os.read(controller, READ_CHUNK_BYTES)
            except OSError:  # the terminal's other end closed: the process is done
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=30) == 0
    finally:
        os.close(controller)
    return output.decode(errors="replace")


def is_json_line(text: str) -> bool:
    try:
        return json.loads(text.strip())["event"] == "hello"
    except (ValueError, KeyError):
        return False


def test_log_lines_are_json_when_stderr_is_not_a_terminal() -> None:
    line = logged_to_a_file()
    assert json.loads(line) | {"timestamp": "-"} == {
        "answer": 42,
        "event": "hello",
        "level": "info",
        "timestamp": "-",
    }


def test_log_lines_are_rendered_for_people_at_a_terminal() -> None:
    text = logged_to_a_terminal()
    assert "hello" in text and "answer" in text
    assert not is_json_line(text)


def test_ledger_log_format_console_renders_for_people_even_into_a_file() -> None:
    text = logged_to_a_file(LEDGER_LOG_FORMAT="console")
    assert "hello" in text and "answer=42" in text
    assert not is_json_line(text)
    assert "\x1b[" not in text  # no colour codes where no terminal shows them


def test_ledger_log_format_json_writes_json_lines_even_at_a_terminal() -> None:
    assert is_json_line(logged_to_a_terminal(LEDGER_LOG_FORMAT="json"))


@pytest.mark.parametrize("value", ["xml", "JSON ", "pretty"])
def test_an_unknown_log_format_stops_the_cli_in_one_line_naming_the_variable(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "audit", "digest"],
        env=env_with(LEDGER_LOG_FORMAT=value),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("ledger: LEDGER_LOG_FORMAT must be json or console")
    assert result.stderr.count("\n") == 1
