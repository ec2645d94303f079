"""Diffusion Policy's ``DiffusionUnetImagePolicy`` ``.ckpt`` files in: its own ``MultiImageObsEncoder``
(a torchvision ResNet-18, average-pooled) mapped onto `RgbEncoder` with ``pool="avg"``, checked against
what Diffusion Policy's own code computes.

The golden values come from `tests/artifacts/make_diffusion_policy_multi_image_golden.py`, which builds
the policy with Diffusion Policy's classes and runs its ``predict_action``: the state dict's names and
shapes, the normaliser, and the global condition and DDIM-10 actions of three observation histories, for
the released encoder settings and for a second set (BatchNorm, one shared ResNet, ``random_crop: False``,
no ImageNet normalisation, the state listed before the camera). The weights are drawn here from the same
seed and written as a ``.ckpt``.
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

RELEASED, SHARED = "diffusion_policy_multi_image_golden", "diffusion_policy_multi_image_shared_golden"
ENC = "obs_encoder.key_model_map.image."
FEATURES = 512  # ResNet-18's last stage, average-pooled


@pytest.fixture(scope="module")
def golden():
    """The released encoder settings (train_diffusion_unet_image_workspace.yaml)."""
    return read_golden(RELEASED)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, golden) -> Path:
    return write_ckpt(tmp_path_factory.mktemp("dp_multi_image"), golden)


def observations(tensors) -> dict[str, torch.Tensor]:
    return {"pixels": tensors["pixels"], "agent_pos": tensors["agent_pos"]}


def test_the_encoder_config_comes_from_the_checkpoint(ckpt, tmp_path):
    cfg = load_policy(ckpt).config
    assert (cfg.obs_type, cfg.obs_dim, cfg.action_dim) == ("pixels_agent_pos", 2, 2)
    v = cfg.vision
    assert (v.pool, v.crop_shape, v.crop_is_random, v.norm) == ("avg", (76, 76), True, "group_norm")
    assert cfg.global_cond_dim == 2 * (2 + FEATURES)
    # DP's image range normaliser (x * 2 - 1), then ImageNet's: mean (m + 1) / 2, std s / 2 on [0, 1]
    assert v.image_mean == pytest.approx(((0.485 + 1) / 2, (0.456 + 1) / 2, (0.406 + 1) / 2), abs=1e-12)
    assert v.image_std == pytest.approx((0.229 / 2, 0.224 / 2, 0.225 / 2), abs=1e-12)
    shared = load_policy(write_ckpt(tmp_path, read_golden(SHARED))).config.vision
    # random_crop: False crops nothing in Diffusion Policy (its centre crop is never applied)
    assert (shared.pool, shared.crop_shape, shared.norm) == ("avg", None, "batch_norm")
    assert shared.image_mean == (0.5, 0.5, 0.5) and shared.image_std == (0.5, 0.5, 0.5)

    def group_norm_asked(cfg):  # Diffusion Policy swaps it into per-camera copies only: shared keeps BN
        cfg["policy"]["obs_encoder"]["use_group_norm"] = True

    gn = write_ckpt(tmp_path, read_golden(SHARED), edit_cfg=group_norm_asked, name="gn.ckpt")
    shared_gn = load_policy(gn)
    assert shared_gn.config.vision.norm == "batch_norm"


@pytest.mark.parametrize("stem", [RELEASED, SHARED], ids=["released", "shared-batch_norm-no_crop"])
def test_the_condition_is_diffusion_policys_with_each_steps_features_reordered(tmp_path, stem):
    golden = read_golden(stem)
    meta, tensors, _ = golden
    assert meta["obs_keys"] == ["image", "agent_pos"]  # the camera's features first, whatever shape_meta says
    policy = load_policy(write_ckpt(tmp_path, golden))
    with torch.no_grad():
        ours = policy.condition(policy.validate_observation(observations(tensors), history=True))
    theirs = tensors["global_cond"].view(3, 2, FEATURES + 2)  # (B, To, [image 512, agent_pos 2])
    expected = torch.cat([theirs[..., FEATURES:], theirs[..., :FEATURES]], dim=-1).flatten(1)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("stem", [RELEASED, SHARED], ids=["released", "shared-batch_norm-no_crop"])
def test_ddim_actions_equal_diffusion_policys_own_predict_action(tmp_path, stem):
    golden = read_golden(stem)
    _, tensors, _ = golden
    policy = load_policy(
        write_ckpt(tmp_path, golden), sampler=SamplerConfig(kind="ddim", num_inference_steps=10)
    )
    with torch.no_grad():
        ours = policy.predict_action_chunk(
            observations(tensors), noise=(tensors["x_T"], torch.zeros(10, 3, 16, 2))
        ).action
    assert ours.shape == tensors["actions"].shape == (3, 8, 2)
    # env units (hundreds of px): float32 rounding of the folded image normalisation (a few 1e-6 in the
    # 1028-wide condition) and of the DDIM steps; a wrong mapping is off by whole pixels
    torch.testing.assert_close(ours, tensors["actions"], atol=2e-2, rtol=0)


def test_paraddpm_on_the_checkpoint_is_its_sequential_sample(ckpt, golden):
    assert_paraddpm_gives_the_sequential_plan(ckpt, observations(golden[1]))


def test_it_converts_to_this_projects_format_with_the_same_plans_and_not_to_lerobots(tmp_path, ckpt, golden):
    _, tensors, _ = golden
    out = run_export(
        ExportConfig(policy_path=str(ckpt), format="parapolicy", output_path=str(tmp_path / "out"))
    )
    a, b = load_policy(ckpt), load_policy(out)
    assert b.config.vision.pool == "avg"
    noise = (tensors["x_T"], torch.randn(100, 3, 16, 2, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        pa = a.predict_action_chunk(observations(tensors), noise=noise).plan
        pb = b.predict_action_chunk(observations(tensors), noise=noise).plan
    torch.testing.assert_close(pb, pa, atol=0.0, rtol=0)
    target = tmp_path / "lerobot"
    with pytest.raises(ValueError, match="spatial softmax"):
        run_export(ExportConfig(policy_path=str(ckpt), format="lerobot", output_path=str(target)))
    assert not target.exists()


def _encoder(**changes):
    return lambda cfg: cfg["policy"]["obs_encoder"].update(changes)


def _pop(*names):
    return lambda state: [state.pop(n) for n in names]


@pytest.mark.parametrize(
    ("edit_state", "edit_cfg", "message"),
    [
        (None, _encoder(rgb_model={"_target_": "diffusion_policy.model.vision.model_getter.get_resnet",
                                   "name": "resnet34", "weights": None}), "'resnet34'"),
        (None, _encoder(rgb_model={"_target_": "diffusion_policy.model.vision.model_getter.get_resnet",
                                   "name": "resnet18", "weights": "r3m"}), "r3m"),
        (None, _encoder(_target_="my.Encoder"), "'my.Encoder' is not supported"),
        (None, _encoder(resize_shape=[64, 64]), "resize_shape=[64, 64]"),
        (None, lambda c: c["policy"]["shape_meta"]["obs"].update(wrist={"shape": [3, 96, 96], "type": "rgb"}),
         "only one camera"),
        (_pop(*[f"{ENC}{n}" for n in ("conv1.weight", "bn1.weight", "bn1.bias")]), None, "missing"),
        (lambda s: s.update({f"{ENC}fc.weight": torch.zeros(10, 512)}), None, "fc.weight"),
        (lambda s: s.update({"obs_encoder.key_transform_map.image.1.weight": torch.zeros(1)}), None,
         "does not use"),
        (lambda s: [s.pop(k) for k in list(s) if k.startswith(ENC)], None, "no image encoder tensors"),
    ],
    ids=[
        "resnet34", "r3m", "other-encoder", "resize", "two-cameras", "missing", "fc", "unexpected",
        "no-encoder",
    ],
)  # fmt: skip
def test_what_cannot_be_represented_is_refused_by_name(tmp_path, golden, edit_state, edit_cfg, message):
    path = write_ckpt(tmp_path, golden, edit_state=edit_state, edit_cfg=edit_cfg)
    with pytest.raises(CheckpointError) as info:
        load_policy(path)
    assert str(path) in str(info.value) and message in str(info.value)
