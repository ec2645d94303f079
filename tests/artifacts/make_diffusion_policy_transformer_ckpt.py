"""Writes tests/artifacts/diffusion_policy_transformer_{causal,encoder}.ckpt and their golden values
(``..._golden.safetensors``): Diffusion Policy transformer low-dim checkpoints
(``DiffusionTransformerLowdimPolicy``, ``train_diffusion_transformer_lowdim_pusht_workspace.yaml`` at a
tiny size), written as its workspace writes one, and what Diffusion Policy's own modules compute.

Two variants: ``causal`` is the PushT recipe's (causal attention, an MLP over the memory);
``encoder`` has full attention and a one-layer transformer encoder over the memory. The network is
real-stanford/diffusion_policy's ``TransformerForDiffusion`` itself (imported from a checkout of that
repository, not from this project), with every parameter redrawn from a seed so that a wrong mapping
shows. ``predict_action`` is restated from its source with diffusers' DDIM scheduler: the golden file
holds the observations, x_T, the network's output for one call and the DDIM-10 actions.

Needs dill, omegaconf and a checkout of diffusion_policy on the path (none is a dependency):
    PYTHONPATH=<diffusion_policy checkout> python tests/artifacts/make_diffusion_policy_transformer_ckpt.py
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import dill
import torch
from diffusion_policy.model.diffusion.transformer_for_diffusion import TransformerForDiffusion
from omegaconf import OmegaConf
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusion_policy_mirror import DDPM_SCHEDULER, ddim_sample, limits_normalizer  # noqa: E402

HERE = Path(__file__).parent
WORKSPACE = (
    "diffusion_policy.workspace.train_diffusion_transformer_lowdim_workspace."
    "TrainDiffusionTransformerLowdimWorkspace"
)
POLICY = "diffusion_policy.policy.diffusion_transformer_lowdim_policy.DiffusionTransformerLowdimPolicy"
MODEL = "diffusion_policy.model.diffusion.transformer_for_diffusion.TransformerForDiffusion"
OBS_DIM, ACTION_DIM, HORIZON, TO, TA = 20, 2, 16, 2, 8
VARIANTS = {
    "causal": {"causal_attn": True, "n_cond_layers": 0},
    "encoder": {"causal_attn": False, "n_cond_layers": 1},
}


def model_config(causal_attn: bool, n_cond_layers: int) -> dict:
    return {
        "_target_": MODEL, "input_dim": ACTION_DIM, "output_dim": ACTION_DIM, "horizon": HORIZON,
        "n_obs_steps": TO, "cond_dim": OBS_DIM, "n_layer": 2, "n_head": 4, "n_emb": 16,
        "p_drop_emb": 0.0, "p_drop_attn": 0.01, "causal_attn": causal_attn, "time_as_cond": True,
        "obs_as_cond": True, "n_cond_layers": n_cond_layers,
    }  # fmt: skip


def config(model: dict) -> dict:
    """The resolved config, as train.py hands it to the workspace (tiny network sizes)."""
    return {
        "name": "train_diffusion_transformer_lowdim", "_target_": WORKSPACE,
        "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "task_name": "pusht_lowdim", "exp_name": "default",
        "horizon": HORIZON, "n_obs_steps": TO, "n_action_steps": TA, "n_latency_steps": 0,
        "past_action_visible": False, "keypoint_visible_rate": 1.0, "obs_as_cond": True,
        "pred_action_steps_only": False,
        "policy": {
            "_target_": POLICY,
            "model": model,
            "noise_scheduler": DDPM_SCHEDULER,
            "horizon": HORIZON, "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "n_action_steps": TA,
            "n_obs_steps": TO, "num_inference_steps": 100, "obs_as_cond": True,
            "pred_action_steps_only": False,
        },
        "task": {"name": "pusht_lowdim", "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "keypoint_dim": 2},
        "optimizer": {"learning_rate": 1.0e-4, "weight_decay": 1.0e-1, "betas": [0.9, 0.95]},
        "training": {"device": "cuda:0", "seed": 42, "use_ema": True, "lr_warmup_steps": 1000},
    }  # fmt: skip


def policy_state(net: TransformerForDiffusion, seed: int) -> OrderedDict:
    """The policy state dict (ModuleAttrMixin's dummies, model.*, mask_generator, normalizer), every
    parameter of the network redrawn from ``seed`` (the masks kept)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.numel():
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))
    state = OrderedDict(_dummy_variable=torch.empty(0))
    for name, value in net.state_dict().items():
        state[f"model.{name}"] = value.clone()
    state["mask_generator._dummy_variable"] = torch.empty(0)
    state |= limits_normalizer("obs", OBS_DIM, 13.0, 500.0, g)
    state |= limits_normalizer("action", ACTION_DIM, 12.0, 505.0, g)
    return state


def predict_action(net, state, obs, x_T, steps):
    """``DiffusionTransformerLowdimPolicy.predict_action`` (obs_as_cond) with diffusers' DDIM."""
    n = "normalizer.params_dict."
    cond = (obs * state[f"{n}obs.scale"] + state[f"{n}obs.offset"])[:, :TO]  # (B, To, Do)
    trajectory = ddim_sample(lambda x, t: net(x, t, cond), x_T, DDPM_SCHEDULER, steps)
    action_pred = (trajectory - state[f"{n}action.offset"]) / state[f"{n}action.scale"]
    return action_pred[:, TO - 1 : TO - 1 + TA].contiguous()


def main() -> None:
    for i, (variant, kwargs) in enumerate(VARIANTS.items()):
        model = model_config(**kwargs)
        cfg = config(model)
        net = TransformerForDiffusion(**{k: v for k, v in model.items() if k != "_target_"})
        ema = policy_state(net, seed=10 * i + 1)
        net.eval()
        g = torch.Generator().manual_seed(10 * i + 2)
        obs = 20 + torch.rand(3, TO, OBS_DIM, generator=g) * 470  # (B, To, Do) env units
        x_T = torch.randn(3, HORIZON, ACTION_DIM, generator=g)
        t = torch.tensor([0, 37, 99])
        with torch.no_grad():
            cond = obs * ema["normalizer.params_dict.obs.scale"] + ema["normalizer.params_dict.obs.offset"]
            eps = net(x_T, t, cond)
            actions = predict_action(net, ema, obs, x_T, steps=10)
        model_state = policy_state(net, seed=10 * i + 3)  # the non-EMA weights differ
        payload = {
            "cfg": OmegaConf.create(cfg),
            "state_dicts": {"model": model_state, "ema_model": ema},
            "pickles": {"_output_dir": dill.dumps(f"data/outputs/2023.01.01/00.00.00_{variant}")},
        }
        path = HERE / f"diffusion_policy_transformer_{variant}.ckpt"
        with path.open("wb") as f:
            torch.save(payload, f, pickle_module=dill)
        golden = {"obs": obs, "x_T": x_T, "t": t, "eps": eps, "actions": actions}
        save_file(golden, str(HERE / f"diffusion_policy_transformer_{variant}_golden.safetensors"))
        print(f"wrote {path} ({path.stat().st_size} bytes) and its golden values")


if __name__ == "__main__":
    main()
