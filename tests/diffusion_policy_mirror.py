"""Test-only pieces shared by the Diffusion Policy checkpoint tests and the generators of their fixtures
(`tests/artifacts/make_diffusion_policy_*.py`): Diffusion Policy's DDPM settings and limits normaliser,
its DDIM sampling loop with diffusers' scheduler, the deterministic weights of an image policy's state
dict given its tensor names and shapes, reading a golden pair back as a ``.ckpt``, and the check that
ParaDDPM on a loaded checkpoint gives its sequential sample.

For the image policy the generator records the names, shapes and aliases of the state dict that
Diffusion Policy's ``DiffusionUnetHybridImagePolicy`` really has (robomimic's encoder registers its
backbone and pool twice, so two names hold one tensor), the fixed tensors (spatial-softmax grid and
temperature, normaliser parameters), and what robomimic's encoder and Diffusion Policy's
``predict_action`` compute from those weights. The test rebuilds the same state dict from the same seed,
writes it as a ``.ckpt`` and checks that this project's loader reproduces those values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

ARTIFACTS = Path(__file__).parent / "artifacts"


def read_golden(stem: str) -> tuple[dict, dict[str, Tensor], dict[str, Tensor]]:
    """(meta, tensors, policy state dict) of the golden pair ``tests/artifacts/<stem>.{json,safetensors}``."""
    meta = json.loads((ARTIFACTS / f"{stem}.json").read_text())
    tensors = load_file(str(ARTIFACTS / f"{stem}.safetensors"))
    fixed = {k[len("fixed/") :]: v for k, v in tensors.items() if k.startswith("fixed/")}
    state = random_weights(meta["entries"], fixed, meta["seed"])
    return meta, tensors, state


def save_golden(stem: Path, meta: dict, fixed: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
    """Write a golden pair `read_golden` reads: ``meta`` as JSON, the ``fixed`` state tensors (under
    ``fixed/``) and the inputs and outputs as safetensors."""
    from safetensors.torch import save_file

    stem.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    tensors = {f"fixed/{k}": v.contiguous() for k, v in fixed.items()} | outputs
    save_file(tensors, str(stem.with_suffix(".safetensors")))


def write_ckpt(directory: Path, golden, edit_state=None, edit_cfg=None, name: str = "image.ckpt") -> Path:
    """A golden policy as Diffusion Policy's workspace saves it (plain dicts; the OmegaConf / dill
    pickling is the low-dim test's), after the optional in-place edits of its state dict and config."""
    meta, _, state = golden
    cfg = json.loads(json.dumps(meta["cfg"]))
    state = dict(state)
    if edit_state:
        edit_state(state)
    if edit_cfg:
        edit_cfg(cfg)
    path = directory / name
    torch.save({"cfg": cfg, "state_dicts": {"model": state, "ema_model": state}, "pickles": {}}, path)
    return path


def assert_paraddpm_gives_the_sequential_plan(ckpt: Path, obs: dict[str, Tensor]) -> None:
    """ParaDDPM (parareal, window 16, tol 1e-6) on the checkpoint plans what sequential DDPM plans with
    the same noise (to 1e-3 in env units), in fewer than 100 iterations, for ``obs``'s first history."""
    from parapolicy.policy.config import SamplerConfig
    from parapolicy.policy.model.pretrained import load_policy

    obs = {k: v[:1] for k, v in obs.items()}
    g = torch.Generator().manual_seed(5)
    noise = (torch.randn(1, 16, 2, generator=g), torch.randn(100, 1, 16, 2, generator=g))
    picard = SamplerConfig(algorithm="picard", window=16, tol=1e-6, update="parareal")
    seq, para = load_policy(ckpt), load_policy(ckpt, sampler=picard)
    with torch.no_grad():
        a, b = seq.predict_action_chunk(obs, noise=noise), para.predict_action_chunk(obs, noise=noise)
    assert b.result.iterations < 100
    torch.testing.assert_close(b.plan, a.plan, atol=1e-3, rtol=0)


def random_weights(entries: list[list], fixed: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """The policy state dict: ``fixed`` tensors as given, every other tensor drawn from ``seed``.

    Args:
        entries: [name, shape, alias] in state-dict order; ``alias`` names the earlier entry holding the
            same tensor (robomimic's shared modules), or is None.
        fixed: tensors that are not learned weights (grids, temperatures, normaliser parameters).
        seed: generator seed; tensors are drawn in entry order.

    Weights with two or more dimensions ~ N(0, 1 / fan_in); other ``weight`` tensors (norms) ~ 1 + 0.1 N;
    BatchNorm running variances ~ 1 + 0.1 |N|, its step counters 7 (int64); biases and running means
    ~ 0.1 N. Random values make a wrong mapping show.
    """
    g = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for name, shape, alias in entries:
        if alias is not None:
            state[name] = state[alias]
        elif name in fixed:
            state[name] = fixed[name]
        elif name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif math.prod(shape) == 0:
            state[name] = torch.zeros(shape)
        else:
            w = torch.randn(shape, generator=g)
            if len(shape) >= 2:
                w = w / math.sqrt(math.prod(shape[1:]))
            elif name.endswith("weight"):
                w = 1.0 + 0.1 * w
            elif name.endswith("running_var"):
                w = 1.0 + 0.1 * w.abs()
            else:
                w = 0.1 * w
            state[name] = w
    return state


# Diffusion Policy's DDPM scheduler as its PushT workspaces configure it (diffusers' class, resolved).
DDPM_SCHEDULER = {
    "_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler",
    "num_train_timesteps": 100,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "squaredcos_cap_v2",
    "variance_type": "fixed_small",
    "clip_sample": True,
    "prediction_type": "epsilon",
}


def limits_normalizer(key: str, dim: int, lo: float, hi: float, g: torch.Generator) -> dict[str, Tensor]:
    """``normalizer.params_dict.<key>.*`` of Diffusion Policy's ``LinearNormalizer`` in "limits" mode
    (``x * scale + offset`` maps [min, max] to [-1, 1]) for per-dimension limits drawn near [lo, hi]."""
    low = lo + torch.rand(dim, generator=g) * 5  # (D,)
    high = hi - torch.rand(dim, generator=g) * 5  # (D,)
    scale = 2.0 / (high - low)
    p = f"normalizer.params_dict.{key}"
    return {
        f"{p}.scale": scale,
        f"{p}.offset": -1.0 - scale * low,
        f"{p}.input_stats.min": low,
        f"{p}.input_stats.max": high,
        f"{p}.input_stats.mean": (low + high) / 2,
        f"{p}.input_stats.std": (high - low) / 4,
    }


def pusht_image_workspace_config(name: str, target: str, shape_meta: dict, policy: dict) -> dict:
    """A resolved PushT image training config of Diffusion Policy's workspace ``target`` (``name``),
    horizon 16, To 2, Ta 8, around the ``policy`` section, in the order of its YAML keys."""
    return {
        "name": name,
        "_target_": target,
        "task_name": "pusht_image", "shape_meta": shape_meta, "exp_name": "default",
        "horizon": 16, "n_obs_steps": 2, "n_action_steps": 8, "n_latency_steps": 0,
        "dataset_obs_steps": 2, "past_action_visible": False, "keypoint_visible_rate": 1.0,
        "obs_as_global_cond": True,
        "policy": policy,
        "task": {"name": "pusht_image", "image_shape": [3, 96, 96], "shape_meta": shape_meta},
        "training": {"device": "cuda:0", "seed": 42, "use_ema": True, "num_epochs": 3050},
    }  # fmt: skip


def image_range_normalizer(key: str) -> dict[str, Tensor]:
    """``normalizer.params_dict.<key>.*`` of Diffusion Policy's ``get_image_range_normalizer``: images in
    [0, 1] -> [-1, 1] (``x * 2 - 1``), with the statistics of a uniform [0, 1] range."""
    p = f"normalizer.params_dict.{key}"
    return {
        f"{p}.scale": torch.tensor([2.0]),
        f"{p}.offset": torch.tensor([-1.0]),
        f"{p}.input_stats.min": torch.zeros(1),
        f"{p}.input_stats.max": torch.ones(1),
        f"{p}.input_stats.mean": torch.tensor([0.5]),
        f"{p}.input_stats.std": torch.tensor([(1 / 12) ** 0.5]),
    }


def pusht_image_normalizer(seed: int) -> dict[str, Tensor]:
    """The normaliser tensors of the golden PushT image policies: limits of ``agent_pos`` and ``action``
    drawn from ``seed``, and the image range normaliser."""
    g = torch.Generator().manual_seed(seed)
    fixed = limits_normalizer("agent_pos", 2, 13.0, 500.0, g)
    fixed |= limits_normalizer("action", 2, 12.0, 505.0, g)
    return fixed | image_range_normalizer("image")


def pusht_image_observations(B: int, To: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(B, To, 96, 96, 3) uint8 camera images, as rendered, and (B, To, 2) agent positions in px."""
    pixels = torch.randint(0, 256, (B, To, 96, 96, 3), generator=generator, dtype=torch.uint8)
    return pixels, 20 + torch.rand(B, To, 2, generator=generator) * 470


def ddim_sample(denoise, x_T: Tensor, scheduler: dict, steps: int) -> Tensor:
    """Diffusion Policy's ``conditional_sample`` loop (nothing inpainted) with diffusers' DDIM scheduler
    built from the checkpoint's DDPM settings; ``denoise(x, t)`` is the network with its condition."""
    import diffusers  # a dev dependency: only these tests and the generators need it

    ddim = diffusers.DDIMScheduler(
        num_train_timesteps=scheduler["num_train_timesteps"],
        beta_start=scheduler["beta_start"],
        beta_end=scheduler["beta_end"],
        beta_schedule=scheduler["beta_schedule"],
        clip_sample=scheduler["clip_sample"],
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type=scheduler["prediction_type"],
    )
    trajectory = x_T.clone()
    ddim.set_timesteps(steps)
    with torch.no_grad():
        for t in ddim.timesteps:
            trajectory = ddim.step(denoise(trajectory, t), t, trajectory).prev_sample
    return trajectory
