"""The README's Python examples run as written (in order, in one namespace, as a reader would paste them)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_examples_run(monkeypatch):
    monkeypatch.chdir(README.parent)  # the examples name paths relative to the repository root
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2  # the environment, then the policy
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own documentation
    chunk = namespace["chunk"]
    assert tuple(chunk.action.shape) == (1, 8, 2) and tuple(chunk.plan.shape) == (1, 16, 2)
    assert chunk.result.iterations < 100  # ParaDDPM, not the sequential sampler
