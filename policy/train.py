"""Training loop of the diffusion policy: the reference recipe, step-based, exactly resumable (no hydra).

Recipe (diffusion_policy's low-dim PushT): AdamW (lr 1e-4, betas 0.95/0.999, weight decay 1e-6),
cosine LR schedule with 500 linear warm-up steps stepped every batch, EMA of the weights with the
power-0.75 schedule capped at 0.9999 (checkpoints and evaluation use the EMA weights), batch 256.

Determinism and exact resume: the batch order of epoch e is a permutation drawn from a generator
seeded with (seed, e), and the diffusion noise and timesteps of step s come from a generator seeded
with (seed, s). Everything is a function of the step number, so resuming from a checkpoint replays
exactly what an uninterrupted run would have done.

Across processes (torchrun; docs/distributed.md): ``batch_size`` is the global batch; every rank draws
the same indices and noise and trains on its equal slice under DistributedDataParallel, so N processes
follow the one-process run to float rounding. Rank 0 alone writes the run folder.

Run folder layout::

    train_config.json      the full TrainConfig of the run
    metrics.jsonl          one JSON object per log / validation / evaluation event
    checkpoints/<step:06d>/pretrained_model/   config.json, model.safetensors (ema + raw), normalizer
    checkpoints/<step:06d>/training_state/     optimizer, LR schedule, RNG, step
    checkpoints/last       relative symlink to the newest checkpoint
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from parapolicy.policy.atomic_write import write_text_atomically
from parapolicy.policy.config import PolicyConfig, SamplerConfig, shipped_path
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.data.dataset import PushTLowdimDataset, check_split
from parapolicy.policy.data.image_dataset import make_dataset
from parapolicy.policy.data.replay_store import DatasetError
from parapolicy.policy.errors import ConfigError, NoRunToResumeError, check_device
from parapolicy.policy.eval import evaluate_across_ranks
from parapolicy.policy.model.checkpoint import (
    CheckpointError,
    check_state_dict,
    read_metadata,
    write_atomic_dir,
)
from parapolicy.policy.model.ema import EMA
from parapolicy.policy.model.policy import DiffusionPolicy, TrainingNoise
from parapolicy.policy.model.pretrained import load_policy, load_raw_weights, save_policy
from parapolicy.policy.model.training_state import load_training_state, save_training_state
from parapolicy.policy.model.vision import init_backbones
from parapolicy.policy.run_dir import claim_run_dir, json_text
from parapolicy.policy.runtime.distributed import DistInfo
from parapolicy.policy.runtime.ranks import (
    broadcast_int,
    check_same_on_all_ranks,
    current_ranks,
    mean_over_ranks,
    run_on_rank0,
)

LAST_LINK = "last"
_OWN_FILES = ("train_config.json", "metrics.jsonl", "checkpoints")


@dataclass
class TrainConfig:
    """Settings of `train`."""

    dataset_path: str = "assets/pusht_expert.zarr"
    """Demonstration store (ours, or the reference's format-2 zarr directory / zip)."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The policy to train."""
    num_steps: int = 20000
    """Optimizer steps."""
    batch_size: int = 256
    """Windows per batch: the global batch, split evenly over the processes of a torchrun job."""
    lr: float = 1e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.95, 0.999)
    """AdamW betas."""
    weight_decay: float = 1e-6
    """AdamW weight decay."""
    warmup_steps: int = 500
    """Linear LR warm-up steps before the cosine decay."""
    ema_power: float = 0.75
    """EMA warm-up power."""
    ema_max_decay: float = 0.9999
    """EMA decay cap."""
    seed: int = 42
    """Seed of initialisation, batch order, noise, split."""
    val_ratio: float = 0.02
    """Episodes held out for the validation loss."""
    max_train_episodes: int | None = None
    """Cap on training episodes (reference: 90); null for all."""
    log_every: int = 100
    """Steps between metrics lines."""
    val_every: int = 1000
    """Steps between validation-loss measurements (0: never)."""
    checkpoint_every: int = 2000
    """Steps between checkpoints (the last step is always saved)."""
    eval_every: int = 0
    """Steps between closed-loop evaluations of the EMA policy (0: never)."""
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n_episodes=10, max_videos=0, progress=False))
    """Closed-loop evaluation settings (periodic evaluation)."""
    eval_sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Sampler of the periodic evaluation."""
    init_policy: str = ""
    """Fine-tuning: start from this pretrained policy directory's (EMA) network weights instead of a
    random initialisation (same architecture; the normalizer is still fitted on ``dataset_path``).
    Empty (default): random initialisation, the reference recipe."""
    resume: bool = False
    """Continue the run in the output folder from its last checkpoint (from step 0 if it has none)."""
    allow_data_change: bool = False
    """Resume even though the demonstration store differs from the one the checkpoint was trained on."""
    num_threads: int = 0
    """torch CPU threads (0: torch's default)."""
    device: str = "cpu"
    """Torch device to train on; under torchrun ``cuda`` means each rank's own GPU (``cuda:LOCAL_RANK``)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        # absolute, so that a resume from another working directory reads the same config
        self.dataset_path = str(Path(shipped_path(self.dataset_path)).resolve())
        self.init_policy = str(Path(shipped_path(self.init_policy)).resolve()) if self.init_policy else ""
        for name in ("num_steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "val_every", "checkpoint_every", "eval_every", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_split(self.val_ratio, self.max_train_episodes)
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (self.ema_power > 0 and 0 <= self.ema_max_decay < 1):
            raise ValueError(
                f"need ema_power > 0 and 0 <= ema_max_decay < 1, got {self.ema_power}, {self.ema_max_decay}"
            )
        self.policy.check_sampler(self.eval_sampler)  # before any step is trained
        check_device(self.device)


def lr_lambda(warmup_steps: int, total_steps: int) -> Any:
    """Multiplier of the peak LR: linear warm-up, then half-cosine decay to 0 at ``total_steps``."""

    def fn(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


def _seeded(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


class _Batches:
    """Step -> batch indices, a pure function of (seed, step) (see module docstring)."""

    def __init__(self, n_windows: int, batch_size: int, seed: int) -> None:
        if n_windows < 1:
            raise ValueError("the training split has no windows")
        self.n, self.bs, self.seed = n_windows, min(batch_size, n_windows), seed
        self.per_epoch = self.n // self.bs  # drop the last partial batch, as the reference's loader does not
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.n, generator=_seeded(self.seed, 10_000_000 + epoch)).numpy()
        return self._perm[pos * self.bs : (pos + 1) * self.bs]


def _is_complete_checkpoint(path: Path) -> bool:
    model = path / "pretrained_model"
    return (
        all(
            (p).is_file()
            for p in (model / "config.json", model / "model.safetensors", model / "normalizer.safetensors")
        )
        and (path / "training_state").is_dir()
    )


def find_resume_checkpoint(out: Path) -> Path | None:
    """The checkpoint a resumed run continues from: the newest complete ``checkpoints/<step>``, which
    ``checkpoints/last`` names unless a kill came between a checkpoint's write and the link's update
    (or the link dangles, or names an incomplete checkpoint): then with a warning, and ``last``
    re-pointed at it. None when the run has no complete checkpoint at all."""
    ckpts = out / "checkpoints"
    link = ckpts / LAST_LINK
    complete = sorted(
        (p for p in ckpts.glob("[0-9]" * 6) if _is_complete_checkpoint(p)), key=lambda p: int(p.name)
    )
    if not complete:
        return None
    newest = complete[-1]
    if link.is_symlink() or link.exists():
        if link.resolve() == newest.resolve():
            return newest
        warnings.warn(
            f"{link} points at {os.readlink(link) if link.is_symlink() else link}, which is missing, "
            f"incomplete or older; resuming from the newest complete checkpoint {newest}",
            stacklevel=2,
        )
    _point_last(ckpts, newest.name)
    return newest


def _point_last(ckpts: Path, name: str) -> None:
    link, tmp_link = ckpts / LAST_LINK, ckpts / f".{LAST_LINK}.tmp"
    tmp_link.unlink(missing_ok=True)
    os.symlink(name, tmp_link)  # relative: the run folder can be moved
    os.replace(tmp_link, link)


def _check_run_dir(out: Path, resume: bool) -> None:
    if not resume:
        dead_end = (out / "train_config.json").exists() and find_resume_checkpoint(out) is None
        hint = (
            "it has no complete checkpoint (killed before the first save?): pass resume=true to restart "
            "it from step 0 in place, or choose a new folder"
            if dead_end
            else "pass resume=true to continue it, or choose a new folder"
        )
        claim_run_dir(out, _OWN_FILES, "parapolicy-train", hint=hint)
    elif not (out / "train_config.json").is_file():
        raise NoRunToResumeError(
            f"resume=true but {out / 'train_config.json'} does not exist: {out} holds no run to continue"
        )


# may differ between a run and its resumption
_RUN_CONTROL_FIELDS = ("resume", "progress", "num_threads", "allow_data_change", "device")


def _config_json(cfg: TrainConfig) -> str:
    data = dataclasses.asdict(cfg)
    for name in _RUN_CONTROL_FIELDS:
        data.pop(name)
    return json.dumps(data, indent=2, sort_keys=True)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows written after the checkpoint a resumed run restarts from, and a last row a
    killed run left half-written; the file is replaced whole (`write_text_atomically`)."""
    if path.exists():
        text = path.read_text()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines.pop()  # cut off mid-row by a kill
        rows = [line for line in lines if line and json.loads(line)["step"] <= step]
        write_text_atomically(path, "".join(row + "\n" for row in rows))


def _save_checkpoint(
    out: Path, policy: DiffusionPolicy, ema: EMA, optimizer, scheduler, step: int, data: dict[str, Any]
) -> Path:
    ckpt_dir = out / "checkpoints" / f"{step:06d}"

    def write(tmp: Path) -> None:
        save_policy(
            ema.shadow,
            tmp / "pretrained_model",
            raw_weights=policy.network.state_dict(),
            metadata={"step": step, "data_fingerprint": data},
        )
        save_training_state(tmp / "training_state", optimizer, scheduler, step, ema.optimization_step)

    write_atomic_dir(ckpt_dir, write)
    _point_last(out / "checkpoints", ckpt_dir.name)
    return ckpt_dir


def _check_data_unchanged(ckpt: Path, current: dict[str, Any], allow: bool) -> None:
    """Refuse to resume on a store other than the one ``ckpt`` was trained on (unless ``allow``)."""
    saved = read_metadata(ckpt / "pretrained_model").get("data_fingerprint")
    if saved == current:
        return
    msg = (
        f"the demonstration store changed since {ckpt} was saved (then: {saved}; now: {current}); "
        "its normaliser and batches would silently differ"
    )
    if not allow:
        raise CheckpointError(f"{msg}. Pass allow_data_change=true to resume anyway, or start a new run")
    warnings.warn(f"{msg}; resuming anyway (allow_data_change=true)", stacklevel=2)


@torch.no_grad()
def validation_loss(
    policy: DiffusionPolicy, dataset: PushTLowdimDataset, batch_size: int, seed: int
) -> float:
    """Mean denoising loss over the validation windows with fixed noise (comparable across steps)."""
    if len(dataset) == 0:
        return float("nan")
    losses, weights = [], []
    for k, first in enumerate(range(0, len(dataset), batch_size)):
        batch = dataset.get_batch(np.arange(first, min(first + batch_size, len(dataset))))
        batch = {k: v.to(policy.device) for k, v in batch.items()}
        losses.append(float(policy.compute_loss(batch, generator=_seeded(seed, 20_000_000 + k))))
        weights.append(len(batch["action"]))
    return float(np.average(losses, weights=weights))


@dataclass
class _Run:
    """The state one training run carries from setup into the loop (the same on every rank)."""

    cfg: TrainConfig
    out: Path
    ranks: DistInfo
    device: torch.device
    train_set: PushTLowdimDataset
    val_set: PushTLowdimDataset
    data: dict[str, Any]
    policy: DiffusionPolicy
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: int = 0


def _training_device(cfg: TrainConfig, ranks: DistInfo) -> torch.device:
    """``cfg.device``; under torchrun, ``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``)."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and ranks.world_size > 1 and device.index is None:
        device = torch.device("cuda", ranks.local_rank)
    return device


def _check_batch_split(cfg: TrainConfig, n_windows: int, world_size: int) -> None:
    """The global batch must split evenly over the ranks (each rank takes an equal slice)."""
    global_batch = min(cfg.batch_size, n_windows)
    if global_batch % world_size:
        clipped = f" (batch_size={cfg.batch_size} clipped to the {n_windows} training windows)"
        raise ConfigError(
            f"batch_size={global_batch}{clipped if global_batch != cfg.batch_size else ''} does not split "
            f"evenly over {world_size} processes: batch_size is the global batch, choose a multiple of "
            f"{world_size}"
        )


def _setup(cfg: TrainConfig, out: Path) -> _Run:
    """Claim the run folder (rank 0), load the data (every rank; checked equal) and build the model."""
    ranks = current_ranks()

    def claim() -> None:
        _check_run_dir(out, cfg.resume)
        out.mkdir(parents=True, exist_ok=True)

    run_on_rank0(ranks, claim, "checked the run folder")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    p = cfg.policy
    # keypoint windows, or image windows for pixels_agent_pos policies (data/image_dataset.py)
    train_set = make_dataset(
        p, cfg.dataset_path, cfg.val_ratio, cfg.max_train_episodes, cfg.seed, split="train"
    )
    if len(train_set) == 0:
        raise DatasetError(
            f"the training split of {cfg.dataset_path} has no windows: every training episode is shorter "
            f"than the {p.horizon - (p.n_obs_steps - 1) - (p.n_action_steps - 1)} steps a window needs "
            f"(horizon {p.horizon}, padded by n_obs_steps - 1 before and n_action_steps - 1 after)"
        )
    data = train_set.fingerprint()
    check_same_on_all_ranks(json.dumps(data, sort_keys=True), ranks, "the demonstration store")
    _check_batch_split(cfg, len(train_set), ranks.world_size)
    device = _training_device(cfg, ranks)
    torch.manual_seed(cfg.seed)
    policy = DiffusionPolicy(p, train_set.get_normalizer())
    if p.vision.backbone_weights is not None:  # the image encoders' initialisation
        init_backbones(policy.network, p.vision.backbone_weights)
    if cfg.init_policy:
        init = load_policy(cfg.init_policy).network.state_dict()
        check_state_dict(
            policy.network.state_dict(), init, f"init_policy {cfg.init_policy} (another architecture?)"
        )
        policy.network.load_state_dict(init, strict=True)
    policy.to(device)
    ema = EMA(copy.deepcopy(policy), power=cfg.ema_power, max_decay=cfg.ema_max_decay)
    optimizer = torch.optim.AdamW(
        policy.network.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, cfg.num_steps))
    val_set = train_set.get_validation_dataset()
    return _Run(cfg, out, ranks, device, train_set, val_set, data, policy, ema, optimizer, scheduler)


def _resume_point(run: _Run) -> int:
    """Rank 0: check the run folder for a resume and return the checkpoint step to load (-1: none),
    or write ``train_config.json`` of a new run (returns -1)."""
    cfg, out = run.cfg, run.out
    if not cfg.resume:
        write_text_atomically(out / "train_config.json", _config_json(cfg))
        return -1
    saved = (out / "train_config.json").read_text()
    if saved != _config_json(cfg):
        then, now = json.loads(saved), json.loads(_config_json(cfg))
        changed = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
        raise CheckpointError(
            f"resume=true but {', '.join(changed)} differ(s) from {out / 'train_config.json'} "
            f"(only {', '.join(_RUN_CONTROL_FIELDS)} may change when resuming: repeat the run's own "
            "overrides, whose values train_config.json records)"
        )
    last = find_resume_checkpoint(out)
    if last is None:
        warnings.warn(
            f"{out} has no complete checkpoint (the run stopped before its first save): restarting it "
            "from step 0 in place",
            stacklevel=2,
        )
        (out / "checkpoints" / LAST_LINK).unlink(missing_ok=True)
        _truncate_metrics(out / "metrics.jsonl", 0)
        return -1
    _check_data_unchanged(last, run.data, cfg.allow_data_change)
    step = int(last.name)
    _truncate_metrics(out / "metrics.jsonl", step)
    return step


def _load_checkpoint(run: _Run, ckpt: Path) -> None:
    """Every rank: continue from ``ckpt`` (EMA and raw weights, optimizer, schedule, RNG, step)."""
    run.ema.shadow = load_policy(ckpt / "pretrained_model", device=run.device)
    run.ema.shadow.requires_grad_(False)
    run.policy.network.load_state_dict(load_raw_weights(ckpt / "pretrained_model"), strict=True)
    run.step, run.ema.optimization_step = load_training_state(
        ckpt / "training_state", run.optimizer, run.scheduler
    )


class _Loss(nn.Module):
    """``forward`` = `DiffusionPolicy.compute_loss`, so that DistributedDataParallel can wrap it."""

    def __init__(self, policy: DiffusionPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, torch.Tensor], noise: TrainingNoise) -> torch.Tensor:
        return self.policy.compute_loss(batch, noise=noise)


def _loss_fn(run: _Run) -> nn.Module:
    """The loss module: plain in one process, under DistributedDataParallel across ranks (gradients
    averaged over the ranks; parameters and buffers broadcast from rank 0 when it is built)."""
    loss = _Loss(run.policy)
    if run.ranks.world_size == 1:
        return loss
    from torch.nn.parallel import DistributedDataParallel

    ids = [run.device.index] if run.device.type == "cuda" else None
    return DistributedDataParallel(loss, device_ids=ids)


def _step_batch(run: _Run, batches: _Batches) -> tuple[dict[str, torch.Tensor], TrainingNoise]:
    """This rank's slice of step ``run.step``'s global batch and of its noise draws."""
    idx = batches.indices(run.step)  # the global batch: the same on every rank
    per_rank = len(idx) // run.ranks.world_size
    lo, hi = run.ranks.rank * per_rank, (run.ranks.rank + 1) * per_rank
    batch = {k: v.to(run.device) for k, v in run.train_set.get_batch(idx[lo:hi]).items()}
    shape = (len(idx), *batch["action"].shape[1:])  # (B, H, Da) of the global batch
    noise = run.policy.draw_training_noise(shape, _seeded(run.cfg.seed, run.step)).rows(lo, hi)
    return batch, noise


def train(cfg: TrainConfig, out: Path) -> Path:
    """Train a policy into run folder ``out``; returns the final checkpoint directory.

    Under torchrun (a default process group exists, `runtime.ranks.current_ranks`), every rank calls
    this: ``cfg.batch_size`` is the global batch, each rank trains on its equal slice of it with
    DistributedDataParallel, and rank 0 alone writes the run folder (docs/distributed.md).

    Raises:
        RunFolderError: if ``out`` already holds a run and ``cfg.resume`` is false.
        NoRunToResumeError: if ``cfg.resume`` is true and ``out`` holds no run.
        CheckpointError: if resuming with a different config, a broken checkpoint, or (unless
            ``cfg.allow_data_change``) a demonstration store that differs from the checkpoint's.
        ConfigError: if the global batch does not split evenly over the ranks.
        PeerRankError: on ranks > 0, when rank 0 failed in a step only it runs.
    """
    run = _setup(cfg, Path(out))
    step = run_on_rank0(run.ranks, lambda: _resume_point(run), "checked the run to resume")
    step = broadcast_int(step if step is not None else -1, run.ranks)
    if step >= 0:
        _load_checkpoint(run, run.out / "checkpoints" / f"{step:06d}")
    return _loop(run)


def _log_row(run: _Run, window_loss: list[float], decay: float, elapsed: float) -> dict[str, Any]:
    """The metrics row of a log step; the loss is the mean over the window's global batches."""
    losses = mean_over_ranks(window_loss, run.ranks)  # each step's global-batch loss
    return {
        "step": run.step,
        "loss": float(np.mean(losses)),
        "lr": run.scheduler.get_last_lr()[0],
        "ema_decay": decay,
        "steps_per_s": len(window_loss) / max(elapsed, 1e-9),
    }


def _loop(run: _Run) -> Path:
    cfg, out, main = run.cfg, run.out, run.ranks.is_main
    batches = _Batches(len(run.train_set), cfg.batch_size, cfg.seed)
    loss_fn = _loss_fn(run)
    metrics = open(out / "metrics.jsonl", "a") if main else None  # noqa: SIM115 - closed in finally
    bar = tqdm(total=cfg.num_steps, initial=run.step, desc="train", disable=not (cfg.progress and main))
    window_loss, window_start = [], time.perf_counter()

    def write(row: dict[str, Any]) -> None:
        metrics.write(json_text(row) + "\n")  # strict JSON: a diverged loss is null

    try:
        run.policy.train()
        while run.step < cfg.num_steps:
            loss = loss_fn(*_step_batch(run, batches))
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            decay = run.ema.update(run.policy)
            run.step += 1
            window_loss.append(float(loss.detach()))
            bar.update(1)
            if run.step % cfg.log_every == 0 or run.step == cfg.num_steps:
                row = _log_row(run, window_loss, decay, time.perf_counter() - window_start)
                if main:
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    write(row)
                window_loss, window_start = [], time.perf_counter()
            _periodic(run, write)
            if metrics is not None:
                metrics.flush()
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    return (out / "checkpoints" / LAST_LINK).resolve()


def _periodic(run: _Run, write: Callable[[dict[str, Any]], None]) -> None:
    """Validation loss and checkpoints (rank 0 while the others wait), closed-loop evaluation (seeds
    split over the ranks) when their step comes."""
    cfg, step, ema = run.cfg, run.step, run.ema
    has_val = len(run.val_set) > 0  # val_ratio=0, or a split without validation windows: no row
    if cfg.val_every and has_val and (step % cfg.val_every == 0 or step == cfg.num_steps):

        def validate() -> None:
            ema.shadow.eval()
            write(
                {"step": step, "val_loss": validation_loss(ema.shadow, run.val_set, cfg.batch_size, cfg.seed)}
            )

        run_on_rank0(run.ranks, validate, "measured the validation loss")
    if cfg.eval_every and step % cfg.eval_every == 0:
        ema.shadow.eval()
        ema.shadow.set_sampler(cfg.eval_sampler)
        videos = run.out / "videos" / f"{step:06d}" if cfg.eval.max_videos else None
        result = evaluate_across_ranks(ema.shadow, cfg.eval, run.ranks, video_dir=videos)
        if result is not None:
            write({"step": step, "eval": result["aggregated"]})
    if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.num_steps:
        run_on_rank0(
            run.ranks,
            lambda: _save_checkpoint(run.out, run.policy, ema, run.optimizer, run.scheduler, step, run.data),
            f"saved the checkpoint of step {step}",
        )
