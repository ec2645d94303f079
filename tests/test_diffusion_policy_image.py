"""Diffusion Policy image ``.ckpt`` files in (``DiffusionUnetHybridImagePolicy`` and
``DiffusionTransformerHybridImagePolicy``): robomimic's encoder mapped onto ours, checked against what
robomimic and Diffusion Policy's ``predict_action`` compute.

The golden values come from `tests/artifacts/make_diffusion_policy_image_golden.py`, run with
robomimic 0.2.0 (Diffusion Policy's pin): the state dict's real names, shapes and aliases, the fixed
tensors, and the global condition and DDIM-10 actions of three observation histories. The weights are
drawn here from the same seed (`diffusion_policy_mirror.random_weights`) and written as a ``.ckpt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusion_policy_mirror import assert_paraddpm_gives_the_sequential_plan, read_golden, write_ckpt

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.export import ExportConfig, run_export
from parapolicy.policy.model.checkpoint import CheckpointError
from parapolicy.policy.model.pretrained import load_policy

ENC = "obs_encoder.obs_nets.image."


@pytest.fixture(scope="module")
def golden():
    """The released configuration: GroupNorm in the encoder."""
    return read_golden("diffusion_policy_image_golden")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, golden) -> Path:
    return write_ckpt(tmp_path_factory.mktemp("dp_image"), golden)


def observations(tensors) -> dict[str, torch.Tensor]:
    return {"pixels": tensors["pixels"], "agent_pos": tensors["agent_pos"]}


def test_the_image_policy_config_comes_from_the_checkpoint(ckpt):
    cfg = load_policy(ckpt).config
    assert (cfg.obs_type, cfg.obs_dim, cfg.action_dim, cfg.horizon) == ("pixels_agent_pos", 2, 2, 16)
    v = cfg.vision
    assert (v.image_shape, v.crop_shape, v.norm, v.num_keypoints) == ((3, 96, 96), (84, 84), "group_norm", 32)
    assert v.image_mean == (0.5, 0.5, 0.5) and v.image_std == (0.5, 0.5, 0.5)  # scale 2, offset -1
    assert cfg.global_cond_dim == 2 * 66


# (golden pair, the network it loads onto): the U-Net with GroupNorm or BatchNorm, the transformer
GOLDENS = [
    ("diffusion_policy_image_golden", "unet"),
    ("diffusion_policy_image_bn_golden", "unet"),
    ("diffusion_policy_image_transformer_golden", "transformer"),
]
IDS = ["unet-group_norm", "unet-batch_norm", "transformer"]


@pytest.mark.parametrize(("stem", "network"), GOLDENS, ids=IDS)
def test_the_condition_is_robomimics_with_each_steps_features_reordered(tmp_path, stem, network):
    golden = read_golden(stem)
    meta, tensors, _ = golden
    assert meta["obs_keys"] == ["image", "agent_pos"]  # robomimic's order: image features first
    policy = load_policy(write_ckpt(tmp_path, golden))
    norm = "group_norm" if meta["cfg"]["policy"]["obs_encoder_group_norm"] else "batch_norm"
    assert policy.config.vision.norm == norm and policy.config.network == network
    with torch.no_grad():
        ours = policy.condition(policy.validate_observation(observations(tensors), history=True))
    theirs = tensors["global_cond"].view(3, 2, 66)  # (B, To, [image 64, agent_pos 2])
    expected = torch.cat([theirs[..., 64:], theirs[..., :64]], dim=-1).flatten(1)  # ours: [state, image]
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(("stem", "network"), GOLDENS, ids=IDS)
def test_ddim_actions_equal_diffusion_policys_own_predict_action(tmp_path, stem, network):
    golden = read_golden(stem)
    _, tensors, _ = golden
    ddim = SamplerConfig(kind="ddim", num_inference_steps=10)
    policy = load_policy(write_ckpt(tmp_path, golden), sampler=ddim)
    x_T = tensors["x_T"]
    with torch.no_grad():
        ours = policy.predict_action_chunk(
            observations(tensors), noise=(x_T, torch.zeros(10, 3, 16, 2))
        ).action
    assert ours.shape == tensors["actions"].shape == (3, 8, 2)
    # env units (hundreds of px): float32 rounding of our channels-last inference layout against
    # Diffusion Policy's Conv1d, through 10 DDIM steps; a wrong mapping is off by whole pixels
    torch.testing.assert_close(ours, tensors["actions"], atol=2e-2, rtol=0)


def test_paraddpm_on_the_image_checkpoint_is_its_sequential_sample(ckpt, golden):
    assert_paraddpm_gives_the_sequential_plan(ckpt, observations(golden[1]))


def test_a_softmax_temperature_is_folded_into_the_keypoint_layer(tmp_path, ckpt, golden):
    _, tensors, _ = golden

    def hotter(state):  # softmax(2 conv(x) / 2) is the same function
        for prefix in (f"{ENC}pool.", f"{ENC}nets.1."):
            state[f"{prefix}temperature"] = torch.tensor([2.0])
            state[f"{prefix}nets.weight"] = state[f"{prefix}nets.weight"] * 2
            state[f"{prefix}nets.bias"] = state[f"{prefix}nets.bias"] * 2

    obs = observations(tensors)
    a, b = load_policy(ckpt), load_policy(write_ckpt(tmp_path, golden, edit_state=hotter))
    with torch.no_grad():
        ca = a.condition(a.validate_observation(obs, history=True))
        cb = b.condition(b.validate_observation(obs, history=True))
    torch.testing.assert_close(cb, ca, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["parapolicy", "lerobot"])
def test_the_converted_policy_exports_and_reloads_with_the_same_plans(tmp_path, ckpt, golden, fmt):
    _, tensors, _ = golden
    out = run_export(ExportConfig(policy_path=str(ckpt), format=fmt, output_path=str(tmp_path / "out")))
    a, b = load_policy(ckpt), load_policy(out)
    noise = (tensors["x_T"], torch.randn(100, 3, 16, 2, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        pa = a.predict_action_chunk(observations(tensors), noise=noise).plan
        pb = b.predict_action_chunk(observations(tensors), noise=noise).plan
    # bit for bit in our format; LeRobot's keeps the state's min / max, whose affine map is recomputed
    atol = 0.0 if fmt == "parapolicy" else 1e-3
    torch.testing.assert_close(pb, pa, atol=atol, rtol=0)


def _two_cameras(cfg):
    cfg["policy"]["shape_meta"]["obs"]["wrist"] = {"shape": [3, 96, 96], "type": "rgb"}


def _no_shape(cfg):
    del cfg["policy"]["shape_meta"]["obs"]["agent_pos"]["shape"]


def _odd_robomimic_crop(cfg):
    cfg["policy"]["crop_shape"], cfg["policy"]["eval_fixed_crop"] = [85, 85], False


def _pop(*names):
    return lambda state: [state.pop(n) for n in names]


@pytest.mark.parametrize(
    ("edit_state", "edit_cfg", "message"),
    [
        (None, _two_cameras, "only one camera"),
        (None, _no_shape, "needs a 'shape' list"),
        (None, _odd_robomimic_crop, "eval_fixed_crop=False"),
        (None, lambda c: c["policy"].update(obs_as_global_cond=False), "obs_as_global_cond"),
        (
            lambda s: s.update({f"{ENC}nets.3.weight": s[f"{ENC}nets.3.weight"][:, :32]}),
            None,
            "nets.3.weight",
        ),
        (lambda s: s.update({f"{ENC}nets.0.nets.0.weight": torch.zeros(64, 3, 7, 7)}), None, "differs from"),
        (lambda s: s.update({f"{ENC}pool.temperature": torch.tensor([0.0])}), None, "temperature"),
        (
            lambda s: s.update(
                {f"{ENC}pool.pos_x": torch.zeros(1, 9), f"{ENC}nets.1.pos_x": torch.zeros(1, 9)}
            ),
            None,
            "grid",
        ),
        (lambda s: s.update({"normalizer.params_dict.image.scale": torch.ones(2)}), None, "1 or 3 values"),
        (lambda s: s.update({f"{ENC}extra.weight": torch.zeros(1)}), None, "does not use"),
        (_pop(f"{ENC}pool.nets.weight", f"{ENC}nets.1.nets.weight"), None, "pool.nets.weight"),
    ],
    ids=[
        "two-cameras",
        "no-shape",
        "odd-crop",
        "inpainting",
        "misshaped-linear",
        "alias-differs",
        "temperature",
        "grid",
        "image-normaliser",
        "unexpected",
        "no-pool",
    ],  # fmt: skip
)
def test_what_cannot_be_represented_is_refused_by_name(tmp_path, golden, edit_state, edit_cfg, message):
    path = write_ckpt(tmp_path, golden, edit_state=edit_state, edit_cfg=edit_cfg)
    with pytest.raises(CheckpointError) as info:
        load_policy(path)
    assert str(path) in str(info.value) and message in str(info.value)
