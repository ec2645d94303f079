"""Writes tests/artifacts/diffusion_policy_multi_image{,_shared}_golden.{json,safetensors}: what Diffusion
Policy's ``DiffusionUnetImagePolicy`` (``train_diffusion_unet_image_workspace.yaml`` with
``task=pusht_image``, at a tiny U-Net size) computes with its own observation encoder
(``MultiImageObsEncoder`` over ``get_resnet("resnet18")``), for weights drawn from a seed.

Everything is Diffusion Policy's own code, imported from a checkout of its repository: the policy is
built as its workspace builds it (the encoder, then the policy around it), its weights are loaded from
the drawn state dict, and the DDIM-10 actions come from its ``predict_action`` with diffusers' DDIM
scheduler (x_T is the first draw of torch's global generator, recorded here). Two configurations:

- ``diffusion_policy_multi_image_golden``: the released one (crop 76 x 76 at random in training and
  centred in evaluation, GroupNorm, one ResNet per camera, ImageNet normalisation);
- ``diffusion_policy_multi_image_shared_golden``: BatchNorm kept, ``share_rgb_model``, ``random_crop:
  False`` (the encoder then crops nothing: its centre crop is assigned to the wrong variable), no
  ImageNet normalisation, and ``shape_meta`` listing the state before the camera.

The files hold the resolved config, the state dict's names and shapes, its fixed tensors (normaliser),
the inputs (uint8 camera images, agent positions, x_T) and the outputs (the global condition, per step
[image features, agent_pos], and the DDIM-10 actions). Not a test dependency; run it with torchvision
and a checkout on the path, e.g. in the environment of `make_diffusion_policy_image_golden.py`:

    PYTHONPATH=<a diffusion_policy checkout> /tmp/rmvenv/bin/python \
        tests/artifacts/make_diffusion_policy_multi_image_golden.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import diffusers
import torch
from diffusion_policy.model.vision.model_getter import get_resnet
from diffusion_policy.model.vision.multi_image_obs_encoder import MultiImageObsEncoder
from diffusion_policy.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusion_policy_mirror import (  # noqa: E402
    DDPM_SCHEDULER,
    pusht_image_normalizer,
    pusht_image_observations,
    pusht_image_workspace_config,
    random_weights,
    save_golden,
)

HERE = Path(__file__).parent
WORKSPACE = "diffusion_policy.workspace.train_diffusion_unet_image_workspace.TrainDiffusionUnetImageWorkspace"
POLICY = "diffusion_policy.policy.diffusion_unet_image_policy.DiffusionUnetImagePolicy"
ENCODER = "diffusion_policy.model.vision.multi_image_obs_encoder.MultiImageObsEncoder"
HORIZON, TO, TA, DA = 16, 2, 8, 2
DOWN_DIMS, EMBED, KERNEL = [8, 16], 8, 5
SEED = 0
IMAGE = {"shape": [3, 96, 96], "type": "rgb"}
STATE = {"shape": [2], "type": "low_dim"}


def config(shared: bool) -> dict:
    """The resolved training config (``train_diffusion_unet_image_workspace.yaml``, ``task=pusht_image``,
    tiny U-Net); ``shared``: the second configuration of the module doc."""
    obs = {"agent_pos": STATE, "image": IMAGE} if shared else {"image": IMAGE, "agent_pos": STATE}
    shape_meta = {"obs": obs, "action": {"shape": [DA]}}
    encoder = {
        "_target_": ENCODER,
        "shape_meta": shape_meta,
        "rgb_model": {
            "_target_": "diffusion_policy.model.vision.model_getter.get_resnet",
            "name": "resnet18",
            "weights": None,
        },
        "resize_shape": None,
        "crop_shape": [76, 76],
        "random_crop": not shared,
        "use_group_norm": not shared,
        "share_rgb_model": shared,
        "imagenet_norm": not shared,
    }
    return pusht_image_workspace_config(
        "train_diffusion_unet_image",
        WORKSPACE,
        shape_meta,
        {
            "_target_": POLICY,
            "shape_meta": shape_meta,
            "noise_scheduler": DDPM_SCHEDULER,
            "obs_encoder": encoder,
            "horizon": HORIZON, "n_action_steps": TA, "n_obs_steps": TO, "num_inference_steps": 100,
            "obs_as_global_cond": True, "diffusion_step_embed_dim": EMBED, "down_dims": DOWN_DIMS,
            "kernel_size": KERNEL, "n_groups": 8, "cond_predict_scale": True,
        },
    )  # fmt: skip


def build(cfg: dict) -> DiffusionUnetImagePolicy:
    """The policy as the workspace's hydra instantiation builds it."""
    pol, enc = cfg["policy"], cfg["policy"]["obs_encoder"]
    encoder = MultiImageObsEncoder(
        shape_meta=enc["shape_meta"],
        rgb_model=get_resnet(enc["rgb_model"]["name"], weights=enc["rgb_model"]["weights"]),
        resize_shape=enc["resize_shape"], crop_shape=enc["crop_shape"], random_crop=enc["random_crop"],
        use_group_norm=enc["use_group_norm"], share_rgb_model=enc["share_rgb_model"],
        imagenet_norm=enc["imagenet_norm"],
    )  # fmt: skip
    scheduler = {k: v for k, v in pol["noise_scheduler"].items() if k != "_target_"}
    return DiffusionUnetImagePolicy(
        shape_meta=pol["shape_meta"], noise_scheduler=diffusers.DDPMScheduler(**scheduler),
        obs_encoder=encoder, horizon=HORIZON, n_action_steps=TA, n_obs_steps=TO,
        num_inference_steps=pol["num_inference_steps"], obs_as_global_cond=True,
        diffusion_step_embed_dim=EMBED, down_dims=DOWN_DIMS, kernel_size=KERNEL, n_groups=8,
        cond_predict_scale=True,
    )  # fmt: skip


def write_golden(stem_name: str, shared: bool) -> None:
    stem = HERE / stem_name
    cfg = config(shared)
    policy = build(cfg)
    fixed = pusht_image_normalizer(SEED + 1)
    entries = [[name, list(t.shape), None] for name, t in policy.state_dict().items()]
    entries += [[name, list(fixed[name].shape), None] for name in sorted(fixed)]
    state = random_weights(entries, fixed, SEED)
    policy.load_state_dict(state)  # the normaliser's parameters are created from the state dict
    policy.eval()

    B = 3
    pixels, agent_pos = pusht_image_observations(B, TO, torch.Generator().manual_seed(SEED + 2))
    obs = {"image": pixels.permute(0, 1, 4, 2, 3).float() / 255.0, "agent_pos": agent_pos}  # DP's env's
    with torch.no_grad():
        nobs = policy.normalizer.normalize(obs)
        this_nobs = {k: v[:, :TO].reshape(-1, *v.shape[2:]) for k, v in nobs.items()}
        global_cond = policy.obs_encoder(this_nobs).reshape(B, -1)  # (B, To * 514)
        sched = {k: v for k, v in DDPM_SCHEDULER.items() if k not in ("_target_", "variance_type")}
        policy.noise_scheduler = diffusers.DDIMScheduler(**sched, set_alpha_to_one=True, steps_offset=0)
        policy.num_inference_steps = 10
        torch.manual_seed(SEED + 3)
        x_T = torch.randn(B, HORIZON, DA)
        torch.manual_seed(SEED + 3)  # conditional_sample's first draw is x_T
        actions = policy.predict_action(obs)["action"]

    keys = policy.obs_encoder.rgb_keys + policy.obs_encoder.low_dim_keys  # the features' order
    meta = {"cfg": cfg, "seed": SEED, "entries": entries, "obs_keys": keys}
    outputs = {"pixels": pixels, "agent_pos": agent_pos, "x_T": x_T, "global_cond": global_cond}
    save_golden(stem, meta, fixed, outputs | {"actions": actions.contiguous()})
    print(f"wrote {stem}.json / .safetensors; {len(entries)} state entries, condition {global_cond.shape}")


if __name__ == "__main__":
    write_golden("diffusion_policy_multi_image_golden", shared=False)
    write_golden("diffusion_policy_multi_image_shared_golden", shared=True)
