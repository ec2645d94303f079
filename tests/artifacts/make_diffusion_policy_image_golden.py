"""Writes tests/artifacts/diffusion_policy_image_golden.{json,safetensors}: what Diffusion Policy's PushT
image policy (``DiffusionUnetHybridImagePolicy``, ``image_pusht_diffusion_policy_cnn.yaml`` at a tiny
U-Net size) computes, with robomimic's real observation encoder, for weights drawn from a seed.

The encoder is built exactly as the policy's ``__init__`` builds it: robomimic's BC-RNN image config for
"square" (``get_robomimic_config``), the observation keys of PushT's ``shape_meta``, crop 84 x 84,
``algo_factory`` -> ``nets['policy'].nets['encoder'].nets['obs']``, every BatchNorm2d replaced by
GroupNorm(C // 16, C) (``obs_encoder_group_norm``), and robomimic's CropRandomizer replaced by Diffusion
Policy's (``eval_fixed_crop``: torchvision's centre crop in evaluation, restated below). The U-Net is
Diffusion Policy's ``ConditionalUnet1D``, whose module names and forward this project's
`ConditionalUnet1d` keeps (checked against Diffusion Policy's own ``predict_action`` by the low-dim
test). ``predict_action`` is restated from its source with diffusers' DDIM scheduler.

A third pair does the same for ``DiffusionTransformerHybridImagePolicy`` (the same encoder, Diffusion
Policy's own ``TransformerForDiffusion`` imported from a checkout of its repository, which must then be
on the path). The files hold: the resolved config, the state dict's names, shapes and aliases (two names
of one tensor), its fixed tensors, the inputs (uint8 camera images, agent positions, x_T) and the
outputs (the global condition, per step [image features, agent_pos] in robomimic's key order, and the
DDIM-10 actions). Not a test dependency: robomimic needs its own environment, e.g.

    python3.11 -m venv /tmp/rmvenv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/rmvenv/lib/python3.11/site-packages/zz.pth
    /tmp/rmvenv/bin/pip install --no-deps "robomimic==0.2.0" "torchvision==0.28.0"
    /tmp/rmvenv/bin/pip install termcolor six
    # plus the torchvision::nms sitecustomize of docs/lerobot.md (the PyPI torchvision is a CUDA build)
    export PYTHONPATH=<a diffusion_policy checkout>
    /tmp/rmvenv/bin/python tests/artifacts/make_diffusion_policy_image_golden.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import robomimic.models.base_nets as rmbn
import robomimic.scripts.generate_paper_configs as gpc
import robomimic.utils.obs_utils as ObsUtils
import torch
import torchvision.transforms.functional as ttf
from robomimic.algo import algo_factory
from robomimic.config import config_factory
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusion_policy_mirror import (  # noqa: E402
    DDPM_SCHEDULER,
    ddim_sample,
    pusht_image_normalizer,
    pusht_image_observations,
    pusht_image_workspace_config,
    random_weights,
    save_golden,
)

from parapolicy.policy.model.networks import ConditionalUnet1d  # noqa: E402

HERE = Path(__file__).parent
WORKSPACE = (
    "diffusion_policy.workspace.train_diffusion_unet_hybrid_workspace.TrainDiffusionUnetHybridWorkspace"
)
TRANSFORMER_WORKSPACE = (
    "diffusion_policy.workspace.train_diffusion_transformer_hybrid_workspace."
    "TrainDiffusionTransformerHybridWorkspace"
)
TRANSFORMER_POLICY = (
    "diffusion_policy.policy.diffusion_transformer_hybrid_image_policy.DiffusionTransformerHybridImagePolicy"
)
POLICY = "diffusion_policy.policy.diffusion_unet_hybrid_image_policy.DiffusionUnetHybridImagePolicy"
HORIZON, TO, TA, DA = 16, 2, 8, 2
DOWN_DIMS, EMBED, KERNEL = [8, 16], 8, 5
SEED = 0
SHAPE_META = {
    "obs": {"image": {"shape": [3, 96, 96], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
    "action": {"shape": [DA]},
}


def config(group_norm: bool, transformer: bool = False) -> dict:
    """The resolved training config (``image_pusht_diffusion_policy_cnn.yaml``, tiny U-Net), or that of
    ``train_diffusion_transformer_hybrid_workspace.yaml`` (tiny transformer)."""
    cfg = unet_config(group_norm)
    if transformer:
        pol = cfg["policy"]
        for key in ("obs_as_global_cond", "diffusion_step_embed_dim", "down_dims", "kernel_size", "n_groups"):
            pol.pop(key)
        pol.pop("cond_predict_scale")
        pol |= {
            "_target_": TRANSFORMER_POLICY, "n_layer": 2, "n_cond_layers": 0, "n_head": 4, "n_emb": 16,
            "p_drop_emb": 0.0, "p_drop_attn": 0.3, "causal_attn": True, "time_as_cond": True,
            "obs_as_cond": True, "pred_action_steps_only": False,
        }  # fmt: skip
        cfg.pop("obs_as_global_cond")
        cfg |= {
            "name": "train_diffusion_transformer_hybrid",
            "_target_": TRANSFORMER_WORKSPACE,
            "obs_as_cond": True,
        }
    return cfg


def unet_config(group_norm: bool) -> dict:
    return pusht_image_workspace_config(
        "train_diffusion_unet_hybrid",
        WORKSPACE,
        SHAPE_META,
        {
            "_target_": POLICY,
            "shape_meta": SHAPE_META,
            "noise_scheduler": DDPM_SCHEDULER,
            "horizon": HORIZON, "n_action_steps": TA, "n_obs_steps": TO, "num_inference_steps": 100,
            "obs_as_global_cond": True, "crop_shape": [84, 84], "diffusion_step_embed_dim": EMBED,
            "down_dims": DOWN_DIMS, "kernel_size": KERNEL, "n_groups": 8, "cond_predict_scale": True,
            "obs_encoder_group_norm": group_norm, "eval_fixed_crop": True,
        },
    )  # fmt: skip


def get_robomimic_config() -> object:
    """Diffusion Policy's ``get_robomimic_config(algo_name='bc_rnn', hdf5_type='image', task_name='square',
    dataset_type='ph')``."""
    cfg = config_factory(algo_name="bc")
    cfg = gpc.modify_config_for_default_image_exp(cfg)
    cfg = gpc.modify_config_for_dataset(
        config=cfg, task_name="square", dataset_type="ph", hdf5_type="image",
        base_dataset_dir="/tmp/null", filter_key=None,
    )  # fmt: skip
    return gpc.modify_bc_rnn_config_for_dataset(
        config=cfg, task_name="square", dataset_type="ph", hdf5_type="image"
    )


class FixedCrop(nn.Module):
    """Diffusion Policy's CropRandomizer in evaluation: torchvision's centre crop (one crop)."""

    def __init__(self, crop_height: int, crop_width: int) -> None:
        super().__init__()
        self.crop_height, self.crop_width = crop_height, crop_width

    def output_shape_in(self, input_shape=None) -> list[int]:
        return [input_shape[0], self.crop_height, self.crop_width]

    def output_shape_out(self, input_shape=None) -> list[int]:
        return list(input_shape)

    def forward_in(self, inputs: torch.Tensor) -> torch.Tensor:
        return ttf.center_crop(img=inputs, output_size=(self.crop_height, self.crop_width))

    def forward_out(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


def replace_submodules(root: nn.Module, predicate, func) -> None:
    """Diffusion Policy's ``replace_submodules``."""
    names = [k.split(".") for k, m in root.named_modules(remove_duplicate=True) if predicate(m)]
    for *parent, k in names:
        parent_module = root.get_submodule(".".join(parent)) if parent else root
        setattr(parent_module, k, func(getattr(parent_module, k)))


def obs_encoder(crop: tuple[int, int], group_norm: bool) -> nn.Module:
    obs_config = {"low_dim": [], "rgb": [], "depth": [], "scan": []}
    obs_key_shapes = {}
    for key, attr in SHAPE_META["obs"].items():
        obs_key_shapes[key] = list(attr["shape"])
        obs_config[attr.get("type", "low_dim")].append(key)
    cfg = get_robomimic_config()
    with cfg.unlocked():
        cfg.observation.modalities.obs = obs_config
        for modality in cfg.observation.encoder.values():
            if modality.obs_randomizer_class == "CropRandomizer":
                modality.obs_randomizer_kwargs.crop_height, modality.obs_randomizer_kwargs.crop_width = crop
    ObsUtils.initialize_obs_utils_with_config(cfg)
    algo = algo_factory(
        algo_name=cfg.algo_name, config=cfg, obs_key_shapes=obs_key_shapes, ac_dim=DA, device="cpu"
    )
    enc = algo.nets["policy"].nets["encoder"].nets["obs"]
    if group_norm:
        replace_submodules(
            enc,
            lambda m: isinstance(m, nn.BatchNorm2d),
            lambda m: nn.GroupNorm(m.num_features // 16, m.num_features),
        )
    replace_submodules(
        enc, lambda m: isinstance(m, rmbn.CropRandomizer), lambda m: FixedCrop(m.crop_height, m.crop_width)
    )
    return enc


def write_golden(stem_name: str, group_norm: bool, transformer: bool = False) -> None:
    """One golden pair: the U-Net policy with GroupNorm (the released config) or BatchNorm kept
    (``obs_encoder_group_norm: False``), or the transformer policy with GroupNorm."""
    stem = HERE / stem_name
    cfg = config(group_norm, transformer)
    pol = cfg["policy"]
    enc = obs_encoder(tuple(pol["crop_shape"]), group_norm)
    feature_dim = enc.output_shape()[0]
    if transformer:  # Diffusion Policy's own module (a checkout of its repository on the path)
        from diffusion_policy.model.diffusion.transformer_for_diffusion import TransformerForDiffusion

        unet = TransformerForDiffusion(
            input_dim=DA, output_dim=DA, horizon=HORIZON, n_obs_steps=TO, cond_dim=feature_dim,
            n_layer=pol["n_layer"], n_head=pol["n_head"], n_emb=pol["n_emb"], p_drop_emb=pol["p_drop_emb"],
            p_drop_attn=pol["p_drop_attn"], causal_attn=pol["causal_attn"], time_as_cond=True,
            obs_as_cond=True, n_cond_layers=pol["n_cond_layers"],
        )  # fmt: skip
    else:
        unet = ConditionalUnet1d(
            input_dim=DA, global_cond_dim=feature_dim * TO, diffusion_step_embed_dim=EMBED,
            down_dims=tuple(DOWN_DIMS), kernel_size=KERNEL, n_groups=8, cond_predict_scale=True,
        )  # fmt: skip
    # The policy's state dict, in its order: ModuleAttrMixin's dummy, obs_encoder, model, mask_generator,
    # normalizer (LinearNormalizer: x * scale + offset).
    entries, seen = [["_dummy_variable", [0], None]], {}
    for prefix, module in (("obs_encoder.", enc), ("model.", unet)):
        for name, t in module.state_dict(keep_vars=True).items():
            alias = seen.get((t.data_ptr(), tuple(t.shape))) if t.numel() else None
            entries.append([prefix + name, list(t.shape), alias])
            seen.setdefault((t.data_ptr(), tuple(t.shape)), prefix + name)
    entries.append(["mask_generator._dummy_variable", [0], None])
    fixed = {
        f"obs_encoder.{k}": v.detach().clone()
        for k, v in enc.state_dict().items()
        if k.rsplit(".", 1)[-1] in ("pos_x", "pos_y", "temperature")
    }
    fixed |= {f"model.{k}": v.clone() for k, v in unet.state_dict().items() if k in ("mask", "memory_mask")}
    norm = "normalizer.params_dict."
    fixed |= pusht_image_normalizer(SEED + 1)
    for name in sorted(k for k in fixed if k.startswith(norm)):
        entries.append([name, list(fixed[name].shape), None])
    state = random_weights(entries, fixed, SEED)

    enc.load_state_dict(
        {k[len("obs_encoder.") :]: v for k, v in state.items() if k.startswith("obs_encoder.")}
    )
    unet.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    enc.eval(), unet.eval()

    # predict_action, from its source: normalise, encode B*To observations, global condition, DDIM.
    B = 3
    gi = torch.Generator().manual_seed(SEED + 2)
    pixels, agent_pos = pusht_image_observations(B, TO, gi)
    x_T = torch.randn(B, HORIZON, DA, generator=gi)
    image = pixels.permute(0, 1, 4, 2, 3).float() / 255.0  # (B, To, 3, 96, 96) in [0, 1], as DP's env gives
    nobs = {
        "image": image * state[f"{norm}image.scale"] + state[f"{norm}image.offset"],
        "agent_pos": agent_pos * state[f"{norm}agent_pos.scale"] + state[f"{norm}agent_pos.offset"],
    }
    with torch.no_grad():
        this_nobs = {k: v[:, :TO].reshape(-1, *v.shape[2:]) for k, v in nobs.items()}
        global_cond = enc(this_nobs).reshape(B, -1)  # (B, To * 66)
    if transformer:  # the condition as one token per observation step
        cond = global_cond.reshape(B, TO, -1)  # (B, To, 66)
        trajectory = ddim_sample(lambda x, t: unet(x, t, cond), x_T, DDPM_SCHEDULER, 10)
    else:
        trajectory = ddim_sample(lambda x, t: unet(x, t.expand(B), global_cond), x_T, DDPM_SCHEDULER, 10)
    action_pred = (trajectory - state[f"{norm}action.offset"]) / state[f"{norm}action.scale"]
    actions = action_pred[:, TO - 1 : TO - 1 + TA].contiguous()

    meta = {"cfg": cfg, "seed": SEED, "entries": entries, "obs_keys": list(enc.obs_shapes)}
    outputs = {"pixels": pixels, "agent_pos": agent_pos, "x_T": x_T, "global_cond": global_cond}
    save_golden(stem, meta, fixed, outputs | {"actions": actions.contiguous()})
    print(f"wrote {stem}.json / .safetensors; {len(entries)} state entries, feature dim {feature_dim}")


if __name__ == "__main__":
    write_golden("diffusion_policy_image_golden", group_norm=True)
    write_golden("diffusion_policy_image_bn_golden", group_norm=False)
    write_golden("diffusion_policy_image_transformer_golden", group_norm=True, transformer=True)
