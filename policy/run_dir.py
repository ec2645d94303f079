"""Run folders are never reused, and results are never half-written (torch-free).

A command owns a few names in its run folder (``eval_info.json``, ``bench.json``, ``checkpoints`` ...).
`claim_run_dir` refuses a folder in which any of them already exists, so an earlier result is never
overwritten, and creates the folder otherwise. Every entry point calls it through
`scripts/_hydra.py`; `parapolicy-train` alone may continue its own folder (``resume=true``).
`write_result` writes a JSON result whole or not at all, so a killed command leaves no truncated file,
and as strict JSON (`json_text`: non-finite numbers as null).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from parapolicy.policy.atomic_write import write_text_atomically
from parapolicy.policy.errors import RunFolderError


def claim_run_dir(
    out: str | Path, names: Iterable[str], command: str = "parapolicy", hint: str | None = None
) -> Path:
    """Create ``out`` if needed and refuse it when it already holds any of ``names``.

    Args:
        out: the run folder.
        names: files or folders the command writes at its top level.
        command: the command's name, for the message.
        hint: what to do instead (default: choose a new ``hydra.run.dir``).

    Returns:
        ``out`` as a Path.

    Raises:
        RunFolderError: naming the folder and the results it already holds.
    """
    out = Path(out)
    taken = sorted(n for n in names if (out / n).exists() or (out / n).is_symlink())
    if taken:
        raise RunFolderError(
            f"run folder {out} already holds {', '.join(taken)} from an earlier {command} run; results are "
            f"never overwritten: {hint or 'choose a new hydra.run.dir (or leave it at its default)'}"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_result(path: str | Path, content: Any) -> Path:
    """Write ``content`` as indented JSON to ``path`` whole or not at all (`write_text_atomically`); creates
    the parent folder. Returns ``path``."""
    return write_text_atomically(path, json_text(content, indent=2))


def json_text(content: Any, indent: int | None = None) -> str:
    """``content`` as strict JSON: a non-finite float (a NaN loss, ``tol=inf``) becomes null, which any
    parser reads (Python's ``NaN`` / ``Infinity`` are not JSON); a value JSON cannot hold fails here,
    before any write."""
    return json.dumps(_finite(content), indent=indent, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
