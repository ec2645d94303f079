"""Small collectives for jobs that run once per torchrun rank (training, evaluation); no hydra.

A job launched by ``torchrun --nproc-per-node=N`` runs the same code on every rank. These helpers keep
the ranks in step where only rank 0 may act (claim the run folder, write files) and move the few values
the ranks must share. Only tensors travel (no pickled objects): a JSON document goes as its UTF-8 bytes.
Every helper is a no-op (or the obvious local result) when the job is a single process.

Errors: a rank-0-only step that raises on rank 0 is reported to the other ranks by `run_on_rank0`, which
raises `PeerRankError` there, so they exit at once instead of waiting for a collective that never comes.
A rank that dies or raises anywhere else makes the others' next collective fail (gloo: "connection
closed") or time out after the process group's timeout; torchrun also stops the remaining ranks when one
exits with an error. See docs/distributed.md, "Training and evaluation with torchrun".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from parapolicy.policy.errors import ParapolicyError
from parapolicy.policy.runtime.distributed import DistInfo, init_distributed, split_sizes

T = TypeVar("T")


class PeerRankError(ParapolicyError, RuntimeError):
    """Another rank of the job failed; this rank stops (the failing rank prints the cause)."""

    exit_code = 1


def current_ranks() -> DistInfo:
    """This process's place in the default process group, or a single process when there is none.

    Unlike `distributed.init_distributed` it never creates a group: the caller (an entry point) owns it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo(0, 1, 0, torch.device("cpu"), None)
    return init_distributed()  # reuses the existing group


def _comm_device(info: DistInfo) -> torch.device:
    """Where this group's collectives take their tensors: CUDA for a pure NCCL group, else the CPU (gloo)."""
    return info.device if info.backend == "nccl" else torch.device("cpu")


def contiguous_block(n: int, info: DistInfo) -> tuple[int, int]:
    """(offset, count) of this rank's block of ``n`` items (the first ``n mod W`` ranks get one more)."""
    sizes = split_sizes(n, info.world_size)
    return sum(sizes[: info.rank]), sizes[info.rank]


def broadcast_int(value: int, info: DistInfo) -> int:
    """Rank 0's ``value`` on every rank."""
    if info.world_size == 1:
        return int(value)
    buf = torch.tensor([int(value)], dtype=torch.int64, device=_comm_device(info))
    dist.broadcast(buf, src=0)
    return int(buf.item())


def run_on_rank0(info: DistInfo, fn: Callable[[], T], what: str) -> T | None:
    """Run ``fn`` on rank 0 only, while the other ranks wait for its outcome.

    Returns ``fn()`` on rank 0 and None elsewhere. When ``fn`` raises on rank 0 the error propagates
    there and every other rank raises `PeerRankError` naming ``what``.
    """
    if info.world_size == 1:
        return fn()
    result, ok = None, 1
    if info.rank == 0:
        try:
            result = fn()
        except BaseException:
            broadcast_int(0, info)
            raise
    ok = broadcast_int(ok, info)
    if not ok:
        raise PeerRankError(
            f"rank 0 failed while it {what} (rank 0 prints its error); rank {info.rank} stops"
        )
    return result


def check_same_on_all_ranks(text: str, info: DistInfo, what: str) -> None:
    """Refuse (on every rank) when ``text`` differs between ranks, e.g. each rank's data fingerprint.

    Raises:
        PeerRankError: naming ``what`` when any two ranks disagree.
    """
    if info.world_size == 1:
        return
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")  # fits an int64
    lo = torch.tensor([digest], dtype=torch.int64, device=_comm_device(info))
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if int(lo.item()) != int(hi.item()):
        raise PeerRankError(
            f"the ranks disagree on {what} (rank {info.rank} has {text[:200]}); every rank must see the same"
        )


def mean_over_ranks(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise mean over ranks of equally long lists of floats (float64)."""
    if info.world_size == 1:
        return [float(v) for v in values]
    buf = torch.tensor(values, dtype=torch.float64, device=_comm_device(info))
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf / info.world_size).tolist()


def gather_json(doc: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's JSON-serialisable ``doc``, in rank order, on rank 0 (None on the other ranks).

    Floats survive exactly (JSON writes the shortest repr that round-trips), and so do NaN and inf.
    """
    if info.world_size == 1:
        return [json.loads(json.dumps(doc))]
    device = _comm_device(info)
    payload = torch.frombuffer(bytearray(json.dumps(doc).encode()), dtype=torch.uint8)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload.to(device)
    parts = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    if info.rank != 0:
        return None
    raw = [p[: int(s.item())].cpu().numpy().tobytes() for p, s in zip(parts, sizes, strict=True)]
    return [json.loads(r.decode()) for r in raw]
