"""Run folders are never reused: the one check every command makes before it writes (torch-free).

A command owns a few names in its run folder (``eval_info.json``, ``bench.json``, ``checkpoints`` ...).
`claim_run_dir` refuses a folder in which any of them already exists, so an earlier result is never
overwritten, and creates the folder otherwise. Every entry point calls it through
`scripts/_hydra.py`; `parapolicy-train` alone may continue its own folder (``resume=true``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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
