"""The README cannot rot: its walkthrough runs, command by command, against a real `ledger
serve` started as the quick start starts it (every default but the port), and every `# →` line
must be in the answer of the command above it; its tables name every setting the code reads
and every command; its links lead somewhere; and nothing in the repository points outside it."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import click

from services.cli import main
from tests.service_support import HTTP_TIMEOUT_S, DefaultService, newcomer_env

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
WALKTHROUGH_MARKER = "<!-- walkthrough:"
DEFAULT_URL_LINE = "URL=http://127.0.0.1:8080"
EXPECT_PREFIX = "# →"
STEP_MARK = "@@walkthrough-step@@"
WALKTHROUGH_TIMEOUT_S = 120
OUTSIDE_POINTERS = re.compile(r"\bSPEC\b|SPEC\.md|STYLE\.md|\.\./shared")
CHECKED_SUFFIXES = {".py", ".md", ".js", ".html", ".css", ".toml", ".yaml", ".json", ".txt"}
CHECKED_TOP = ("schemas", "ledger", "projections", "services", "tests", "bench", "docs", ".ci")


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def walkthrough(text: str) -> list[Step]:
    """The commands of the README's walkthrough block, each with the `# →` lines after it;
    a line ending in a backslash goes on on the next one."""
    block = text.split(WALKTHROUGH_MARKER, 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    steps: list[Step] = []
    pending = ""
    for line in block.splitlines():
        if line.startswith(EXPECT_PREFIX):
            steps[-1].expected.append(line.removeprefix(EXPECT_PREFIX).strip())
        elif not line.strip() or line.lstrip().startswith("#"):
            continue
        elif line.endswith("\\"):
            pending += line[:-1]
        else:
            steps.append(Step(pending + line))
            pending = ""
    return steps


def squeezed(text: str) -> str:
    """Without whitespace: `"used": "3.18"` reads the same pretty-printed or compact."""
    return re.sub(r"\s+", "", text)


def ledger_on_path(bin_dir: Path) -> None:
    """`ledger` as the walkthrough calls it: this tree's CLI, in this interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "ledger"
    shim.write_text(
        f'#!/bin/sh\nPYTHONPATH="{ROOT}${{PYTHONPATH:+:$PYTHONPATH}}" '
        f'exec "{sys.executable}" -m services.cli "$@"\n'
    )
    shim.chmod(0o755)


def run_walkthrough(steps: list[Step], serve: DefaultService, bin_dir: Path) -> list[str]:
    """Run every step in one shell (definitions carry over), in the serve's directory; the
    output of each step."""
    script = ["set -eu -o pipefail"]
    for step in steps:
        command = step.command
        if command == DEFAULT_URL_LINE:  # the one thing that differs: a free port
            command = f"URL={serve.base_url}"
        script += [command, f"echo {STEP_MARK}"]
    ledger_on_path(bin_dir)
    env = newcomer_env()
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=serve.workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WALKTHROUGH_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{serve.log_tail()}"
    outputs = done.stdout.split(STEP_MARK + "\n")
    assert len(outputs) == len(steps) + 1, done.stdout
    return outputs[:-1]


def test_the_walkthrough_works_verbatim_against_a_fresh_serve(
    default_serve: DefaultService, tmp_path: Path
) -> None:
    steps = walkthrough(README.read_text())
    assert steps[0].command == DEFAULT_URL_LINE
    assert any(step.command.startswith("ledger publish") for step in steps)
    outputs = run_walkthrough(steps, default_serve, tmp_path / "bin")
    for step, output in zip(steps, outputs, strict=True):
        for expected in step.expected:
            assert squeezed(expected) in squeezed(output), (step.command, expected, output)


def test_the_console_the_walkthrough_points_at_answers(default_serve: DefaultService) -> None:
    assert "http://127.0.0.1:8080/console/" in README.read_text()
    url = f"{default_serve.base_url}/console/"
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as reply:
        assert reply.status == 200
        assert b"<html" in reply.read().lower()


def test_the_quick_start_runs_what_ci_runs() -> None:
    text = README.read_text()
    assert "pip install -e '.[embedded-redis]' && ledger serve" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && python -m pytest" in ci
    assert "pip install -e '.[test]' && python -m pytest" in text


def test_the_configuration_table_names_every_variable_the_settings_read() -> None:
    read = set(re.findall(r"LEDGER_[A-Z_]+", (ROOT / "services" / "config.py").read_text()))
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `LEDGER_")]
    documented = set(
        re.findall(r"`(LEDGER_[A-Z_]+)`", "\n".join(row.split(" | ")[0] for row in rows))
    )
    assert documented == read


def test_the_command_table_names_every_command() -> None:
    text = README.read_text()
    for name, command in main.commands.items():
        paths = [name]
        if isinstance(command, click.Group):
            paths = [f"{name} {sub}" for sub in command.commands]
        for path in paths:
            first = path.split(" ")[0]
            assert f"`ledger {path}" in text or f"`ledger {first} " in text, path


def test_every_link_of_the_readme_and_the_docs_leads_to_a_file() -> None:
    for page in [README, *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), (page.name, target)


def test_nothing_in_the_repository_points_outside_it() -> None:
    this = Path(__file__).resolve()
    files = [README, ROOT / "compose.yaml", ROOT / "Dockerfile", ROOT / "pyproject.toml"]
    for top in CHECKED_TOP:
        files += [
            path
            for path in (ROOT / top).rglob("*")
            if path.suffix in CHECKED_SUFFIXES or path.name == "run"
        ]
    for path in files:
        if path == this or "tests/data" in path.as_posix() or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            assert not OUTSIDE_POINTERS.search(line), f"{path.relative_to(ROOT)}:{number}: {line}"
