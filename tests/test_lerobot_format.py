"""LeRobot diffusion checkpoints: export -> import round trips, hand-built 0.3.x and 0.4+ directories with
LeRobot's key names, refusals of bad or unrepresentable checkpoints."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from lerobot_mirror import LeRobotUnet, lerobot_config
from safetensors.torch import load_file, save_file

from parapolicy.policy.config import PolicyConfig, SamplerConfig, UNetConfig, VisionConfig
from parapolicy.policy.model.checkpoint import CheckpointError
from parapolicy.policy.model.lerobot_format import save_lerobot_policy
from parapolicy.policy.model.policy import DiffusionPolicy, ObservationError
from parapolicy.policy.model.pretrained import load_policy, save_policy
from parapolicy.policy.model.vision import RgbEncoder
from parapolicy.policy.runtime import auto_window

SMALL = UNetConfig(down_dims=(16, 32), diffusion_step_embed_dim=16)


def make_policy(obs_type: str, seed: int = 0) -> DiffusionPolicy:
    image = obs_type == "pixels_agent_pos"
    cfg = PolicyConfig(
        obs_dim=2 if image else 20,
        obs_type=obs_type,
        unet=SMALL,
        sampler=SamplerConfig(num_inference_steps=10, kind="ddim"),
    )
    torch.manual_seed(seed)
    policy = DiffusionPolicy(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    data = {
        "obs": torch.rand(100, cfg.obs_dim, generator=gen) * 512,
        "action": torch.rand(100, 2, generator=gen) * 512,
    }
    policy.normalizer.fit(data)
    return policy.eval()


def observation(policy: DiffusionPolicy, B: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if policy.config.obs_type == "state":
        return {"obs": torch.rand(B, 2, 20, generator=gen) * 512}
    return {
        "pixels": torch.randint(0, 256, (B, 2, 96, 96, 3), dtype=torch.uint8, generator=gen),
        "agent_pos": torch.rand(B, 2, 2, generator=gen) * 512,
    }


@pytest.fixture(scope="module", params=["state", "pixels_agent_pos"])
def exported(request, tmp_path_factory):
    policy = make_policy(request.param)
    path = save_lerobot_policy(policy, tmp_path_factory.mktemp("lerobot") / "out")
    return policy, path


def test_export_writes_the_lerobot_0_4_layout(exported):
    policy, path = exported
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "policy_postprocessor.json",
        "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
        "policy_preprocessor.json",
        "policy_preprocessor_step_3_normalizer_processor.safetensors",
    ]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["type"] == "diffusion" and cfg["n_groups"] == 8 and cfg["noise_scheduler_type"] == "DDIM"
    keys = load_file(path / "model.safetensors").keys()
    assert "diffusion.unet.down_modules.0.0.conv1.block.0.weight" in keys
    assert "diffusion.unet.down_modules.0.2.weight" in keys  # the bare downsampling conv
    assert "diffusion.unet.up_modules.0.2.bias" in keys
    assert "diffusion.unet.final_conv.1.weight" in keys
    pre = json.loads((path / "policy_preprocessor.json").read_text())
    assert [s["registry_name"] for s in pre["steps"]] == [
        "rename_observations_processor",
        "to_batch_processor",
        "device_processor",
        "normalizer_processor",
    ]
    stats = load_file(path / "policy_preprocessor_step_3_normalizer_processor.safetensors")
    if policy.config.obs_type == "state":
        assert stats["observation.environment_state.min"].shape == (18,)
        assert cfg["input_features"]["observation.environment_state"] == {"type": "ENV", "shape": [18]}
    else:
        assert "diffusion.rgb_encoder.pool.pos_grid" in keys
        assert stats["observation.image.mean"].shape == (3, 1, 1)
    assert stats["observation.state.min"].shape == (2,)


def test_an_image_policys_agent_state_is_exported_whole(tmp_path):
    """``state_dim`` splits low-dim observations only: a 3-d agent state stays ``observation.state``."""
    policy = DiffusionPolicy(
        PolicyConfig(obs_dim=3, obs_type="pixels_agent_pos", unet=SMALL, sampler=SamplerConfig(kind="ddim"))
    )
    policy.normalizer.fit({"obs": torch.rand(50, 3) * 512, "action": torch.rand(50, 2) * 512})
    path = save_lerobot_policy(policy.eval(), tmp_path / "out")  # the default state_dim=2
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["input_features"]["observation.state"] == {"type": "STATE", "shape": [3]}
    assert load_policy(path).config.obs_dim == 3


def test_round_trip_is_bit_identical(exported):
    policy, path = exported
    loaded = load_policy(path)
    assert loaded.config == policy.config
    ours, theirs = policy.network.state_dict(), loaded.network.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    n0, n1 = policy.normalizer.state_dict(), loaded.normalizer.state_dict()
    assert all(torch.equal(n0[k], n1[k]) for k in n0)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 16, 2, generator=gen)
    t = torch.tensor([0, 5, 50, 99])
    cond = torch.randn(4, policy.config.global_cond_dim, generator=gen)
    with torch.no_grad():
        assert torch.equal(policy.denoise(x, t, cond), loaded.denoise(x, t, cond))
    obs = observation(policy)
    a = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(9))
    b = loaded.predict_action_chunk(obs, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.plan, b.plan)
    # and the re-export of the import is the same directory, byte for byte in its tensors
    again = save_lerobot_policy(loaded, path.parent / "again")
    for name in ("model.safetensors", "policy_preprocessor_step_3_normalizer_processor.safetensors"):
        first, second = load_file(path / name), load_file(again / name)
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# ------------------------------------------------------------------------------------------------
# hand-built LeRobot directories


def hand_built(
    tmp: Path, layout: str, image: bool, seed: int = 0
) -> tuple[Path, LeRobotUnet, RgbEncoder | None, dict]:
    """A LeRobot diffusion directory written from the mirror module tree (LeRobot's names) and JSON as
    LeRobot writes it; low-dim ones condition on [state (2), environment_state (16)]."""
    torch.manual_seed(seed)
    if image:
        cfg = lerobot_config()
        cond = 2 * (2 + 64)
    else:
        cfg = lerobot_config(
            input_features={
                "observation.state": {"type": "STATE", "shape": [2]},
                "observation.environment_state": {"type": "ENV", "shape": [16]},
            },
            normalization_mapping={
                "VISUAL": "MEAN_STD",
                "STATE": "MIN_MAX",
                "ENV": "MIN_MAX",
                "ACTION": "MIN_MAX",
            },
        )
        cond = 2 * (2 + 16)
    unet = LeRobotUnet(2, cond, 16, (16, 32)).eval()
    for p in unet.parameters():  # GroupNorm affine and biases away from their init, so a swap shows
        torch.nn.init.normal_(p, std=0.2)
    tensors = {f"diffusion.unet.{k}": v for k, v in unet.state_dict().items()}
    encoder = None
    if image:
        encoder = RgbEncoder(VisionConfig()).eval()  # its names are LeRobot's (checked in test_vision)
        tensors.update({f"diffusion.rgb_encoder.{k}": v for k, v in encoder.state_dict().items()})
    gen = torch.Generator().manual_seed(seed)
    stats = {
        "observation.state": {
            "min": torch.rand(2, generator=gen) * 50,
            "max": 400 + torch.rand(2, generator=gen) * 100,
        },
        "action": {"min": torch.rand(2, generator=gen) * 20, "max": 480 + torch.rand(2, generator=gen) * 30},
    }
    if image:
        stats["observation.image"] = {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.5)}
    else:
        stats["observation.environment_state"] = {
            "min": torch.rand(16, generator=gen) * 10,
            "max": 500 + torch.rand(16, generator=gen) * 10,
        }
    root = tmp / f"{layout}-{'image' if image else 'lowdim'}-{seed}"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(cfg, indent=4))
    if layout == "0.3":
        for prefix, names in (
            ("normalize_inputs", [k for k in stats if k != "action"]),
            ("normalize_targets", ["action"]),
            ("unnormalize_outputs", ["action"]),
        ):
            for name in names:
                for stat, value in stats[name].items():
                    tensors[f"{prefix}.buffer_{name.replace('.', '_')}.{stat}"] = value.clone()
        save_file(tensors, str(root / "model.safetensors"))
    else:
        save_file(tensors, str(root / "model.safetensors"))
        features = {**cfg["input_features"], **cfg["output_features"]}
        norm = {"eps": 1e-08, "features": features, "norm_map": cfg["normalization_mapping"]}
        pre_state = "policy_preprocessor_step_3_normalizer_processor.safetensors"
        post_state = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
        pre = {
            "name": "policy_preprocessor",
            "steps": [
                {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
                {"registry_name": "to_batch_processor", "config": {}},
                {"registry_name": "device_processor", "config": {"device": "cuda", "float_dtype": None}},
                {"registry_name": "normalizer_processor", "config": norm, "state_file": pre_state},
            ],
        }
        post = {
            "name": "policy_postprocessor",
            "steps": [
                {
                    "registry_name": "unnormalizer_processor",
                    "config": {**norm, "features": cfg["output_features"]},
                    "state_file": post_state,
                },
                {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
            ],
        }
        (root / "policy_preprocessor.json").write_text(json.dumps(pre, indent=2))
        (root / "policy_postprocessor.json").write_text(json.dumps(post, indent=2))
        flat = {f"{f}.{s}": v for f, sub in stats.items() for s, v in sub.items()}
        flat["observation.state.mean"] = torch.zeros(
            2
        )  # dataset stats carry every statistic; unused ones are fine
        flat["observation.state.count"] = torch.tensor([100])
        save_file(flat, str(root / pre_state))
        save_file({f"action.{s}": v for s, v in stats["action"].items()}, str(root / post_state))
    return root, unet, encoder, stats


@pytest.mark.parametrize("layout", ["0.3", "0.4"])
@pytest.mark.parametrize("image", [False, True])
def test_hand_built_lerobot_directory_loads_and_matches_lerobots_forward(tmp_path, layout, image):
    root, unet, encoder, stats = hand_built(tmp_path, layout, image)
    policy = load_policy(root)
    cfg = policy.config
    assert cfg.obs_type == ("pixels_agent_pos" if image else "state")
    assert (
        cfg.obs_dim == (2 if image else 18) and cfg.horizon == 16 and cfg.sampler.num_inference_steps == 100
    )
    lo, hi = stats["observation.state"]["min"], stats["observation.state"]["max"]
    gen = torch.Generator().manual_seed(1)
    agent = lo + (hi - lo) * torch.rand(3, 2, 2, generator=gen)  # (B, To, 2)
    # LeRobot's normalisation of the state (0.4: 2 (x - min) / (max - min) - 1; 0.3 adds 1e-8 to the span)
    span = hi - lo + (1e-8 if layout == "0.3" else 0.0)
    n_state = 2 * (agent - lo) / span - 1
    x = torch.randn(3, 16, 2, generator=gen)
    t = torch.tensor([3, 40, 99])
    with torch.no_grad():
        if image:
            pixels = torch.randint(0, 256, (3, 2, 96, 96, 3), dtype=torch.uint8, generator=gen)
            images = (pixels.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / (0.5 + 1e-8)
            feats = encoder(images).view(3, 2, 64)
            their_cond = torch.cat([n_state, feats], dim=-1).flatten(1)
            ours_cond = policy.condition(
                policy.validate_observation({"pixels": pixels, "agent_pos": agent}, True)
            )
        else:
            env = torch.rand(3, 2, 16, generator=gen) * 500
            e_lo, e_hi = (
                stats["observation.environment_state"]["min"],
                stats["observation.environment_state"]["max"],
            )
            e_span = e_hi - e_lo + (1e-8 if layout == "0.3" else 0.0)
            n_env = 2 * (env - e_lo) / e_span - 1
            their_cond = torch.cat([n_state, n_env], dim=-1).flatten(1)  # LeRobot: [state, env] per step
            obs = torch.cat([env, agent], dim=-1)  # ours: [env, state]
            ours_cond = policy.condition(policy.validate_observation({"obs": obs}, True))
        their_out = unet(x, t, their_cond)
        ours_out = policy.denoise(x, t, ours_cond)
    torch.testing.assert_close(ours_out, their_out, rtol=0, atol=1e-5)
    act = policy.normalizer.unnormalize("action", torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    torch.testing.assert_close(
        act, torch.stack([stats["action"]["min"], stats["action"]["max"]]), rtol=1e-6, atol=1e-4
    )


def test_one_separate_camera_encoder_is_accepted(tmp_path):
    root, *_ = hand_built(tmp_path, "0.4", image=True)
    cfg = json.loads((root / "config.json").read_text())
    cfg["use_separate_rgb_encoder_per_camera"] = True
    (root / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(root / "model.safetensors")
    renamed = {k.replace("diffusion.rgb_encoder.", "diffusion.rgb_encoder.0."): v for k, v in tensors.items()}
    save_file(renamed, str(root / "model.safetensors"))
    policy = load_policy(root)
    assert torch.equal(policy.network.rgb_encoder.out.weight, tensors["diffusion.rgb_encoder.out.weight"])


# ------------------------------------------------------------------------------------------------
# refusals


def edit_config(root: Path, **changes) -> None:
    cfg = json.loads((root / "config.json").read_text())
    cfg.update(changes)
    (root / "config.json").write_text(json.dumps(cfg))


def edit_tensors(root: Path, edit) -> None:
    tensors = load_file(root / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(root / "model.safetensors"))


@pytest.fixture
def good_dir(tmp_path) -> Path:
    root, *_ = hand_built(tmp_path, "0.4", image=False)
    return root


def test_missing_extra_and_misshaped_tensors_are_refused(good_dir, tmp_path):
    missing = tmp_path / "missing"
    shutil.copytree(good_dir, missing)
    edit_tensors(missing, lambda t: t.pop("diffusion.unet.mid_modules.1.conv2.block.1.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys \['mid_modules.1.blocks.1.block.1.bias'\]"):
        load_policy(missing)
    extra = tmp_path / "extra"
    shutil.copytree(good_dir, extra)
    edit_tensors(extra, lambda t: t.update({"diffusion.unet.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys \['extra.weight'\]"):
        load_policy(extra)
    stray = tmp_path / "stray"
    shutil.copytree(good_dir, stray)
    edit_tensors(stray, lambda t: t.update({"diffusion.rgb_encoder.out.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="tensors this policy does not use"):
        load_policy(stray)
    shape = tmp_path / "shape"
    shutil.copytree(good_dir, shape)
    edit_tensors(shape, lambda t: t.update({"diffusion.unet.final_conv.1.bias": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"final_conv.1.bias: checkpoint \(3,\)"):
        load_policy(shape)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "act"}, "policy type 'act' is not supported"),
        ({"n_groups": 4}, "n_groups=4"),
        ({"noise_scheduler_type": "DPMSolver"}, "noise_scheduler_type 'DPMSolver'"),
        ({"resize_shape": [128, 128]}, "resize_shape"),
        ({"horizon": 15}, r"config cannot be represented: horizon=15 must be a positive multiple"),
        ({"output_features": {}}, "no output_features"),
    ],
)
def test_unrepresentable_configs_are_refused(good_dir, changes, message):
    edit_config(good_dir, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_policy(good_dir)


def test_image_checkpoints_with_unsupported_encoders_are_refused(tmp_path):
    root, *_ = hand_built(tmp_path, "0.4", image=True)
    edit_config(root, vision_backbone="resnet34")
    with pytest.raises(CheckpointError, match="vision_backbone 'resnet34' is unknown"):
        load_policy(root)
    edit_config(
        root,
        vision_backbone="resnet18",
        input_features={
            "observation.images.top": {"type": "VISUAL", "shape": [3, 96, 96]},
            "observation.images.side": {"type": "VISUAL", "shape": [3, 96, 96]},
            "observation.state": {"type": "STATE", "shape": [2]},
        },
    )
    with pytest.raises(CheckpointError, match="2 cameras"):
        load_policy(root)


def test_non_finite_weights_are_refused(good_dir, tmp_path):
    nan_weight = tmp_path / "nan_weight"
    shutil.copytree(good_dir, nan_weight)
    tensors = load_file(nan_weight / "model.safetensors")
    key = "diffusion.unet.final_conv.1.weight"
    tensors[key][0, 0, 0] = float("nan")
    save_file(tensors, str(nan_weight / "model.safetensors"))
    with pytest.raises(CheckpointError, match="non-finite value"):
        load_policy(nan_weight)


def test_bad_statistics_and_processors_are_refused(good_dir, tmp_path):
    no_stats = tmp_path / "no_stats"
    shutil.copytree(good_dir, no_stats)
    (no_stats / "policy_preprocessor.json").unlink()
    (no_stats / "policy_postprocessor.json").unlink()
    with pytest.raises(CheckpointError, match="has no normalisation statistics"):
        load_policy(no_stats)
    missing_stat = tmp_path / "missing_stat"
    shutil.copytree(good_dir, missing_stat)
    state = missing_stat / "policy_preprocessor_step_3_normalizer_processor.safetensors"
    tensors = load_file(state)
    del tensors["observation.environment_state.max"]
    save_file(tensors, str(state))
    with pytest.raises(CheckpointError, match="'observation.environment_state.max' is missing"):
        load_policy(missing_stat)
    odd_step = tmp_path / "odd_step"
    shutil.copytree(good_dir, odd_step)
    pre = json.loads((odd_step / "policy_preprocessor.json").read_text())
    pre["steps"].insert(0, {"class": "my_package.MyStep", "config": {}})
    (odd_step / "policy_preprocessor.json").write_text(json.dumps(pre))
    with pytest.raises(CheckpointError, match="processor step 'my_package.MyStep'"):
        load_policy(odd_step)
    escape = tmp_path / "escape"
    shutil.copytree(good_dir, escape)
    pre = json.loads((escape / "policy_preprocessor.json").read_text())
    pre["steps"][-1]["state_file"] = "../elsewhere.safetensors"
    (escape / "policy_preprocessor.json").write_text(json.dumps(pre))
    with pytest.raises(CheckpointError, match="must be a file name in the directory"):
        load_policy(escape)
    other_eps = tmp_path / "other_eps"
    shutil.copytree(good_dir, other_eps)
    pre = json.loads((other_eps / "policy_preprocessor.json").read_text())
    pre["steps"][-1]["config"]["eps"] = 1e-5
    (other_eps / "policy_preprocessor.json").write_text(json.dumps(pre))
    with pytest.raises(CheckpointError, match="normaliser eps 1e-05 is not supported"):
        load_policy(other_eps)


def _set_mode(root: Path, kind: str, mode: str, stats: dict[str, torch.Tensor]) -> None:
    """Switch feature type ``kind`` to normalisation ``mode`` (config and processors) and add ``stats``
    to the preprocessor's state file."""
    cfg = json.loads((root / "config.json").read_text())
    edit_config(root, normalization_mapping={**cfg["normalization_mapping"], kind: mode})
    for name, step in (("policy_preprocessor.json", -1), ("policy_postprocessor.json", 0)):
        processor = json.loads((root / name).read_text())
        processor["steps"][step]["config"]["norm_map"][kind] = mode
        (root / name).write_text(json.dumps(processor))
    state = root / "policy_preprocessor_step_3_normalizer_processor.safetensors"
    save_file({**load_file(state), **stats}, str(state))


def test_mean_std_state_loads_with_lerobots_eps_even_at_zero_std(tmp_path):
    root, *_ = hand_built(tmp_path, "0.4", image=False)
    mean, std = torch.tensor([3.0, 5.0]), torch.tensor([0.0, 2.0])  # a constant first dimension
    _set_mode(root, "STATE", "MEAN_STD", {"observation.state.mean": mean, "observation.state.std": std})
    stats = load_policy(root).normalizer.get_stats("obs")  # obs = [environment_state (16), state (2)]
    scale = 1.0 / (std.double() + 1e-8)  # LeRobot: (x - mean) / (std + eps)
    torch.testing.assert_close(stats["scale"][16:].double(), scale, rtol=1e-6, atol=0)
    torch.testing.assert_close(stats["offset"][16:].double(), -mean.double() * scale, rtol=1e-6, atol=0)


def test_min_max_image_statistics_give_lerobots_image_transform(tmp_path):
    root, *_ = hand_built(tmp_path, "0.4", image=True)
    lo, hi = torch.tensor([0.1, 0.2, 0.0]).view(3, 1, 1), torch.tensor([0.9, 0.7, 1.0]).view(3, 1, 1)
    _set_mode(root, "VISUAL", "MIN_MAX", {"observation.image.min": lo, "observation.image.max": hi})
    vision = load_policy(root).config.vision
    mean, std = torch.tensor(vision.image_mean).view(3, 1, 1), torch.tensor(vision.image_std).view(3, 1, 1)
    x = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))  # pixels in [0, 1]
    torch.testing.assert_close((x - mean) / std, (x - lo) / (hi - lo) * 2 - 1, rtol=1e-5, atol=1e-6)


def test_pickles_and_unknown_formats_are_refused(good_dir, tmp_path):
    with open(good_dir / "model.safetensors", "wb") as f:
        pickle.dump({"diffusion.unet.x": [1.0]}, f)
    with pytest.raises(CheckpointError, match="pickle"):
        load_policy(good_dir)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "something"}))
    with pytest.raises(CheckpointError, match="is not a parapolicy-diffusion-policy config"):
        load_policy(unknown)


def test_export_refuses_what_lerobot_cannot_represent(tmp_path):
    policy = make_policy("state")
    policy.set_sampler(SamplerConfig(num_inference_steps=10, kind="dpmsolver++"))
    policy.config.sampler = policy.sampler
    with pytest.raises(ValueError, match="DDPM or DDIM"):
        save_lerobot_policy(policy, tmp_path / "a")
    cfg = PolicyConfig(unet=UNetConfig(down_dims=(16, 32), diffusion_step_embed_dim=16, n_groups=4))
    with pytest.raises(ValueError, match="n_groups=4"):
        save_lerobot_policy(DiffusionPolicy(cfg), tmp_path / "b")
    assert not (tmp_path / "a").exists()


def test_exported_statistics_reproduce_the_normalisers_transform(tmp_path):
    """A constant dimension (centred, not scaled) and a normaliser whose scale and offset are not its
    stored limits (as a Diffusion Policy checkpoint of robomimic's max-abs mode loads) normalise the same
    after the export."""
    policy = make_policy("state")
    data = {"obs": torch.rand(10, 20) * 512, "action": torch.rand(10, 2) * 512}
    data["obs"][:, 3] = 7.0
    policy.normalizer.fit(data)
    act = policy.normalizer.stats["action"]
    act.scale.fill_(1 / 512.0)
    act.offset.zero_()  # x / max|x|: min and max stay the data's
    loaded = load_policy(save_lerobot_policy(policy, tmp_path / "c"))
    obs, action = torch.rand(5, 20) * 600, torch.rand(5, 2) * 600
    for key, x in (("obs", obs), ("action", action)):
        torch.testing.assert_close(
            loaded.normalizer.normalize(key, x), policy.normalizer.normalize(key, x), rtol=1e-5, atol=1e-5
        )


def test_the_hub_pusht_config_builds_lerobots_network_size(tmp_path):
    """`lerobot/diffusion_pusht`'s config (0.3-era): the U-Net has LeRobot's 148 tensors / 251,511,938
    parameters (shared/reference/lerobot.md), so its weights can load strictly."""
    from parapolicy.policy.model.lerobot_config import LeRobotLayout, policy_config_from_lerobot
    from parapolicy.policy.model.vision import build_network

    cfg = lerobot_config(down_dims=[512, 1024, 2048], diffusion_step_embed_dim=128)
    config = policy_config_from_lerobot(tmp_path, cfg, LeRobotLayout(tmp_path, cfg))
    assert config.global_cond_dim == 132 and config.vision.crop_shape == (84, 84)
    with torch.device("meta"):
        network = build_network(config)
    unet = network.unet.state_dict()
    assert len(unet) == 148 and sum(v.numel() for v in unet.values()) == 251_511_938
    assert network.rgb_encoder.backbone(torch.empty(1, 3, 84, 84, device="meta")).shape == (1, 512, 3, 3)


def test_normalize_observation_keys_leave_other_observations_unnormalised(tmp_path):
    """LeRobot 0.6's normaliser option: only the listed observation keys are normalised."""
    root, _, _, stats = hand_built(tmp_path, "0.4", image=True)
    pre = json.loads((root / "policy_preprocessor.json").read_text())
    pre["steps"][-1]["config"]["normalize_observation_keys"] = ["observation.state"]
    (root / "policy_preprocessor.json").write_text(json.dumps(pre))
    policy = load_policy(root)
    assert policy.config.vision.image_mean == (0.0, 0.0, 0.0) and policy.config.vision.image_std == (
        1.0,
        1.0,
        1.0,
    )
    assert not torch.equal(policy.normalizer.get_stats("obs")["scale"], torch.ones(2))  # the state still is
    lo, hi = stats["action"]["min"].double(), stats["action"]["max"].double()  # the action too (not a key
    torch.testing.assert_close(  # of the observation list): LeRobot's MIN_MAX 2 / (max - min)
        policy.normalizer.get_stats("action")["scale"], (2 / (hi - lo)).float(), rtol=1e-6, atol=0
    )


def test_a_bad_full_size_checkpoint_is_refused_before_the_policy_is_built(tmp_path, monkeypatch):
    """Names and shapes are checked on the meta device: nothing is allocated or run for a bad file."""
    import parapolicy.policy.model.lerobot_format as fmt

    root = tmp_path / "big"
    root.mkdir()
    (root / "config.json").write_text(
        json.dumps(lerobot_config(down_dims=[512, 1024, 2048], diffusion_step_embed_dim=128))
    )
    save_file({"diffusion.unet.final_conv.1.bias": torch.zeros(2)}, str(root / "model.safetensors"))
    shutil.copy(Path(__file__).parent / "lerobot_mirror.py", root / "unrelated.py")  # other files are ignored
    stats = {"observation.state.min": torch.zeros(2), "observation.state.max": torch.ones(2) * 500}
    stats |= {"action.min": torch.zeros(2), "action.max": torch.ones(2) * 500}
    stats |= {
        "observation.image.mean": torch.full((3, 1, 1), 0.5),
        "observation.image.std": torch.full((3, 1, 1), 0.5),
    }
    save_file(stats, str(root / "pre.safetensors"))
    save_file(
        {"action.min": torch.zeros(2), "action.max": torch.ones(2) * 500}, str(root / "post.safetensors")
    )
    step = {"registry_name": "normalizer_processor", "config": {}, "state_file": "pre.safetensors"}
    (root / "policy_preprocessor.json").write_text(
        json.dumps({"name": "policy_preprocessor", "steps": [step]})
    )
    post = {**step, "registry_name": "unnormalizer_processor", "state_file": "post.safetensors"}
    (root / "policy_postprocessor.json").write_text(
        json.dumps({"name": "policy_postprocessor", "steps": [post]})
    )

    def no_build(*args, **kwargs):
        raise AssertionError("the policy was built for a bad checkpoint")

    monkeypatch.setattr(fmt, "DiffusionPolicy", no_build)
    with pytest.raises(CheckpointError, match=r"missing keys \['rgb_encoder.backbone.0.weight'"):
        load_policy(root)


def test_an_identity_feature_is_unbounded_and_survives_save_load_and_export(tmp_path):
    """LeRobot IDENTITY: no statistics, so the dimension has no range the observation check could
    compare with (min / max are -inf / +inf); our own save and load keep that, and a LeRobot export
    still gives LeRobot the identity transform."""
    root, *_ = hand_built(tmp_path, "0.4", image=False)
    cfg = json.loads((root / "config.json").read_text())
    edit_config(root, normalization_mapping={**cfg["normalization_mapping"], "ENV": "IDENTITY"})
    for name, step in (("policy_preprocessor.json", -1), ("policy_postprocessor.json", 0)):
        processor = json.loads((root / name).read_text())
        processor["steps"][step]["config"]["norm_map"]["ENV"] = "IDENTITY"
        (root / name).write_text(json.dumps(processor))
    policy = load_policy(root)
    stats = policy.normalizer.get_stats("obs")  # obs = [environment_state (16), state (2)]
    assert torch.equal(stats["min"][:16], torch.full((16,), -torch.inf))
    assert torch.equal(stats["max"][:16], torch.full((16,), torch.inf))
    assert torch.isfinite(stats["min"][16:]).all() and torch.isfinite(stats["max"][16:]).all()
    obs = {"obs": torch.full((1, 2, 18), 250.0)}
    obs["obs"][..., :16] = 1e6  # raw values, 1e6x the identity "half-width": planned from
    policy.predict_action_chunk(obs)
    obs["obs"][0, 1, 17] = 1e9  # a MIN_MAX dimension is still checked
    with pytest.raises(ObservationError, match=r"at index \(0, 1, 17\) is far outside"):
        policy.predict_action_chunk(obs)
    again = load_policy(save_policy(policy, tmp_path / "ours"))
    assert torch.equal(again.normalizer.get_stats("obs")["max"], stats["max"])
    exported = load_policy(save_lerobot_policy(policy, tmp_path / "lerobot"))  # MIN_MAX over [-1, 1]
    x = torch.rand(5, 18) * 500
    torch.testing.assert_close(
        exported.normalizer.normalize("obs", x), policy.normalizer.normalize("obs", x), rtol=0, atol=1e-5
    )
    assert torch.isfinite(auto_window.calibration_observations(policy)).all()


@pytest.mark.parametrize("layout", ["0.3", "0.4"])
def test_a_tiny_min_max_span_gets_each_versions_eps(tmp_path, layout):
    """LeRobot 0.3.x: 2 (x - min) / (max - min + 1e-8) - 1; 0.4+: eps only where max == min."""
    root, *_ = hand_built(tmp_path, layout, image=False)
    lo, hi = torch.tensor([0.0, 0.0]), torch.tensor([1e-6, 0.0])  # a tiny span and a zero one
    if layout == "0.3":
        tensors = load_file(root / "model.safetensors")
        tensors["normalize_inputs.buffer_observation_state.min"] = lo
        tensors["normalize_inputs.buffer_observation_state.max"] = hi
        save_file(tensors, str(root / "model.safetensors"))
    else:
        state = root / "policy_preprocessor_step_3_normalizer_processor.safetensors"
        save_file({**load_file(state), "observation.state.min": lo, "observation.state.max": hi}, str(state))
    scale = load_policy(root).normalizer.get_stats("obs")["scale"][16:].double()  # the state's 2 dims
    span = hi.double() - lo.double()
    expected = 2 / (span + 1e-8) if layout == "0.3" else 2 / torch.where(span == 0, 1e-8, span)
    torch.testing.assert_close(scale, expected, rtol=1e-6, atol=0)
