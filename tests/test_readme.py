"""The README's commands run as written: each command line of its shell blocks in a fresh shell with the
environment activated as the README says (with ``--help``: the program is found and takes the options as
written), and its Python example as it stands."""
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ACTIVATE = ROOT / ".venv" / "bin" / "activate"


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def command_lines():
    """Every command of the README's bash blocks but ``make`` (the set-up itself): continuations joined,
    comments dropped."""
    commands = []
    for block in blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #", 1)[0].strip()
            if command and not command.startswith(("#", "make ")):
                commands.append(command)
    return commands


def test_the_readme_says_how_to_activate_and_shows_commands():
    assert "source .venv/bin/activate" in README
    assert len(command_lines()) >= 10


@pytest.mark.skipif(not ACTIVATE.exists(), reason="no .venv here (make setup creates it)")
@pytest.mark.parametrize("command", command_lines())
def test_each_command_runs_in_a_fresh_shell_after_activation(command):
    env = {"HOME": os.environ.get("HOME", "/tmp"), "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(["bash", "-c", f"source .venv/bin/activate && {command} --help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "usage" in result.stdout.lower(), result.stdout[-2000:] + result.stderr[-2000:]


def test_the_python_example_runs():
    example, = blocks("python")
    exec(compile(example, "README.md", "exec"), {})
