"""Spread the denoiser's flat batch over processes (and machines) with `torch.distributed`.

`DistributedDenoiser` is a `Denoiser` like any other: the samplers call it with the flat window batch
`(N, H, D), (N,), (N, C) | None` and get `(N, H, D)` back; they never know that the rows were evaluated
by several processes. The processes are launched by `torchrun` (or anything that sets `RANK`,
`WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`); every rank loads its own replica of the
same model. Rank 0 runs the sampler and calls the denoiser; the other ranks call `serve_forever()`.

Protocol of one call (all on the process group, in this order, on every rank):

1. rank 0 broadcasts a fixed-size int64 header: protocol tag, command (CALL / PING / STOP), N, dtypes
   and the trailing shapes of `x` and `cond`;
2. rank 0 broadcasts `x`, `t` and, if present, `cond` (the whole batch; rows are small);
3. rank k evaluates its contiguous slice of the N rows (`tensor_split` sizes: the first N mod W ranks
   get one row more; a rank may get 0 rows when N < W);
4. every rank pads its output to the largest slice and `gather`s it to rank 0, which trims and
   concatenates the slices in row order.

While rank 0 is idle between calls (environment steps, logging), a heartbeat thread broadcasts a PING
header every `heartbeat_s` so that the serving ranks, whose wait for the next header is bounded by the
process-group timeout, can tell an idle rank 0 from a dead or hung one.

Failure: any collective that fails (a peer closed its connection because it died or raised) or times out
(a peer hung; gloo honours the `init_process_group` timeout) raises `DistributedDenoiserError` on the
surviving ranks, and the process group is destroyed before the error leaves the call; a failed denoiser
cannot be used again. A local exception inside a call (the wrapped denoiser raised) is fatal the same way,
because the ranks are then out of step. On NCCL, see docs/distributed.md: a stuck collective is ended by
NCCL's watchdog, which by default tears the process down rather than raising.

Library module: imports torch only (no hydra). `python -m parapolicy.policy.runtime.distributed` (under
`torchrun`) runs a self-check that compares distributed and local sampling.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from parapolicy.policy.runtime.timing import TimedDenoiser

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MIXED_BACKEND",
    "DistInfo",
    "DistributedDenoiser",
    "DistributedDenoiserError",
    "init_distributed",
    "main",
    "shutdown_distributed",
    "split_sizes",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
"""Default process-group timeout: the longest any rank waits for a peer inside a collective."""

Backend = Literal["auto", "gloo", "nccl", "cpu:gloo,cuda:nccl"]
MIXED_BACKEND = "cpu:gloo,cuda:nccl"
"""gloo for CPU tensors and NCCL for CUDA tensors in one group (the torchrun jobs' choice on GPU machines)."""
DenoiseFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]

# Header layout (int64): tag, command, N, x dtype, t dtype, cond dtype (-1 = None), x ndim, cond ndim
# (0 = None), then the trailing dims of x and of cond, each padded with 0 to _MAX_REST entries.
_TAG = 0x50415241  # "PARA": a header that does not start with it means the ranks are out of step
_CMD_CALL, _CMD_PING, _CMD_STOP = 1, 2, 3
_MAX_REST = 4  # trailing dims of x (H, D) and cond (C) supported: up to 4 each
_HEADER_LEN = 8 + 2 * _MAX_REST
_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)
_DTYPE_CODE = {dtype: code for code, dtype in enumerate(_DTYPES)}


class DistributedDenoiserError(RuntimeError):
    """A rank died, hung or failed during a distributed denoiser call; the process group is destroyed."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the distributed job.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this machine (selects the GPU).
        device: the device this rank's model replica and (for NCCL) its communication buffers use.
        backend: "gloo" or "nccl", or None when there is no process group (world size 1).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the rank that samples, logs and writes files)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _check_timeout(timeout_s: float) -> float:
    timeout_s = float(timeout_s)
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s}")
    return timeout_s


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend not in ("gloo", "nccl", MIXED_BACKEND):
        raise ValueError(f"backend must be 'auto', 'gloo', 'nccl' or {MIXED_BACKEND!r}, got {backend!r}")
    return backend


def _backend_device(backend: str, local_rank: int) -> torch.device:
    if "nccl" in backend:
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def init_distributed(backend: Backend = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Join the process group described by the torchrun environment (or stay single-process).

    Reads `RANK`, `WORLD_SIZE` and `LOCAL_RANK` (defaults 0, 1, 0), and, when the world size is above 1,
    initialises the default process group from `MASTER_ADDR` / `MASTER_PORT` (`env://`) with the given
    timeout. If the default group already exists it is reused as it is (its own timeout applies).

    Args:
        backend: "nccl" when CUDA is available and "gloo" otherwise ("auto"), or a fixed choice;
            `MIXED_BACKEND` routes CPU tensors through gloo and CUDA tensors through NCCL.
        timeout_s: process-group timeout in seconds; with gloo every collective fails after waiting this
            long for a peer. It also bounds the rendezvous.

    Returns:
        The `DistInfo` of this process. With NCCL (also mixed) the current CUDA device is set to `device`.

    Raises:
        ValueError: on a malformed environment or argument.
        DistributedDenoiserError: when the rendezvous fails or times out.
    """
    timeout_s = _check_timeout(timeout_s)
    resolved = _resolve_backend(backend)
    if dist.is_available() and dist.is_initialized():
        actual = str(dist.get_backend())
        local_rank = _env_int("LOCAL_RANK", 0)
        return DistInfo(
            dist.get_rank(), dist.get_world_size(), local_rank, _backend_device(actual, local_rank), actual
        )
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"invalid distributed environment: RANK={rank}, WORLD_SIZE={world_size}")
    device = _backend_device(resolved, local_rank)
    if world_size == 1:
        return DistInfo(0, 1, local_rank, device, None)
    if not dist.is_available():
        raise DistributedDenoiserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but {', '.join(missing)} is not set; launch with torchrun")
    if "nccl" in resolved:
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(
            resolved, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
        )
    except Exception as exc:
        raise DistributedDenoiserError(
            f"rank {rank} of {world_size} could not join the {resolved} process group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s:g} s: {exc}"
        ) from exc
    return DistInfo(rank, world_size, local_rank, device, resolved)


def shutdown_distributed() -> None:
    """Destroy the default process group if there is one (idempotent; never raises)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.destroy_process_group()
    except Exception as exc:  # a broken group must not mask the error that broke it
        logger.warning("destroy_process_group failed: %s", exc)


def split_sizes(n: int, parts: int) -> list[int]:
    """Row counts of `tensor_split(rows, parts)`: the first n mod parts chunks get one row more."""
    q, r = divmod(n, parts)
    return [q + (k < r) for k in range(parts)]


def _infer_device(local: object) -> torch.device | None:
    """Device of the module behind `local` (a module, or a bound method of one), if any."""
    owner = local if isinstance(local, nn.Module) else getattr(local, "__self__", None)
    if isinstance(owner, nn.Module):
        for tensor in itertools.chain(owner.parameters(), owner.buffers()):
            return tensor.device
    return None


def _describe_failure(exc: BaseException, timeout_s: float) -> str:
    """A readable cause for a failed collective (gloo's messages name the transport, not the meaning)."""
    text = str(exc).lower()
    if "timed out" in text or "timeout" in text:
        return (
            f"timed out after {timeout_s:g} s waiting for a peer rank (it hung, is too slow for the timeout, "
            "or vanished without closing its connection)"
        )
    if any(word in text for word in ("closed", "reset", "broken pipe", "connection", "refused")):
        return "a peer rank closed its connection (it died, raised, or shut down)"
    return "a collective failed"


@dataclass(frozen=True)
class _Header:
    cmd: int
    n: int = 0
    x_dtype: torch.dtype = torch.float32
    t_dtype: torch.dtype = torch.int64
    c_dtype: torch.dtype | None = None
    x_rest: tuple[int, ...] = ()
    c_rest: tuple[int, ...] | None = None

    def pack(self, device: torch.device) -> Tensor:
        values = [0] * _HEADER_LEN
        values[0], values[1], values[2] = _TAG, self.cmd, self.n
        values[3], values[4] = _DTYPE_CODE[self.x_dtype], _DTYPE_CODE[self.t_dtype]
        values[5] = -1 if self.c_dtype is None else _DTYPE_CODE[self.c_dtype]
        values[6] = 1 + len(self.x_rest)
        values[7] = 0 if self.c_rest is None else 1 + len(self.c_rest)
        values[8 : 8 + len(self.x_rest)] = self.x_rest
        if self.c_rest is not None:
            values[8 + _MAX_REST : 8 + _MAX_REST + len(self.c_rest)] = self.c_rest
        return torch.tensor(values, dtype=torch.int64, device=device)  # (_HEADER_LEN,)

    @staticmethod
    def unpack(header: Tensor) -> _Header:
        v = [int(a) for a in header.tolist()]
        if v[0] != _TAG or v[1] not in (_CMD_CALL, _CMD_PING, _CMD_STOP):
            raise DistributedDenoiserError(
                f"received a malformed header {v[:3]}: the ranks are out of step (another collective ran "
                "on the same process group, or the ranks run different code)"
            )
        if v[1] != _CMD_CALL:
            return _Header(v[1])
        x_rest = tuple(v[8 : 8 + v[6] - 1])
        c_rest = tuple(v[8 + _MAX_REST : 8 + _MAX_REST + v[7] - 1]) if v[7] > 0 else None
        c_dtype = _DTYPES[v[5]] if v[5] >= 0 else None
        return _Header(_CMD_CALL, v[2], _DTYPES[v[3]], _DTYPES[v[4]], c_dtype, x_rest, c_rest)


class DistributedDenoiser:
    """A denoiser whose flat batch is split over the ranks of a `torch.distributed` process group.

    Construct it on every rank (after loading the model replica there). Rank 0 calls it like any
    denoiser; every other rank calls `serve_forever()`, which evaluates its slice of each call until rank
    0 calls `close()` (or leaves the `with` block). With world size 1 (no torchrun environment) it is a
    plain local call and no process group is created.

    Every rank evaluates its slice with the wrapped `local` denoiser under `torch.no_grad()`; the
    gathered output is detached (inference only). Results equal a single process's up to the model's
    batch-size-dependent numerics (bitwise for row-wise elementwise models; see `ShardedDenoiser`).

    Ownership: if the default process group does not exist yet, the constructor creates it with
    `init_distributed(backend, timeout_s)` and `close()` / the end of `serve_forever()` destroy it. An
    existing group is used as it is and left alone on a clean close. After any failure the group in use
    (and a group this object created) is destroyed on the spot, because the ranks are out of step.

    Args:
        local: this rank's denoiser replica: a callable `(x, t, cond) -> out` or an `nn.Module`.
        timeout_s: the process-group timeout when this object creates the group, and the time the
            error messages quote; pass the existing group's timeout when it was created elsewhere. It must
            exceed the slowest single call, and rank 0 must call (or heartbeat) more often than this.
        backend: backend for a group created here ("auto": NCCL with CUDA, gloo otherwise).
        device: where this rank's replica evaluates (default: the device of `local`'s parameters when it
            is a module or a bound method of one, else the backend's device).
        group: the process group to use (default: the world); its rank 0 is the sampling rank.
        heartbeat_s: interval of rank 0's keep-alive while idle ("auto": timeout_s / 4; None disables it,
            in which case rank 0 must call at least every `timeout_s`).

    Raises:
        DistributedDenoiserError: when the process group cannot be created.
    """

    def __init__(
        self,
        local: DenoiseFn | nn.Module,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backend: Backend = "auto",
        device: torch.device | str | None = None,
        group: dist.ProcessGroup | None = None,
        heartbeat_s: float | Literal["auto"] | None = "auto",
    ) -> None:
        self.local = local
        self.timeout_s = _check_timeout(timeout_s)
        if heartbeat_s == "auto":
            heartbeat_s = self.timeout_s / 4
        if heartbeat_s is not None and not 0 < heartbeat_s < self.timeout_s:
            raise ValueError(f"heartbeat_s must be in (0, timeout_s={self.timeout_s:g}), got {heartbeat_s}")
        self.heartbeat_s = heartbeat_s
        self._owns_world = not (dist.is_available() and dist.is_initialized())
        self.info = init_distributed(backend, self.timeout_s)
        self._owns_world = self._owns_world and self.info.world_size > 1
        inferred = _infer_device(local)
        self.device = torch.device(device) if device is not None else inferred or self.info.device
        self._group = group
        self._rank, self._world, self._src = 0, 1, 0
        self._comm_device = torch.device("cpu")
        if self.info.world_size > 1 or group is not None:
            try:
                self._rank, self._world = dist.get_rank(group), dist.get_world_size(group)
                if self._rank < 0:
                    raise ValueError(f"global rank {self.info.rank} is not a member of the given group")
                self._src = dist.get_global_rank(group, 0) if group is not None else 0
                if str(dist.get_backend(group)) == "nccl":
                    self._comm_device = self.info.device
            except BaseException:
                if self._owns_world:
                    shutdown_distributed()
                raise
        self.calls = 0  # calls evaluated (rank 0: made; other ranks: served)
        self._lock = threading.Lock()  # serialises rank 0's collectives (main thread vs heartbeat)
        self._stop = threading.Event()
        self._closed = False
        self._failure: DistributedDenoiserError | None = None
        self._destroyed = False
        self._last_send = time.monotonic()
        self._heartbeat: threading.Thread | None = None
        if self._world > 1 and self._rank == 0 and heartbeat_s is not None:
            self._heartbeat = threading.Thread(
                target=self._heartbeat_loop, name="distributed-denoiser-heartbeat", daemon=True
            )
            self._heartbeat.start()

    # ----------------------------------------------------------------------------------------------
    # properties
    @property
    def rank(self) -> int:
        """Rank within the group (0 samples, the others serve)."""
        return self._rank

    @property
    def world_size(self) -> int:
        """Number of ranks the batch is split over."""
        return self._world

    @property
    def is_main(self) -> bool:
        """Whether this rank samples (calls the denoiser) rather than serves."""
        return self._rank == 0

    @property
    def failed(self) -> bool:
        """Whether a failure has broken this denoiser (its group is destroyed)."""
        return self._failure is not None

    # ----------------------------------------------------------------------------------------------
    # rank 0
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Evaluate the flat batch over all ranks; see `Denoiser.__call__` for shapes.

        Raises:
            RuntimeError: when called on a serving rank or after `close()`.
            ValueError: on inputs the protocol cannot carry (checked before any communication).
            DistributedDenoiserError: when a peer died, hung or raised, or the local denoiser raised.
        """
        self._check_usable()
        if self._world == 1:
            self.calls += 1
            return self.local(x, t, cond)
        if self._rank != 0:
            raise RuntimeError("only rank 0 calls the DistributedDenoiser; other ranks run serve_forever()")
        header = self._make_header(x, t, cond)
        if header.n == 0:
            return torch.empty_like(x)  # (0, H, D): nothing to evaluate anywhere
        with self._lock:
            self._check_usable()  # the heartbeat may have found a dead peer
            try:
                out = self._call_locked(header, x, t, cond)
            except Exception as exc:
                raise self._fail(exc, f"call {self.calls + 1} ({header.n} rows)") from exc
            except BaseException:  # KeyboardInterrupt mid-collective: the ranks are out of step
                self._teardown()
                raise
        self.calls += 1
        return out.to(x.device)

    def _make_header(self, x: Tensor, t: Tensor, cond: Tensor | None) -> _Header:
        if not 1 <= x.dim() <= 1 + _MAX_REST:
            raise ValueError(f"x must have 1 to {1 + _MAX_REST} dims, got shape {tuple(x.shape)}")
        n = x.shape[0]
        if tuple(t.shape) != (n,):
            raise ValueError(f"t must have shape ({n},), got {tuple(t.shape)}")
        if cond is not None and (not 1 <= cond.dim() <= 1 + _MAX_REST or cond.shape[0] != n):
            raise ValueError(
                f"cond must be ({n}, ...) with at most {_MAX_REST} trailing dims, got {cond.shape}"
            )
        for name, tensor in (("x", x), ("t", t), ("cond", cond)):
            if tensor is not None and tensor.dtype not in _DTYPE_CODE:
                raise ValueError(f"{name} has unsupported dtype {tensor.dtype}")
        return _Header(
            _CMD_CALL,
            n,
            x.dtype,
            t.dtype,
            None if cond is None else cond.dtype,
            tuple(x.shape[1:]),
            None if cond is None else tuple(cond.shape[1:]),
        )

    def _call_locked(self, header: _Header, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        comm = self._comm_device
        self._broadcast(header.pack(comm))
        self._last_send = time.monotonic()
        x_c = x.detach().to(comm).contiguous()  # (N, H, D)
        t_c = t.detach().to(comm).contiguous()  # (N,)
        c_c = cond.detach().to(comm).contiguous() if cond is not None else None  # (N, C)
        self._broadcast(x_c)
        self._broadcast(t_c)
        if c_c is not None:
            self._broadcast(c_c)
        sizes = split_sizes(header.n, self._world)
        mine = self._evaluate_slice(header, sizes, x_c, t_c, c_c)  # (m, H, D) padded
        parts = [torch.empty_like(mine) for _ in range(self._world)]
        dist.gather(mine, parts, dst=self._src, group=self._group)
        self._last_send = time.monotonic()
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])  # (N, H, D)

    def _evaluate_slice(
        self, header: _Header, sizes: list[int], x: Tensor, t: Tensor, cond: Tensor | None
    ) -> Tensor:
        """This rank's rows through the local replica, padded to the largest slice: (max(sizes), *x_rest)."""
        start, n, m = sum(sizes[: self._rank]), sizes[self._rank], max(sizes)
        padded = torch.zeros((m, *header.x_rest), dtype=header.x_dtype, device=self._comm_device)
        if n == 0:
            return padded
        dev = self.device
        rows = slice(start, start + n)
        c = cond[rows].to(dev) if cond is not None else None
        with torch.no_grad():
            try:
                out = self.local(x[rows].to(dev), t[rows].to(dev), c)  # (n, H, D)
            except Exception as exc:
                raise _LocalError(exc) from exc
        if tuple(out.shape) != (n, *header.x_rest):
            raise _LocalError(
                ValueError(f"local denoiser returned {tuple(out.shape)}, expected {(n, *header.x_rest)}")
            )
        padded[:n] = out.to(device=self._comm_device, dtype=header.x_dtype)
        return padded

    def _heartbeat_loop(self) -> None:
        assert self.heartbeat_s is not None
        while not self._stop.wait(self.heartbeat_s):
            if not self._lock.acquire(blocking=False):
                continue  # a call is running: that is traffic enough
            try:
                if self._closed or self._failure is not None:
                    return
                if time.monotonic() - self._last_send < self.heartbeat_s:
                    continue
                try:
                    with self._cuda_guard():
                        self._broadcast(_Header(_CMD_PING).pack(self._comm_device))
                    self._last_send = time.monotonic()
                except Exception as exc:
                    err = self._fail(exc, "heartbeat")
                    logger.error("%s", err)
                    return
            finally:
                self._lock.release()

    def close(self) -> None:
        """Rank 0: send STOP to the serving ranks; every rank: stop the heartbeat and release the group.

        Idempotent and never raises on a broken group (the failure was raised where it happened).
        """
        if self._closed:
            return
        if self._world > 1 and self._rank == 0 and self._failure is None:
            with self._lock:
                self._closed = True
                try:
                    self._broadcast(_Header(_CMD_STOP).pack(self._comm_device))
                except Exception as exc:
                    logger.warning("DistributedDenoiser: could not send STOP: %s", exc)
                    self._teardown()
        self._closed = True
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=self.timeout_s)
        if self._owns_world:
            self._teardown()

    def __enter__(self) -> DistributedDenoiser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------
    # ranks > 0
    def serve_forever(self) -> int:
        """Evaluate this rank's slice of every call from rank 0 until it sends STOP.

        Returns:
            The number of calls served.

        Raises:
            RuntimeError: when called on rank 0 (it samples) or after `close()`.
            DistributedDenoiserError: when rank 0 (or another peer) died or hung (no header or heartbeat
                within the timeout), or the local denoiser raised; the process group is destroyed first.
        """
        self._check_usable()
        if self._rank == 0:
            raise RuntimeError(
                "rank 0 samples and calls the DistributedDenoiser; serve_forever is for ranks > 0"
            )
        comm = self._comm_device
        phase = "waiting for the next command from rank 0"
        try:
            while True:
                phase = "waiting for the next command from rank 0"
                raw = torch.empty(_HEADER_LEN, dtype=torch.int64, device=comm)
                self._broadcast(raw)
                header = _Header.unpack(raw)
                if header.cmd == _CMD_PING:
                    continue
                if header.cmd == _CMD_STOP:
                    break
                phase = f"call {self.calls + 1}"
                x = torch.empty((header.n, *header.x_rest), dtype=header.x_dtype, device=comm)
                t = torch.empty((header.n,), dtype=header.t_dtype, device=comm)
                self._broadcast(x)
                self._broadcast(t)
                cond = None
                if header.c_rest is not None and header.c_dtype is not None:
                    cond = torch.empty((header.n, *header.c_rest), dtype=header.c_dtype, device=comm)
                    self._broadcast(cond)
                mine = self._evaluate_slice(header, split_sizes(header.n, self._world), x, t, cond)
                dist.gather(mine, None, dst=self._src, group=self._group)
                self.calls += 1
        except Exception as exc:
            raise self._fail(exc, phase) from exc
        except BaseException:
            self._teardown()
            raise
        self._closed = True
        if self._owns_world:
            self._teardown()
        return self.calls

    # ----------------------------------------------------------------------------------------------
    # plumbing
    def _broadcast(self, tensor: Tensor) -> None:
        dist.broadcast(tensor, src=self._src, group=self._group)

    def _cuda_guard(self) -> contextlib.AbstractContextManager[object]:
        if self._comm_device.type == "cuda":
            return torch.cuda.device(self._comm_device)
        return contextlib.nullcontext()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise DistributedDenoiserError(f"the DistributedDenoiser already failed: {self._failure}")
        if self._closed:
            raise RuntimeError("the DistributedDenoiser is closed")

    def _fail(self, exc: Exception, phase: str) -> DistributedDenoiserError:
        """Record the failure, destroy the group and build the error to raise."""
        who = f"DistributedDenoiser rank {self._rank} of {self._world}"
        if isinstance(exc, DistributedDenoiserError):
            cause, detail = str(exc), ""
        elif isinstance(exc, _LocalError):
            inner = exc.__cause__ or exc.args[0]
            cause, detail = "the local denoiser raised", f" ({type(inner).__name__}: {inner})"
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            cause, detail = _describe_failure(exc, self.timeout_s), f" ({type(exc).__name__}: {first})"
        err = DistributedDenoiserError(f"{who}: {phase}: {cause}{detail}; the process group was destroyed")
        self._failure = err
        self._teardown()
        return err

    def _teardown(self) -> None:
        """Stop the heartbeat and destroy the group in use (and the world if this object created it)."""
        self._stop.set()
        if self._destroyed:
            return
        self._destroyed = True
        if not (dist.is_available() and dist.is_initialized()):
            return
        try:
            if self._group is not None and self._group is not dist.group.WORLD:
                dist.destroy_process_group(self._group)
                if self._owns_world:
                    dist.destroy_process_group()
            else:
                dist.destroy_process_group()
        except Exception as exc:
            logger.warning("destroy_process_group failed: %s", exc)


class _LocalError(Exception):
    """Wraps an exception raised by this rank's own denoiser (as opposed to a communication failure)."""


# --------------------------------------------------------------------------------------------------
# self-check entry point
def _self_check_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """`main`'s command line, parsed."""
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m parapolicy.policy.runtime.distributed", description=main.__doc__
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="policy directory (default: tiny random)"
    )
    parser.add_argument("--algorithm", choices=("sequential", "picard"), default="picard")
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the config's)")
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument(
        "--device",
        choices=("backend", "cpu", "cuda"),
        default="backend",
        help="where each rank's replica runs (default: the backend's device)",
    )
    parser.add_argument("--down-dims", default="16,32", help="U-Net widths of the random policy")
    parser.add_argument("--embed", type=int, default=16, help="step-embedding width of the random policy")
    parser.add_argument("--time-calls", type=int, default=0, help="timed calls per row count (0: none)")
    parser.add_argument("--rows", default="1,8,16,32", help="row counts timed with --time-calls")
    return parser.parse_args(argv)


def _self_check_policy(args: argparse.Namespace, device: torch.device) -> Any:
    """`main`'s policy on ``device`` (``--checkpoint``, or a tiny random one seeded alike on every
    rank), its sampler set from the command line."""
    import dataclasses

    from parapolicy.policy.config import PolicyConfig, UNetConfig
    from parapolicy.policy.model.policy import DiffusionPolicy
    from parapolicy.policy.model.pretrained import load_policy

    if args.checkpoint is not None:
        policy = load_policy(args.checkpoint, device=device)
    else:
        torch.manual_seed(args.seed)
        dims = tuple(int(d) for d in args.down_dims.split(","))
        unet = UNetConfig(down_dims=dims, diffusion_step_embed_dim=args.embed)
        policy = DiffusionPolicy(PolicyConfig(unet=unet)).to(device).eval()
    sampler = dataclasses.replace(
        policy.sampler,
        algorithm=args.algorithm,
        window=args.window,
        tol=args.tol,
        num_inference_steps=args.steps or policy.sampler.num_inference_steps,
    )
    policy.set_sampler(sampler)
    return policy


def _sample_twice(
    policy: Any, denoise: DistributedDenoiser, batch: int, gen: torch.Generator, device: torch.device
) -> tuple[Any, Any]:
    """`main`'s two samples of the same noise and conditioning (``batch`` samples, drawn from
    ``gen``): with the local denoiser and through ``denoise``, after one warm-up call of each."""
    from parapolicy.policy.diffusion.dispatch import run_sampler
    from parapolicy.policy.diffusion.sequential import draw_noise

    cfg, table = policy.config, policy.table
    cond = torch.randn(batch, cfg.global_cond_dim, generator=gen).to(device)  # (B, C)
    x_T, noise = draw_noise(table, (batch, cfg.horizon, cfg.action_dim), gen, device=device)
    with torch.no_grad():
        policy.local_denoise(x_T, table.timesteps[:1].expand(batch), cond)  # warm-up
        denoise(x_T, table.timesteps[:1].expand(batch), cond)
        ref = run_sampler(policy.sampler, policy.local_denoise, x_T, table, noise, cond)
        got = run_sampler(policy.sampler, denoise, x_T, table, noise, cond)
    return ref, got


def _time_calls(
    args: argparse.Namespace,
    policy: Any,
    denoise: DistributedDenoiser,
    gen: torch.Generator,
    device: torch.device,
) -> dict[str, dict[int, float]]:
    """Median ms per call of the distributed and of the local denoiser at each ``--rows`` row count
    (``--time-calls`` timed calls after 3 untimed ones)."""
    import statistics

    cfg, out = policy.config, {}
    for rows in (int(r) for r in args.rows.split(",")):
        x = torch.randn(rows, cfg.horizon, cfg.action_dim, generator=gen).to(device)  # (N, H, D)
        c = torch.randn(rows, cfg.global_cond_dim, generator=gen).to(device)  # (N, C)
        t = policy.table.timesteps[:1].expand(rows)  # (N,)
        for name, fn in (("distributed", denoise), ("local", policy.local_denoise)):
            timer = TimedDenoiser(fn, device)
            with torch.no_grad():
                for _ in range(3 + args.time_calls):
                    timer(x, t, c)
            out.setdefault(f"{name}_ms_per_call", {})[rows] = 1e3 * statistics.median(timer.call_seconds[3:])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Self-check under torchrun: sample with the distributed and a local denoiser, print the difference.

    Every rank loads the policy (`--checkpoint`, or a tiny random one seeded identically on every rank);
    rank 0 samples the same noise and conditioning twice, locally and through `DistributedDenoiser`, and
    prints one JSON line with the largest absolute difference. Exit status 0 when it is <= `--atol`.
    Meaningful for `--algorithm sequential` or `--tol 0` (with tol > 0, float noise between batch splits
    may move a Picard convergence decision and so the result by up to the tolerance).

    With `--time-calls N`, rank 0 then times N calls of the distributed and of the local denoiser at each
    row count of `--rows` (`runtime.timing.TimedDenoiser`, after 3 untimed calls) and adds the median ms
    per call to the JSON line: the cost of the split. `--device cuda` puts each rank's replica on a CUDA
    device (gloo then carries the rows through host memory; NCCL keeps them on the device).

    Example: `torchrun --standalone --nproc-per-node=2 -m parapolicy.policy.runtime.distributed --steps 20`.
    """
    import json

    args = _self_check_arguments(argv)
    info = init_distributed(args.backend, args.timeout_s)
    device = info.device
    if args.device == "cpu":
        device = torch.device("cpu")
    elif args.device == "cuda":
        device = torch.device("cuda", info.local_rank % max(torch.cuda.device_count(), 1))
    try:
        policy = _self_check_policy(args, device)
        sampler = policy.sampler
        with DistributedDenoiser(policy.local_denoise, timeout_s=args.timeout_s) as denoise:
            if not denoise.is_main:
                denoise.serve_forever()
                return 0
            gen = torch.Generator().manual_seed(args.seed)
            ref, got = _sample_twice(policy, denoise, args.batch, gen, device)
            diff = float((got.sample - ref.sample).abs().max())
            report = {
                "world_size": denoise.world_size,
                "backend": info.backend,
                "algorithm": sampler.algorithm,
                "num_inference_steps": sampler.num_inference_steps,
                "model_calls": got.model_calls,
                "rows_per_call_max": max(got.rows_per_call, default=0),
                "max_abs_diff": diff,
                "local_s": round(ref.wall_time_s, 4),
                "distributed_s": round(got.wall_time_s, 4),
                "ok": diff <= args.atol,
                "device": str(device),
            }
            report.update(_time_calls(args, policy, denoise, gen, device) if args.time_calls > 0 else {})
            print(json.dumps(report), flush=True)
            return 0 if diff <= args.atol else 1
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    raise SystemExit(main())
