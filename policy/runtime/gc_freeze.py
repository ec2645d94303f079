"""Python's cyclic garbage collector, kept out of timed and real-time sections.

A full (generation 2) collection walks every object the collector tracks. With torch, a policy and
Hydra's configuration loaded that is about 200,000 objects, and it stops the process for tens of
milliseconds up to over a hundred, at whatever moment allocations happen to trigger it: inside a
control step, a plan or a timed round (the record in docs/benchmarks.md). `frozen_heap` starts such a
section by freezing every tracked object (`gc.freeze`: the collector does not scan them again until
the section ends), so the collections inside see only the objects made since, a few thousand at
most. Collection stays on: garbage made inside the section is still freed. There is no collection on
entry (it would cost the pause it avoids, once per section): garbage that exists then waits for the
exit.

Library module: the standard library only.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["frozen_heap"]

_lock = threading.Lock()
_depth = 0  # sections open now; the outermost one freezes and unfreezes
_unfreeze_at_exit = False  # whether the outermost section found nothing frozen before it


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Run the body with every object that exists at entry frozen out of garbage collection.

    On entry (outermost section only) `gc.freeze`; on exit `gc.unfreeze`, which hands those objects
    back to the oldest generation. Nested and concurrent sections share the outermost one's freeze.
    A program that froze objects itself before (a server freezing after start-up, say) keeps them and
    the section's frozen: `gc.unfreeze` cannot tell the two apart.
    """
    global _depth, _unfreeze_at_exit
    with _lock:
        _depth += 1
        if _depth == 1:
            _unfreeze_at_exit = gc.get_freeze_count() == 0
            gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _unfreeze_at_exit:
                gc.unfreeze()
