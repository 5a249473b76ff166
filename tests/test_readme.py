"""The README works as written: its quick start runs, and on a fresh machine its install
lines plus one command pass the tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def section(title: str) -> str:
    """The text of the README section headed ``## title``."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README.md has no section {title!r}"
    return match.group(1)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_quick_start_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python block"
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "NLL" in out and "triangular=True" in out
    assert "['Augment', 'EncoderCoupling']" in out
    assert namespace["samples"].shape == (1000, 2)
    assert namespace["bound"].shape == (512,)


def test_the_readme_names_the_commands_ci_runs():
    install = bash_blocks(section("Install"))
    commands = bash_blocks(section("The two commands"))
    assert len(install) == 1 and len(commands) == 2
    assert "torch==2.13.0" in install[0] and '".[test]"' in install[0]
    assert commands[0].strip() == "flowjoint compare --out runs/digits"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].strip() in ci, "CI must run exactly the README's test command"


@pytest.mark.slow
def test_install_lines_then_the_test_command_pass_on_a_fresh_copy(tmp_path):
    """Copy the tracked files, run the README's install lines in a new virtual
    environment there, then its test command: everything a newcomer types."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    copy = tmp_path / "flowjoint"
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    install = bash_blocks(section("Install"))[0]
    test_command = bash_blocks(section("The two commands"))[1].strip()
    script = f"set -euo pipefail\n{install}\n{test_command} -q -p no:cacheprovider\n"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if "venv" not in p
    )
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
        check=False,
    )
    tail = (done.stdout[-4000:] + done.stderr[-2000:]).strip()
    assert done.returncode == 0, tail
    assert re.search(r"\d+ passed", done.stdout), tail
