"""The documentation: the site builds with warnings as errors, and its code runs.

The build needs the ``docs`` extra (mkdocs, mkdocs-material, mkdocstrings); without it
the build test is skipped. The code blocks of the home page and the user guide
(fenced as ``python``; fragments that are not meant to run are fenced ``py``) run in
one namespace per page, so that the documented API cannot drift from the code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES_WITH_CODE = [
    "index.md",
    "guide/flows.md",
    "guide/stack.md",
    "guide/vae.md",
    "guide/jacobians.md",
    "guide/training.md",
]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    missing = [name for name in ("results.md", "performance.md") if not (DOCS / name).exists()]
    assert not missing, f"pages in mkdocs.yml's nav are missing: {missing}"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "derivation" / "index.html").exists()
    assert (site / "figures" / "jacobian_patterns.png").exists()
    assert (site / "figures" / "stacks.png").exists()
    # Offline: no page loads a script, a style sheet or a font from the network.
    remote = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["']https?://""")
    for page in site.rglob("*.html"):
        found = remote.findall(page.read_text())
        assert not found, f"{page.relative_to(site)} loads from the network: {found[:2]}"
    # No Sphinx roles left in the rendered API reference.
    api = (site / "api" / "index.html").read_text()
    roles = re.findall(r":(?:class|func|meth|mod|attr|data|obj|exc):", api)
    assert not roles, f"the API reference shows {len(roles)} raw Sphinx roles"


def code_blocks(page):
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_documented_code_runs(page, tmp_path, monkeypatch, one_thread):
    blocks = code_blocks(page)
    assert blocks, f"{page} has no python code blocks"
    if page == "guide/jacobians.md":
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    namespace = {"__name__": "docs_example"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{page}:block{index}", "exec"), namespace)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")


def test_jacobian_figure_is_generated_by_the_library(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    script = DOCS / "make_figures.py"
    shutil.copy(script, tmp_path / "make_figures.py")
    done = subprocess.run(
        [sys.executable, str(tmp_path / "make_figures.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("triangular=True") == 3
    assert (tmp_path / "figures" / "jacobian_patterns.png").stat().st_size > 10_000
