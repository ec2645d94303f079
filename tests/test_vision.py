"""Image policies: the ResNet / spatial-softmax encoder, crops, the observation boundary, Picard parity,
save/load, and a tiny training run."""

from __future__ import annotations

import pytest
import torch
from conftest import image_config
from torch import nn

from parapolicy.policy.config import PolicyConfig, SamplerConfig, VisionConfig
from parapolicy.policy.diffusion.picard import sample_picard
from parapolicy.policy.diffusion.sequential import draw_noise, sample_sequential
from parapolicy.policy.model.policy import DiffusionPolicy, ObservationError
from parapolicy.policy.model.pretrained import load_policy, save_policy
from parapolicy.policy.model.vision import RgbEncoder, SpatialSoftmax, center_crop, random_crop, trunk_name


@pytest.fixture(scope="module")
def image_policy() -> DiffusionPolicy:
    torch.manual_seed(0)
    policy = DiffusionPolicy(image_config())
    gen = torch.Generator().manual_seed(1)
    policy.normalizer.fit(
        {"obs": torch.rand(200, 2, generator=gen) * 512, "action": torch.rand(200, 2, generator=gen) * 512}
    )
    return policy.eval()


def observations(B: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "pixels": torch.randint(0, 256, (B, 2, 96, 96, 3), dtype=torch.uint8, generator=gen),
        "agent_pos": torch.rand(B, 2, 2, generator=gen) * 512,
    }


def test_encoder_shapes_and_condition_width(image_policy):
    cfg = image_policy.config
    assert cfg.global_cond_dim == 2 * (2 + 64) == 132  # per step [agent xy, 64 image features]
    enc = image_policy.network.rgb_encoder
    x = torch.randn(5, 3, 96, 96)
    with torch.no_grad():
        assert enc.backbone(center_crop(x, (84, 84))).shape == (5, 512, 3, 3)
        assert enc(x).shape == (5, 64)
        assert bool((enc(x) >= 0).all())  # ReLU output
        obs = observations(3)
        state = image_policy.normalizer.normalize("obs", obs["agent_pos"])
        cond = image_policy.network.encode(obs["pixels"], state)
    assert cond.shape == (3, 132)
    # per step: [normalised state (2), features (64)]; step 1 follows step 0
    torch.testing.assert_close(cond[:, 66:68], state[:, 1], rtol=0, atol=0)
    pixels = obs["pixels"][:, 1].permute(0, 3, 1, 2).float() / 255.0
    feats = enc((pixels - 0.5) / 0.5)
    torch.testing.assert_close(cond[:, 68:], feats, rtol=0, atol=1e-6)  # batch 6 vs 3: float noise


def test_group_norm_replaces_batch_norm_and_batch_norm_is_kept_on_request():
    gn = RgbEncoder(VisionConfig())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    groups = {(m.num_groups, m.num_channels) for m in gn.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {(4, 64), (8, 128), (16, 256), (32, 512)}  # C // 16
    bn = RgbEncoder(VisionConfig(norm="batch_norm"))
    keys = bn.state_dict().keys()
    assert "backbone.1.running_mean" in keys and "backbone.7.1.bn2.num_batches_tracked" in keys
    assert not any(isinstance(m, nn.GroupNorm) for m in bn.modules())
    # the torchvision layout: 1x1 downsample convs exist from layer2 on
    assert "backbone.5.0.downsample.0.weight" in keys and "backbone.4.0.downsample.0.weight" not in keys


def test_backbone_matches_torchvision_resnet18_names_and_shapes():
    try:
        import torchvision
    except Exception:  # absent, or a CUDA build on CPU torch ("operator torchvision::nms does not exist")
        pytest.skip("torchvision is not importable here")
    ref = torchvision.models.resnet18(weights=None)
    ours = RgbEncoder(VisionConfig(norm="batch_norm")).backbone.state_dict()
    mapped = {trunk_name(k): tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert mapped == {k: tuple(v.shape) for k, v in ours.items()}
    assert trunk_name("layer4.1.bn2.running_var") == "7.1.bn2.running_var"


def test_average_pooled_encoder_gives_each_channels_mean_and_trains():
    torch.manual_seed(0)
    policy = DiffusionPolicy(image_config(pool="avg", crop_shape=(76, 76))).train()
    enc = policy.network.rgb_encoder
    assert policy.config.global_cond_dim == 2 * (2 + 512) and not hasattr(enc, "out")
    x = torch.randn(4, 3, 96, 96)
    with torch.no_grad():
        maps = enc.eval().backbone(center_crop(x, (76, 76)))  # (4, 512, 3, 3)
        torch.testing.assert_close(enc(x), maps.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    policy.train().normalizer.fit({"obs": torch.rand(50, 2) * 512, "action": torch.rand(50, 2) * 512})
    gen = torch.Generator().manual_seed(0)
    batch = {
        "pixels": torch.randint(0, 256, (2, 16, 96, 96, 3), dtype=torch.uint8, generator=gen),
        "agent_pos": torch.rand(2, 16, 2, generator=gen) * 512,
        "action": torch.rand(2, 16, 2, generator=gen) * 512,
    }
    before = policy.network.state_dict()["rgb_encoder.backbone.7.1.conv2.weight"].clone()
    opt = torch.optim.AdamW(policy.network.parameters(), lr=1e-3)
    loss = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, policy.network.state_dict()["rgb_encoder.backbone.7.1.conv2.weight"])


def test_crop_is_random_in_training_and_centred_in_evaluation():
    x = torch.arange(2 * 3 * 96 * 96, dtype=torch.float32).view(2, 3, 96, 96).repeat(8, 1, 1, 1)  # (16, ...)
    enc = RgbEncoder(VisionConfig())
    enc.eval()
    torch.testing.assert_close(enc.crop(x), x[..., 6:90, 6:90], rtol=0, atol=0)
    enc.train()
    crops = enc.crop(x, torch.Generator().manual_seed(0))
    assert crops.shape == (16, 3, 84, 84)
    offsets = set()
    for n in range(16):  # each crop is a window of its own image, channels kept together
        flat = int(crops[n, 0, 0, 0] - x[n, 0, 0, 0])
        top, left = divmod(flat, 96)
        assert 0 <= top <= 12 and 0 <= left <= 12
        torch.testing.assert_close(crops[n], x[n, :, top : top + 84, left : left + 84], rtol=0, atol=0)
        offsets.add((top, left))
    assert len(offsets) > 1  # independent per image
    again = enc.crop(x, torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)  # the generator makes it reproducible
    fixed = RgbEncoder(VisionConfig(crop_is_random=False)).train()
    torch.testing.assert_close(fixed.crop(x), x[..., 6:90, 6:90], rtol=0, atol=0)
    assert random_crop(x, (96, 96)).equal(x)


def test_spatial_softmax_finds_a_peak():
    pool = SpatialSoftmax((1, 3, 5), num_keypoints=1)
    with torch.no_grad():
        pool.nets.weight.fill_(1.0)
        pool.nets.bias.zero_()
    feat = torch.full((1, 1, 3, 5), -1e4)
    feat[0, 0, 2, 1] = 0.0  # row 2 (y = 1), column 1 (x = -0.5)
    torch.testing.assert_close(pool(feat), torch.tensor([[[-0.5, 1.0]]]))
    assert pool.pos_grid.shape == (15, 2) and "pos_grid" in pool.state_dict()


def test_observation_boundary_names_the_problem(image_policy):
    obs = observations(1)
    with pytest.raises(ObservationError, match="missing key"):
        image_policy.predict_action_chunk({"pixels": obs["pixels"]})
    with pytest.raises(ObservationError, match="must be uint8"):
        image_policy.predict_action_chunk({**obs, "pixels": obs["pixels"].float()})
    with pytest.raises(ObservationError, match=r"'pixels' must have shape \(2, 96, 96, 3\)"):
        image_policy.predict_action_chunk({**obs, "pixels": obs["pixels"][:, :, :84]})
    bad = obs["agent_pos"].clone()
    bad[0, 1, 0] = float("nan")
    with pytest.raises(ObservationError, match="non-finite value at index"):
        image_policy.predict_action_chunk({**obs, "agent_pos": bad})
    with pytest.raises(ObservationError, match="batch size"):
        image_policy.predict_action_chunk({**obs, "agent_pos": torch.rand(2, 2, 2)})


def test_picard_parity_and_the_encoder_runs_once_per_chunk(image_policy):
    calls = []
    handle = image_policy.network.rgb_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        obs = observations(2, seed=3)
        seq = image_policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
        image_policy.set_sampler(
            SamplerConfig(num_inference_steps=10, algorithm="picard", window=4, tol=1e-3)
        )
        par = image_policy.predict_action_chunk(obs, noise=(seq.x_T, seq.noise))
        assert len(calls) == 2  # one encoder call per chunk, not per denoising step or Picard iteration
        assert par.result.iterations > 1
        torch.testing.assert_close(par.plan, seq.plan, rtol=0, atol=0.05)  # px, at tol 1e-3
        # tol = 0 on the same condition: Picard reproduces the sequential sample
        with torch.no_grad():
            cond = image_policy.condition(image_policy.validate_observation(obs, history=True))
            table = image_policy.table
            x_T, noise = draw_noise(table, (2, 16, 2), torch.Generator().manual_seed(5))
            ref = sample_sequential(image_policy.denoise, x_T, table, noise, cond)
            exact = sample_picard(image_policy.denoise, x_T, table, noise, cond, window=1, tol=0.0)
            wide = sample_picard(image_policy.denoise, x_T, table, noise, cond, window=4, tol=0.0)
        assert torch.equal(exact.sample, ref.sample)
        torch.testing.assert_close(wide.sample, ref.sample, rtol=0, atol=1e-5)
    finally:
        handle.remove()
        image_policy.set_sampler(SamplerConfig(num_inference_steps=10))


def test_save_load_round_trip(image_policy, tmp_path):
    save_policy(image_policy, tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.config == image_policy.config
    ours, theirs = image_policy.network.state_dict(), loaded.network.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    obs = observations(2, seed=4)
    a = image_policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(9))
    b = loaded.predict_action_chunk(obs, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.plan, b.plan)
    # select_action keeps image histories
    loaded.reset()
    step = {k: v[0, 0] for k, v in obs.items()}
    assert loaded.select_action(step, generator=torch.Generator().manual_seed(0)).shape == (1, 2)


def test_tiny_training_run_updates_encoder_and_unet():
    torch.manual_seed(0)
    policy = DiffusionPolicy(image_config(num_keypoints=8)).train()
    policy.normalizer.fit({"obs": torch.rand(50, 2) * 512, "action": torch.rand(50, 2) * 512})
    opt = torch.optim.AdamW(policy.network.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "pixels": torch.randint(0, 256, (4, 16, 96, 96, 3), dtype=torch.uint8, generator=gen),
        "agent_pos": torch.rand(4, 16, 2, generator=gen) * 512,
        "action": torch.rand(4, 16, 2, generator=gen) * 512,
    }
    before = {k: v.clone() for k, v in policy.network.state_dict().items()}
    losses = []
    for step in range(3):
        opt.zero_grad()
        loss = policy.compute_loss(batch, generator=torch.Generator().manual_seed(step))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    after = policy.network.state_dict()
    assert not torch.equal(before["rgb_encoder.backbone.0.weight"], after["rgb_encoder.backbone.0.weight"])
    assert not torch.equal(before["rgb_encoder.out.weight"], after["rgb_encoder.out.weight"])
    assert "image_mean" not in after  # image statistics come from the config


def test_vision_config_rules():
    with pytest.raises(ValueError, match="crop_shape"):
        VisionConfig(crop_shape=(100, 84))
    with pytest.raises(ValueError, match="norm"):
        VisionConfig(norm="layer_norm")
    with pytest.raises(ValueError, match="backbone"):
        VisionConfig(backbone="resnet50")
    with pytest.raises(ValueError, match="vision.pool"):
        VisionConfig(pool="max")
    with pytest.raises(ValueError, match="backbone_weights needs"):
        VisionConfig(backbone_weights="w.safetensors")
    with pytest.raises(ValueError, match="obs_type"):
        PolicyConfig(obs_type="pixels")
    for cfg in (image_config(), image_config(pool="avg")):
        assert PolicyConfig.from_dict(cfg.to_dict()) == cfg


def test_traced_denoiser_serves_image_policies(image_policy):
    obs = observations(2, seed=6)
    eager = image_policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    try:
        image_policy.set_compile("trace")  # traces the U-Net only; the encoder stays eager, once per chunk
        traced = image_policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    finally:
        image_policy.set_compile("none")
    # pixel units; the CPU graphs compute the network within float32 rounding (cpu_graphs.CpuGraphs)
    torch.testing.assert_close(traced.plan, eager.plan, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    ("image", "crop", "top_left"),
    [((96, 96), (84, 84), (6, 6)), ((96, 95), (85, 84), (6, 6)), ((95, 96), (84, 81), (6, 8))],
)
def test_center_crop_offsets_round_like_torchvision(image, crop, top_left):
    """torchvision's CenterCrop takes int(round(margin / 2)) (Python rounding: 5.5 -> 6, 7.5 -> 8), not
    the floor (5, 7): golden offsets."""
    x = torch.arange(2 * 3 * image[0] * image[1], dtype=torch.float32).view(2, 3, *image)
    top, left = top_left
    assert torch.equal(center_crop(x, crop), x[..., top : top + crop[0], left : left + crop[1]])
