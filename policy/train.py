"""Training loop of the diffusion policy: the reference recipe, step-based, exactly resumable (no hydra).

Recipe (diffusion_policy's low-dim PushT): AdamW (lr 1e-4, betas 0.95/0.999, weight decay 1e-6),
cosine LR schedule with 500 linear warm-up steps stepped every batch, EMA of the weights with the
power-0.75 schedule capped at 0.9999 (checkpoints and evaluation use the EMA weights), batch 256.

Determinism and exact resume: the batch order of epoch e is a permutation drawn from a generator
seeded with (seed, e), and the diffusion noise and timesteps of step s come from a generator seeded
with (seed, s). Everything is a function of the step number, so resuming from a checkpoint replays
exactly what an uninterrupted run would have done.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from parapolicy.policy.config import PolicyConfig, SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig
from parapolicy.policy.control.rollout import evaluate_policy
from parapolicy.policy.data.dataset import PushTLowdimDataset
from parapolicy.policy.data.image_dataset import make_dataset
from parapolicy.policy.errors import NoRunToResumeError
from parapolicy.policy.model.checkpoint import CheckpointError, read_metadata, write_atomic_dir
from parapolicy.policy.model.ema import EMA
from parapolicy.policy.model.policy import DiffusionPolicy
from parapolicy.policy.model.pretrained import load_policy, load_raw_weights, save_policy
from parapolicy.policy.model.training_state import load_training_state, save_training_state
from parapolicy.policy.run_dir import claim_run_dir

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
    """Windows per batch."""
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
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("num_steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "val_every", "checkpoint_every", "eval_every", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


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
    """The checkpoint a resumed run continues from: ``checkpoints/last``, or, when that link dangles
    or names an incomplete checkpoint, the newest complete ``checkpoints/<step>`` (with a warning, and
    ``last`` re-pointed at it). None when the run has no complete checkpoint at all."""
    ckpts = out / "checkpoints"
    link = ckpts / LAST_LINK
    if link.is_symlink() or link.exists():
        target = link.resolve()
        if _is_complete_checkpoint(target):
            return target
    complete = sorted(
        (p for p in ckpts.glob("[0-9]" * 6) if _is_complete_checkpoint(p)), key=lambda p: int(p.name)
    )
    if not complete:
        return None
    newest = complete[-1]
    if link.is_symlink() or link.exists():
        warnings.warn(
            f"{link} points at {os.readlink(link) if link.is_symlink() else link}, which is missing or "
            f"incomplete; resuming from the newest complete checkpoint {newest}",
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
_RUN_CONTROL_FIELDS = ("resume", "progress", "num_threads", "allow_data_change")


def _config_json(cfg: TrainConfig) -> str:
    data = dataclasses.asdict(cfg)
    for name in _RUN_CONTROL_FIELDS:
        data.pop(name)
    return json.dumps(data, indent=2, sort_keys=True)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows written after the checkpoint a resumed run restarts from."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(row + "\n" for row in rows))


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
        losses.append(float(policy.compute_loss(batch, generator=_seeded(seed, 20_000_000 + k))))
        weights.append(len(batch["action"]))
    return float(np.average(losses, weights=weights))


def train(cfg: TrainConfig, out: Path) -> Path:
    """Train a policy into run folder ``out``; returns the final checkpoint directory.

    Raises:
        RunFolderError: if ``out`` already holds a run and ``cfg.resume`` is false.
        NoRunToResumeError: if ``cfg.resume`` is true and ``out`` holds no run.
        CheckpointError: if resuming with a different config, a broken checkpoint, or (unless
            ``cfg.allow_data_change``) a demonstration store that differs from the checkpoint's.
    """
    out = Path(out)
    _check_run_dir(out, cfg.resume)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out.mkdir(parents=True, exist_ok=True)
    p = cfg.policy
    # keypoint windows, or image windows for pixels_agent_pos policies (data/image_dataset.py)
    train_set = make_dataset(
        p, cfg.dataset_path, cfg.val_ratio, cfg.max_train_episodes, cfg.seed, split="train"
    )
    val_set = train_set.get_validation_dataset()
    data = train_set.fingerprint()
    torch.manual_seed(cfg.seed)
    policy = DiffusionPolicy(p, train_set.get_normalizer())
    if cfg.init_policy:
        policy.network.load_state_dict(load_policy(cfg.init_policy).network.state_dict(), strict=True)
    ema = EMA(copy.deepcopy(policy), power=cfg.ema_power, max_decay=cfg.ema_max_decay)
    optimizer = torch.optim.AdamW(
        policy.network.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, cfg.num_steps))
    step = 0
    if cfg.resume:
        saved = (out / "train_config.json").read_text()
        if saved != _config_json(cfg):
            raise CheckpointError(
                f"resume=true but the config differs from {out / 'train_config.json'} "
                f"(only {', '.join(_RUN_CONTROL_FIELDS)} may change when resuming)"
            )
        last = find_resume_checkpoint(out)
        if last is None:
            warnings.warn(
                f"{out} has no complete checkpoint (the run stopped before its first save): restarting it "
                "from step 0 in place",
                stacklevel=2,
            )
            (out / "checkpoints" / LAST_LINK).unlink(missing_ok=True)
        else:
            _check_data_unchanged(last, data, cfg.allow_data_change)
            ema.shadow = load_policy(last / "pretrained_model")
            ema.shadow.requires_grad_(False)
            policy.network.load_state_dict(load_raw_weights(last / "pretrained_model"), strict=True)
            step, ema.optimization_step = load_training_state(last / "training_state", optimizer, scheduler)
        _truncate_metrics(out / "metrics.jsonl", step)
    else:
        (out / "train_config.json").write_text(_config_json(cfg))

    batches = _Batches(len(train_set), cfg.batch_size, cfg.seed)
    metrics = open(out / "metrics.jsonl", "a")  # noqa: SIM115 - closed in finally
    bar = tqdm(total=cfg.num_steps, initial=step, desc="train", disable=not cfg.progress)
    window_loss, window_start = [], time.perf_counter()
    last_ckpt = None
    try:
        policy.train()
        while step < cfg.num_steps:
            batch = train_set.get_batch(batches.indices(step))
            loss = policy.compute_loss(batch, generator=_seeded(cfg.seed, step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            decay = ema.update(policy)
            step += 1
            window_loss.append(float(loss.detach()))
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.num_steps:
                elapsed = time.perf_counter() - window_start
                row = {
                    "step": step,
                    "loss": float(np.mean(window_loss)),
                    "lr": scheduler.get_last_lr()[0],
                    "ema_decay": decay,
                    "steps_per_s": len(window_loss) / max(elapsed, 1e-9),
                }
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                metrics.write(json.dumps(row) + "\n")
                window_loss, window_start = [], time.perf_counter()
            if cfg.val_every and (step % cfg.val_every == 0 or step == cfg.num_steps):
                ema.shadow.eval()
                row = {
                    "step": step,
                    "val_loss": validation_loss(ema.shadow, val_set, cfg.batch_size, cfg.seed),
                }
                metrics.write(json.dumps(row) + "\n")
            if cfg.eval_every and step % cfg.eval_every == 0:
                ema.shadow.eval()
                ema.shadow.set_sampler(cfg.eval_sampler)
                agg = evaluate_policy(ema.shadow, cfg.eval)["aggregated"]
                metrics.write(json.dumps({"step": step, "eval": agg}) + "\n")
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.num_steps:
                last_ckpt = _save_checkpoint(out, policy, ema, optimizer, scheduler, step, data)
            metrics.flush()
    finally:
        bar.close()
        metrics.close()
    return last_ckpt if last_ckpt is not None else (out / "checkpoints" / LAST_LINK).resolve()
