"""The README's examples, run as a new user runs them: from a fresh folder, after the README's own
setup lines, against a real server. Only the server's address is changed (the README's is the
default port; the tests' server is on a free one), and ids the README shows shortened (`f8df0ba3…`)
are the ones the previous command printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Server

README = (Path(__file__).parent.parent / "README.md").read_text()
DEFAULT_ADDRESS = "127.0.0.1:8000"
SHORTENED_ID = re.compile(r"\b[0-9a-f]{6,}…")


def blocks(text: str = README) -> list[tuple[str, str]]:
    """The fenced code blocks of `text`: (language, content)."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)


def block_after(marker: str, language: str) -> str:
    return next(content for kind, content in blocks(README[README.index(marker) :]) if kind == language)


def shell(command: str, cwd: Path, server: Server) -> subprocess.CompletedProcess:
    """`command` in bash, as in a shell where the README's setup lines ran."""
    address = server.url.removeprefix("http://")
    command = command.replace(DEFAULT_ADDRESS, address).replace("localhost:8000", address)
    env = {**os.environ, "BOOSTREAM_SERVER": server.url, "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        ["bash", "-c", f". .venv/bin/activate && {command}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def fresh_folder(tmp_path_factory: pytest.TempPathFactory, server: Server) -> Path:
    """A folder where the README's setup block ran; `.venv` is the one running these tests."""
    folder = tmp_path_factory.mktemp("newcomer")
    (folder / ".venv").symlink_to(sys.prefix)
    setup = next(block for _, block in blocks() if "boostream demo-data" in block)
    for line in setup.splitlines():
        command = line.split("  #")[0].strip()
        if command and not command.startswith(". .venv/bin/activate"):
            ran = shell(command, folder, server)
            assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
    assert {path.name for path in (folder / "demo").iterdir()} >= {"iris.csv", "diabetes.parquet", "diabetes.json"}
    return folder


def test_the_cli_examples_run_as_printed(fresh_folder: Path, server: Server):
    example = block_after("**CLI.**", "").splitlines()
    commands = [(i, line[2:]) for i, line in enumerate(example) if line.startswith("$ ")]
    assert len(commands) >= 2
    artifact_id = None
    for i, command in commands:
        if artifact_id is not None:
            command = SHORTENED_ID.sub(artifact_id, command)
        ran = shell(command, fresh_folder, server)
        assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
        assert "Traceback" not in ran.stderr, ran.stderr
        shown = example[i + 1] if i + 1 < len(example) else ""
        if shown and not shown.startswith("$ ") and not re.search(r"[\d…]", shown):  # output with nothing that varies
            assert ran.stdout.splitlines()[0] == shown
        if found := re.search(r"artifact ([0-9a-f]{32})", ran.stdout + ran.stderr):
            artifact_id = found.group(1)
    assert artifact_id is not None


def test_the_mcp_example_runs_as_printed(fresh_folder: Path, server: Server):
    script = block_after("**MCP.**", "python").replace(f"http://{DEFAULT_ADDRESS}", server.url)
    (fresh_folder / "agent.py").write_text(script)
    ran = shell("python agent.py", fresh_folder, server)
    assert ran.returncode == 0, ran.stderr
    assert "TypeError" not in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert re.search(r"round 300 of 300; train_l2 [\d.]+, valid_l2 [\d.]+", ran.stdout), ran.stdout
    assert re.search(r"^predictions: \[[\d.]+, [\d.]+, [\d.]+\]$", ran.stdout, re.M), ran.stdout


def curl_examples() -> list[tuple[str, str]]:
    """Each runnable curl command of the README (ids shortened with … cannot run), with the line
    the README prints after it, if any."""
    examples = []
    for _, block in blocks():
        lines = block.replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            command = line.removeprefix("$ ").split("   #")[0].strip()
            if not command.startswith("curl "):
                continue
            end = i
            while command.count("'") % 2:  # a quoted body over several lines
                end += 1
                command += "\n" + lines[end]
            if "…" not in command:
                examples.append((command, lines[end + 1] if end + 1 < len(lines) else ""))
    return examples


@pytest.mark.parametrize("command, shown", curl_examples(), ids=[c[:60] for c, _ in curl_examples()])
def test_the_curl_examples_run_as_printed(fresh_folder: Path, server: Server, command: str, shown: str):
    ran = shell(command, fresh_folder, server)
    assert ran.returncode == 0, ran.stderr
    if shown.startswith('{"error"'):
        assert ran.stdout == shown, "the README shows the error the server gives"
    elif "/stream" in command:
        assert "event: complete" in ran.stdout, ran.stdout[-2000:]
    else:
        assert ran.stdout.startswith("{") and '"error":{' not in ran.stdout, ran.stdout[:2000]
