"""Size limits of the package's code: no class over 300 lines, no function or method over 60."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "policy"
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60

# Known exceptions, all outside policy/control and the rollout jobs (to be split by their owners);
# remove an entry when it is fixed (the second test says so).
KNOWN_EXCEPTIONS: set[str] = {
    "model/policy.py:DiffusionPolicy",
    "data/replay_store.py:ReplayStore",
    "data/replay_store.py:open",
    "data/replay_store.py:_read_structure",
    "diffusion/picard.py:sample_picard",
    "diffusion/schedules.py:make_step_table",
    "runtime/distributed.py:DistributedDenoiser",
}


def _oversized() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_FUNCTION_LINES
            else:
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append(f"{rel}:{node.name} ({lines} lines)")
    return found


def test_no_class_over_300_lines_and_no_function_over_60():
    over = [f for f in _oversized() if f.split(" (")[0] not in KNOWN_EXCEPTIONS]
    assert not over, f"over the size limits: {over}"


def test_known_exceptions_are_still_exceptions():
    """An exception that was fixed must leave the list (so the list cannot go stale)."""
    still = {f.split(" (")[0] for f in _oversized()}
    assert still >= KNOWN_EXCEPTIONS, f"no longer over the limits: {sorted(KNOWN_EXCEPTIONS - still)}"
