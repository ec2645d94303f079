"""Save and restore the resumable part of training (optimizer, LR schedule, RNG, step) without pickle.

Layout of ``training_state/``::

    optimizer_state.safetensors     every tensor of the optimizer state, named "state.<param>.<field>"
    optimizer_param_groups.json     the param groups and the non-tensor state
    scheduler_state.json            the LR scheduler's state_dict (JSON-safe)
    rng_state.safetensors           torch CPU (and CUDA) RNG states, numpy's MT19937 key
    rng_state.json                  python `random` and the rest of numpy's state
    training_step.json              {"step": ..., "ema_optimization_step": ...}

No hydra imports.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from parapolicy.policy.model.checkpoint import CheckpointError, read_tensors


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return None  # callables (LambdaLR's lambdas) are rebuilt from the config, not saved


def save_training_state(
    directory: Path, optimizer: torch.optim.Optimizer, scheduler: Any, step: int, ema_optimization_step: int
) -> None:
    """Write the training state into ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=False)
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, fields in opt["state"].items():
        for name, value in fields.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    save_file(tensors, str(directory / "optimizer_state.safetensors"))
    (directory / "optimizer_param_groups.json").write_text(
        json.dumps(
            {"param_groups": _json_safe(opt["param_groups"]), "scalars": _json_safe(scalars)}, indent=1
        )
    )
    (directory / "scheduler_state.json").write_text(json.dumps(_json_safe(scheduler.state_dict()), indent=1))
    np_state = np.random.get_state()
    rng = {"torch_cpu": torch.get_rng_state(), "numpy_key": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(directory / "rng_state.safetensors"))
    py_state = random.getstate()
    (directory / "rng_state.json").write_text(
        json.dumps(
            {"python": [py_state[0], list(py_state[1]), py_state[2]], "numpy": [np_state[0], *np_state[2:]]}
        )
    )
    (directory / "training_step.json").write_text(
        json.dumps({"step": step, "ema_optimization_step": ema_optimization_step})
    )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def load_training_state(directory: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[int, int]:
    """Restore optimizer, scheduler and RNG states from ``directory``.

    Returns:
        (step, ema_optimization_step).

    Raises:
        CheckpointError: on a missing or malformed file.
    """
    tensors = read_tensors(directory / "optimizer_state.safetensors")
    meta = _read_json(directory / "optimizer_param_groups.json")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{directory}: optimizer state does not match the model: {exc}") from exc
    sched = _read_json(directory / "scheduler_state.json")
    sched.pop("lr_lambdas", None)
    scheduler.load_state_dict({**scheduler.state_dict(), **sched})
    rng = read_tensors(directory / "rng_state.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        if f"torch_cuda_{i}" in rng:
            torch.cuda.set_rng_state(rng[f"torch_cuda_{i}"], i)
    rng_json = _read_json(directory / "rng_state.json")
    version, internal, gauss = rng_json["python"]
    random.setstate((version, tuple(internal), gauss))
    name, *rest = rng_json["numpy"]
    np.random.set_state((name, rng["numpy_key"].numpy().astype(np.uint32), *rest))
    step = _read_json(directory / "training_step.json")
    return int(step["step"]), int(step["ema_optimization_step"])
