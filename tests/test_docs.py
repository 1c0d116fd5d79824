"""Every ```python block of README.md and docs/*.md runs as it is, so the docs cannot rot.

A block preceded by ``<!-- not run -->`` (only those that need user data or a GPU) is exempt.
Each block runs in a fresh namespace, in a temporary working directory, with the glyph renders
cached in a temporary directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = "<!-- not run -->"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line, code, exempt)`` of every ```python block; exempt when the marker precedes it.

    Example:
        >>> python_blocks("a\\n<!-- not run -->\\n```python\\nx = 1\\n```\\n")
        [(3, 'x = 1\\n', True)]
    """
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        exempt = bool(before) and before[-1].strip() == NOT_RUN
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1), exempt))
    return blocks


BLOCKS = [
    (path, line, code)
    for path in DOCS
    for line, code, exempt in python_blocks(path.read_text())
    if not exempt
]


def test_the_block_finder():
    text = "x\n```python\na = 1\n```\n<!-- not run -->\n\n```python\nb = 2\n```\n```text\nc\n```\n"
    assert python_blocks(text) == [(2, "a = 1\n", False), (7, "b = 2\n", True)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "line", "code"), BLOCKS, ids=[f"{p.name}:{line}" for p, line, _ in BLOCKS]
)
def test_python_block_runs(path, line, code, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MARGINKIT_CACHE_DIR", str(tmp_path / "cache"))
    exec(compile(code, f"{path.name}:{line}", "exec"), {"__name__": "__docs__"})
