"""Writes tests/artifacts/diffusion_policy_lowdim_tiny.ckpt: a Diffusion Policy workspace checkpoint in the
exact form real-stanford/diffusion_policy writes one, at a tiny network size.

What Diffusion Policy's `BaseWorkspace.save_checkpoint` does: `torch.save({"cfg": cfg, "state_dicts":
{"model": ..., "ema_model": ..., "optimizer": ...}, "pickles": {"_output_dir": dill.dumps(dir)}}, f,
pickle_module=dill)`, with `cfg` the *resolved* OmegaConf config of
`train_diffusion_unet_lowdim_workspace.yaml` + `task/pusht_lowdim.yaml` (train.py resolves it before the
workspace exists). The policy's state dict (`DiffusionUnetLowdimPolicy`): `_dummy_variable` and
`mask_generator._dummy_variable` (`ModuleAttrMixin`'s empty parameters), `model.*` (`ConditionalUnet1D`,
whose module names this project's U-Net uses) and `normalizer.params_dict.{obs,action}.{scale,offset}` with
`input_stats.{min,max,mean,std}` (`LinearNormalizer`, "limits" mode: x * scale + offset).

Needs dill and omegaconf (not dependencies of parapolicy: the loader needs neither), e.g.
    pip install --target /tmp/dillpkg dill
    PYTHONPATH=/tmp/dillpkg python tests/artifacts/make_diffusion_policy_ckpt.py
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import dill
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusion_policy_mirror import DDPM_SCHEDULER, limits_normalizer  # noqa: E402

from parapolicy.policy.model.networks import ConditionalUnet1d  # noqa: E402

OUT = Path(__file__).with_name("diffusion_policy_lowdim_tiny.ckpt")
WORKSPACE = (
    "diffusion_policy.workspace.train_diffusion_unet_lowdim_workspace.TrainDiffusionUnetLowdimWorkspace"
)
OBS_DIM, ACTION_DIM, HORIZON, TO, TA = 20, 2, 16, 2, 8
DOWN_DIMS, EMBED, KERNEL = [8, 16], 8, 5


def config() -> dict:
    """The resolved config, as train.py hands it to the workspace (tiny network sizes)."""
    return {
        "name": "train_diffusion_unet_lowdim",
        "_target_": WORKSPACE,
        "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "keypoint_dim": 2, "task_name": "pusht_lowdim",
        "exp_name": "default", "horizon": HORIZON, "n_obs_steps": TO, "n_action_steps": TA,
        "n_latency_steps": 0, "past_action_visible": False, "keypoint_visible_rate": 1.0,
        "obs_as_local_cond": False, "obs_as_global_cond": True, "pred_action_steps_only": False,
        "policy": {
            "_target_": "diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy",
            "model": {
                "_target_": "diffusion_policy.model.diffusion.conditional_unet1d.ConditionalUnet1D",
                "input_dim": ACTION_DIM, "local_cond_dim": None, "global_cond_dim": OBS_DIM * TO,
                "diffusion_step_embed_dim": EMBED, "down_dims": DOWN_DIMS, "kernel_size": KERNEL,
                "n_groups": 8, "cond_predict_scale": True,
            },
            "noise_scheduler": DDPM_SCHEDULER,
            "horizon": HORIZON, "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "n_action_steps": TA,
            "n_obs_steps": TO, "num_inference_steps": 100, "obs_as_local_cond": False,
            "obs_as_global_cond": True, "pred_action_steps_only": False, "oa_step_convention": True,
        },
        "task": {"name": "pusht_lowdim", "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "keypoint_dim": 2},
        "training": {"device": "cuda:0", "seed": 42, "use_ema": True, "num_epochs": 5000},
    }  # fmt: skip


def policy_state(seed: int) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    net = ConditionalUnet1d(
        input_dim=ACTION_DIM, global_cond_dim=OBS_DIM * TO, diffusion_step_embed_dim=EMBED,
        down_dims=tuple(DOWN_DIMS), kernel_size=KERNEL, n_groups=8, cond_predict_scale=True,
    )  # fmt: skip
    state = OrderedDict(_dummy_variable=torch.empty(0))
    for name, value in net.state_dict().items():  # random weights, so a wrong mapping shows
        state[f"model.{name}"] = torch.randn(value.shape, generator=g) * 0.2
    state["mask_generator._dummy_variable"] = torch.empty(0)
    state |= limits_normalizer("obs", OBS_DIM, 13.0, 500.0, g)
    state |= limits_normalizer("action", ACTION_DIM, 12.0, 505.0, g)
    return state


def main() -> None:
    model, ema = policy_state(0), policy_state(1)
    optimizer = {
        "state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
        "param_groups": [
            {"lr": 1e-4, "betas": (0.95, 0.999), "eps": 1e-8, "weight_decay": 1e-6, "params": [0]}
        ],
    }
    payload = {
        "cfg": OmegaConf.create(config()),
        "state_dicts": {"model": model, "ema_model": ema, "optimizer": optimizer},
        "pickles": {
            "_output_dir": dill.dumps("data/outputs/2023.01.01/00.00.00_train_diffusion_unet_lowdim")
        },
    }
    with OUT.open("wb") as f:
        torch.save(payload, f, pickle_module=dill)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
