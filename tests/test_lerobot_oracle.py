"""Oracle: a checkpoint written by the `lerobot` package itself loads here and samples the same actions.

Skipped unless ``lerobot`` imports (it cannot share CI's environment: LeRobot 0.6.1 needs Python >= 3.12
and torch < 2.12). How to run it is in docs/lerobot.md ("The oracle test"). Works with the 0.3.x API
(statistics inside the policy) and the 0.4+ API (processor pipelines).

Same weights, same x_T, DDIM with 10 steps (deterministic given x_T): LeRobot's normalised samples and
ours agree to 1e-5, and so do the unnormalised actions (relative to their 0..512 range).
"""

from __future__ import annotations

import pytest
import torch

try:  # a CUDA torchvision on CPU torch raises RuntimeError, not ImportError
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as LeRobotDiffusionPolicy
except Exception as exc:  # noqa: BLE001
    pytest.skip(f"lerobot is not importable here ({type(exc).__name__}: {exc})", allow_module_level=True)

try:
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
except Exception:  # noqa: BLE001 - 0.3.x: no processors, the policy normalises itself
    make_diffusion_pre_post_processors = None

from parapolicy.policy.diffusion.sequential import draw_noise
from parapolicy.policy.model.pretrained import load_policy

B = 3


def stats(image: bool) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)

    def full(dim: int, lo: float, hi: float) -> dict[str, torch.Tensor]:
        mn = lo + torch.rand(dim, generator=gen) * 10
        mx = hi - torch.rand(dim, generator=gen) * 10
        return {"min": mn, "max": mx, "mean": (mn + mx) / 2, "std": (mx - mn) / 4}

    out = {"observation.state": full(2, 10, 500), "action": full(2, 12, 511)}
    if image:
        out["observation.image"] = {
            "mean": torch.full((3, 1, 1), 0.5),
            "std": torch.full((3, 1, 1), 0.5),
            "min": torch.zeros(3, 1, 1),
            "max": torch.ones(3, 1, 1),
        }
    else:
        out["observation.environment_state"] = full(16, 5, 505)
    return out


def lerobot_checkpoint(tmp_path, image: bool):
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(2,))}
    if image:
        inputs["observation.image"] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 96, 96))
    else:
        inputs["observation.environment_state"] = PolicyFeature(type=FeatureType.ENV, shape=(16,))
    cfg = DiffusionConfig(
        input_features=inputs,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        crop_shape=(84, 84),
        pretrained_backbone_weights=None,
        use_group_norm=True,
        use_separate_rgb_encoder_per_camera=False,
        down_dims=(32, 64),
        diffusion_step_embed_dim=32,
        noise_scheduler_type="DDIM",
        num_inference_steps=10,
        device="cpu",
    )
    torch.manual_seed(0)
    st = stats(image)
    if make_diffusion_pre_post_processors is None:  # 0.3.x
        policy = LeRobotDiffusionPolicy(cfg, dataset_stats=st)
        pre = post = None
    else:
        policy = LeRobotDiffusionPolicy(cfg)
        pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=st)
    policy.eval()
    path = tmp_path / ("image" if image else "lowdim")
    policy.save_pretrained(path)
    if pre is not None:
        pre.save_pretrained(path)
        post.save_pretrained(path)
    return policy, pre, post, path


def assert_same_samples(ours, theirs, pre, post, image: bool, seed: int, env_dim: int) -> None:
    """Random observations (seeded), LeRobot's DDIM sample and ours from the same x_T: equal to 1e-5.

    ``pre``/``post``: LeRobot 0.4+'s processor pipelines, or None on 0.3.x (its in-model normalisers).
    """
    gen = torch.Generator().manual_seed(seed)
    state = 20 + torch.rand(B, 2, 2, generator=gen) * 460  # (B, To, 2)
    raw = {"observation.state": state}
    if image:
        pixels = torch.randint(0, 256, (B, 2, 96, 96, 3), dtype=torch.uint8, generator=gen)
        raw["observation.image"] = (
            pixels.permute(0, 1, 4, 2, 3).float() / 255.0
        )  # (B, To, 3, 96, 96) in [0, 1]
        our_obs = {"pixels": pixels, "agent_pos": state}
    else:
        env = 10 + torch.rand(B, 2, env_dim, generator=gen) * 480
        raw["observation.environment_state"] = env
        our_obs = {"obs": torch.cat([env, state], dim=-1)}  # ours: [environment_state, state]

    with torch.no_grad():
        batch = pre(dict(raw)) if pre is not None else theirs.normalize_inputs(dict(raw))
        if image:
            batch["observation.images"] = torch.stack([batch["observation.image"]], dim=-4)
        global_cond = theirs.diffusion._prepare_global_conditioning(batch)
        their_sample = theirs.diffusion.conditional_sample(
            B, global_cond=global_cond, generator=torch.Generator().manual_seed(7)
        )
        their_actions = (
            post(their_sample)
            if post is not None
            else theirs.unnormalize_outputs({"action": their_sample})["action"]
        )

    x_T = torch.randn((B, 16, 2), generator=torch.Generator().manual_seed(7))  # LeRobot's first draw
    _, step_noise = draw_noise(ours.table, (B, 16, 2), torch.Generator().manual_seed(0))  # unused by DDIM
    pred = ours.predict_action_chunk(our_obs, noise=(x_T, step_noise))
    torch.testing.assert_close(pred.result.sample, their_sample, rtol=0, atol=1e-5)
    torch.testing.assert_close(pred.plan, their_actions, rtol=1e-5, atol=512 * 1e-5)


@pytest.mark.parametrize("image", [False, True])
def test_lerobot_checkpoint_samples_match(tmp_path, image):
    theirs, pre, post, path = lerobot_checkpoint(tmp_path, image)
    ours = load_policy(path)
    assert_same_samples(ours, theirs, pre, post, image, seed=1, env_dim=16)


@pytest.mark.parametrize("obs_type", ["state", "pixels_agent_pos"])
def test_exported_directory_runs_in_lerobot(tmp_path, obs_type):
    """The other direction: `save_lerobot_policy` output parsed, loaded strictly and sampled by LeRobot."""
    import lerobot.policies.diffusion.configuration_diffusion  # noqa: F401 - registers type "diffusion"
    from lerobot.configs.policies import PreTrainedConfig
    from safetensors.torch import load_file

    from parapolicy.policy.config import PolicyConfig, SamplerConfig, UNetConfig
    from parapolicy.policy.model.lerobot_format import save_lerobot_policy
    from parapolicy.policy.model.policy import DiffusionPolicy

    image = obs_type == "pixels_agent_pos"
    cfg = PolicyConfig(
        obs_dim=2 if image else 20,
        obs_type=obs_type,
        unet=UNetConfig(down_dims=(32, 64), diffusion_step_embed_dim=32),
        sampler=SamplerConfig(kind="ddim", num_inference_steps=10),
    )
    torch.manual_seed(0)
    ours = DiffusionPolicy(cfg)
    gen = torch.Generator().manual_seed(1)
    ours.normalizer.fit(
        {
            "obs": 5 + torch.rand(100, cfg.obs_dim, generator=gen) * 500,
            "action": torch.rand(100, 2, generator=gen) * 512,
        }
    )
    ours.eval()
    path = save_lerobot_policy(ours, tmp_path / "exported")

    lr_cfg = PreTrainedConfig.from_pretrained(path)
    lr_cfg.device = "cpu"
    model = load_file(path / "model.safetensors")
    pre_stats = load_file(path / "policy_preprocessor_step_3_normalizer_processor.safetensors")
    if make_diffusion_pre_post_processors is None:  # 0.3.x: statistics go into the policy's buffers
        stats: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in pre_stats.items():
            feature, stat = key.rsplit(".", 1)
            stats.setdefault(feature, {})[stat] = value
        for sub in stats.values():  # 0.3.x builds every statistic; the unused ones only need to be finite
            shape = next(iter(sub.values())).shape
            for stat in ("mean", "std", "min", "max"):
                sub.setdefault(stat, torch.ones(shape))
        theirs = LeRobotDiffusionPolicy(lr_cfg, dataset_stats=stats)
        missing, unexpected = theirs.load_state_dict(model, strict=False)
        assert unexpected == [] and all(
            k.split(".")[0].endswith(("normalize_inputs", "normalize_targets", "unnormalize_outputs"))
            for k in missing
        )
        pre = post = None
    else:
        from lerobot.processor import PolicyProcessorPipeline
        from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

        theirs = LeRobotDiffusionPolicy.from_pretrained(path, strict=True)
        pre = PolicyProcessorPipeline.from_pretrained(path, config_filename="policy_preprocessor.json")
        post = PolicyProcessorPipeline.from_pretrained(
            path,
            config_filename="policy_postprocessor.json",
            to_transition=policy_action_to_transition,
            to_output=transition_to_policy_action,
        )
    theirs.eval()

    assert_same_samples(ours, theirs, pre, post, image, seed=2, env_dim=18)
