"""Regenerate the golden-output fixture of the tiny policy (tests/test_policy.py::test_golden_output).

Procedure (run only when an output change is intended, and say why in the commit message):
1. `python tests/artifacts/make_golden.py` (CPU, x86_64).
2. It rewrites `tests/artifacts/golden_tiny/` (a tiny randomly initialised policy checkpoint, seeded) and
   `tests/artifacts/golden_tiny_io.safetensors` (a fixed observation batch, pre-drawn noise, and the
   expected plans of sequential DDPM-100, DDIM-10 and DPM-Solver++-10).
3. Run `pytest tests/test_policy.py -k golden` and commit both artifacts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from parapolicy.policy.config import PolicyConfig, SamplerConfig, UNetConfig
from parapolicy.policy.diffusion.sequential import draw_noise
from parapolicy.policy.model.policy import DiffusionPolicy
from parapolicy.policy.model.pretrained import save_policy

HERE = Path(__file__).parent
SAMPLERS = {
    "ddpm100": SamplerConfig(kind="ddpm", num_inference_steps=100),
    "ddim10": SamplerConfig(kind="ddim", num_inference_steps=10, window=8),
    "dpm10": SamplerConfig(kind="dpmsolver++", num_inference_steps=10, window=8),
}


def golden_inputs(policy: DiffusionPolicy) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2024)
    obs = torch.rand(3, 2, 20, generator=gen) * 512  # (B, To, Do)
    tensors = {"obs": obs}
    for name, sampler in SAMPLERS.items():
        policy.set_sampler(sampler)
        x_T, noise = draw_noise(policy.table, (3, 16, 2), gen)
        tensors[f"{name}.x_T"], tensors[f"{name}.noise"] = x_T, noise
    return tensors


def main() -> None:
    torch.manual_seed(0)
    policy = DiffusionPolicy(PolicyConfig(unet=UNetConfig(down_dims=(16, 32), diffusion_step_embed_dim=16)))
    gen = torch.Generator().manual_seed(1)
    policy.normalizer.fit(
        {"obs": torch.rand(200, 20, generator=gen) * 512, "action": torch.rand(200, 2, generator=gen) * 512}
    )
    shutil.rmtree(HERE / "golden_tiny", ignore_errors=True)
    save_policy(policy, HERE / "golden_tiny")
    tensors = golden_inputs(policy)
    for name, sampler in SAMPLERS.items():
        policy.set_sampler(sampler)
        out = policy.predict_action_chunk(
            {"obs": tensors["obs"]}, noise=(tensors[f"{name}.x_T"], tensors[f"{name}.noise"])
        )
        tensors[f"{name}.plan"] = out.plan
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(HERE / "golden_tiny_io.safetensors"))


if __name__ == "__main__":
    main()
