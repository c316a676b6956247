"""The docs: every code block marked runnable runs, and the site builds in strict mode.

A block is runnable when the line ``<!-- exec -->`` stands before its fence (blank lines
between allowed), in README.md or any page under docs/. ``python`` blocks run in-process
in a fresh namespace, in a temporary working directory; ``bash`` blocks may hold only
``e2vpt …`` lines, each run in-process through ``e2vpt.cli.main.main`` and expected to
exit 0. Mark only cheap blocks (the demo backbone, tiny settings).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- exec -->"
FENCE = re.compile(r"^```(\w+)\s*$")


def doc_files() -> list[Path]:
    docs = sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)
    return [ROOT / "README.md", *docs]


def runnable_blocks(path: Path) -> list[tuple[str, str, str]]:
    """(id, language, code) of every block marked runnable in ``path``."""
    lines = path.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        fence = FENCE.match(lines[j]) if j < len(lines) else None
        where = f"{path.relative_to(ROOT)}:{i + 1}"
        if fence is None or fence.group(1) not in {"python", "bash"}:
            raise AssertionError(f"{where}: {MARKER} must precede a ```python or ```bash block")
        end = next(k for k in range(j + 1, len(lines)) if lines[k].startswith("```"))
        blocks.append((where, fence.group(1), "\n".join(lines[j + 1 : end]) + "\n"))
    return blocks


BLOCKS = [block for path in doc_files() for block in runnable_blocks(path)]


def test_runnable_blocks_are_found():
    # the README's Python example and the methods page's blocks at least
    where = {b[0].split(":")[0] for b in BLOCKS}
    assert "README.md" in where and "docs/methods/index.md" in where, where
    assert {b[1] for b in BLOCKS} == {"python", "bash"}


@pytest.mark.parametrize(("where", "language", "code"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_runnable_block(where, language, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if language == "python":
        exec(compile(code, where, "exec"), {"__name__": "__docs__"})
        return
    from e2vpt.cli.main import main

    for line in filter(None, (raw.strip() for raw in code.splitlines())):
        argv = shlex.split(line, comments=True)
        assert argv[0] == "e2vpt", f"{where}: runnable bash blocks hold `e2vpt …` lines only"
        assert main(argv[1:]) == 0, f"{where}: `{line}` failed: {capsys.readouterr().err}"


def test_site_builds_strict(tmp_path):
    """A broken link, anchor, snippet include or API reference fails the build."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "reference" / "cli" / "index.html").is_file()
    cli = (tmp_path / "reference" / "cli" / "index.html").read_text()
    from e2vpt.cli.main import COMMANDS

    for name in COMMANDS:  # every command's --help is on the page
        assert f"usage: e2vpt {name}" in cli, name


def test_readme_links_resolve():
    """README is read on its own (not by MkDocs): its relative links name real files."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not t.startswith(("http://", "https://", "#"))]
    assert local, "README links into the docs"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing
