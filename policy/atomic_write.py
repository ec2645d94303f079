"""Files written whole or not at all (a torch-free leaf: it imports nothing of the package).

Results, logs and caches are written to a hidden temporary sibling and renamed over their name, so a
killed process leaves either the earlier file or the new one, never a truncated file. Directories
(checkpoints) have their own rule, `model.checkpoint.write_atomic_dir`, which never overwrites.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary sibling of ``path``, then rename it over ``path`` (creating the
    parent folder); if ``write`` fails the temporary file is removed and ``path`` is untouched.
    Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """``text`` written to ``path`` whole or not at all (`write_atomically`). Returns ``path``."""
    return write_atomically(path, lambda tmp: tmp.write_text(text))
