"""DiffusionPolicy: queue behaviour, noise determinism, the validation boundary, golden outputs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from parapolicy.policy.config import NoiseScheduleConfig, PolicyConfig, SamplerConfig, UNetConfig
from parapolicy.policy.model.policy import DiffusionPolicy, ObservationError
from parapolicy.policy.model.pretrained import load_policy

ARTIFACTS = Path(__file__).parent / "artifacts"


def test_config_cross_field_rules():
    with pytest.raises(ValueError, match="horizon=10 must be a positive multiple of 2\\*\\*"):
        PolicyConfig(horizon=10)
    with pytest.raises(ValueError, match="n_action_steps=16 must be <= horizon - n_obs_steps \\+ 1 = 15"):
        PolicyConfig(n_action_steps=16)
    with pytest.raises(ValueError, match="num_inference_steps=200 must be <="):
        PolicyConfig(sampler=SamplerConfig(num_inference_steps=200))
    with pytest.raises(ValueError, match="window"):
        SamplerConfig(window=0)
    with pytest.raises(ValueError, match="tol"):
        SamplerConfig(tol=0.0)
    with pytest.raises(ValueError, match="max_iters"):
        SamplerConfig(max_iters=0)
    with pytest.raises(ValueError, match="kind"):
        SamplerConfig(kind="euler")
    with pytest.raises(ValueError, match="n_groups"):
        UNetConfig(down_dims=(12, 24))


def test_config_round_trips_through_json_dict(tiny_config):
    assert PolicyConfig.from_dict(tiny_config.to_dict()) == tiny_config
    with pytest.raises(ValueError, match="unknown field"):
        PolicyConfig.from_dict({**tiny_config.to_dict(), "extra": 1})


def test_select_action_refills_the_queue_every_n_action_steps(tiny_policy, monkeypatch):
    calls = []
    original = tiny_policy.predict_action_chunk

    def spy(obs, **kw):
        calls.append(obs["obs"].clone())
        return original(obs, **kw)

    monkeypatch.setattr(tiny_policy, "predict_action_chunk", spy)
    gen = torch.Generator().manual_seed(0)
    observations = [torch.full((20,), float(i)) for i in range(17)]
    for obs in observations:
        action = tiny_policy.select_action({"obs": obs}, generator=gen)
        assert action.shape == (1, 2)
    assert len(calls) == 3  # at steps 0, 8, 16
    assert torch.equal(calls[0][0], torch.stack([observations[0]] * 2))  # first obs repeated
    assert torch.equal(calls[1][0], torch.stack(observations[7:9]))  # the last two observations
    tiny_policy.reset()
    tiny_policy.select_action({"obs": observations[0]}, generator=gen)
    assert len(calls) == 4


def test_executed_rows_of_the_plan(tiny_policy):
    out = tiny_policy.predict_action_chunk(
        {"obs": torch.rand(2, 20) * 512}, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(out.action, out.plan[:, 1:9])


def test_same_noise_same_actions_and_batch_independence(tiny_policy):
    obs = torch.rand(3, 2, 20, generator=torch.Generator().manual_seed(5)) * 512

    def gens():
        return [torch.Generator().manual_seed(10 + i) for i in range(3)]

    a = tiny_policy.predict_action_chunk({"obs": obs}, generator=gens()).plan
    b = tiny_policy.predict_action_chunk({"obs": obs}, generator=gens()).plan
    assert torch.equal(a, b)
    single = tiny_policy.predict_action_chunk({"obs": obs[1:2]}, generator=gens()[1:2]).plan
    torch.testing.assert_close(single[0], a[1], atol=1e-3, rtol=0)  # px: float32 batching noise
    c = tiny_policy.predict_action_chunk({"obs": obs}, generator=torch.Generator().manual_seed(99)).plan
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(
    ("obs", "message"),
    [
        ({}, "missing key 'obs'"),
        ({"state": np.zeros(20)}, "missing key 'obs'"),
        ([0.0] * 20, "must be a mapping"),
        ({"obs": np.zeros(19)}, "must have shape"),
        ({"obs": np.zeros((2, 3, 20))}, "must have shape"),
        ({"obs": np.zeros(20, dtype=np.int64)}, "floating point"),
        ({"obs": np.array([0.0] * 19 + [np.nan])}, "non-finite value at index \\(0, 19\\)"),
        ({"obs": np.array([np.inf] + [0.0] * 19)}, "non-finite"),
    ],
)
def test_observation_boundary_rejects_bad_input_before_the_network(tiny_policy, monkeypatch, obs, message):
    monkeypatch.setattr(tiny_policy, "network", None)  # any network call would raise TypeError
    with pytest.raises(ObservationError, match=message):
        tiny_policy.select_action(obs)


def test_switching_sampler_rebuilds_the_table(tiny_policy):
    tiny_policy.set_sampler(SamplerConfig(kind="ddim", num_inference_steps=10, window=4))
    assert tiny_policy.table.num_steps == 10 and tiny_policy.table.kind == "ddim"
    short = DiffusionPolicy(
        PolicyConfig(
            unet=tiny_policy.config.unet,
            schedule=NoiseScheduleConfig(num_train_timesteps=50),
            sampler=SamplerConfig(num_inference_steps=50),
        )
    )
    with pytest.raises(
        ValueError, match="num_inference_steps=100 must be <= the policy's num_train_timesteps=50"
    ):
        short.set_sampler(SamplerConfig(num_inference_steps=100))


@pytest.mark.parametrize("name", ["ddpm100", "ddim10", "dpm10"])
def test_golden_output(name):
    """Regenerate with tests/artifacts/make_golden.py (see its docstring) only for intended changes."""
    io = load_file(str(ARTIFACTS / "golden_tiny_io.safetensors"))
    samplers = {
        "ddpm100": SamplerConfig(kind="ddpm", num_inference_steps=100),
        "ddim10": SamplerConfig(kind="ddim", num_inference_steps=10, window=8),
        "dpm10": SamplerConfig(kind="dpmsolver++", num_inference_steps=10, window=8),
    }
    policy = load_policy(ARTIFACTS / "golden_tiny", sampler=samplers[name])
    out = policy.predict_action_chunk({"obs": io["obs"]}, noise=(io[f"{name}.x_T"], io[f"{name}.noise"]))
    torch.testing.assert_close(out.plan, io[f"{name}.plan"], atol=1e-3, rtol=0)  # px; actions span 0..512


def cosine_alphas_cumprod(T: int) -> torch.Tensor:
    """squaredcos_cap_v2 (Nichol & Dhariwal 2021, eq. 17; betas capped at 0.999), in float64."""
    f = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
    betas = torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(T)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_loss_against_the_closed_form_target(tiny_config, prediction_type):
    """The network's inputs and the regression target, recomputed from the drawn noise and timesteps.

    compute_loss draws eps (B, H, Da) and then t (B,) from the generator, so a generator with the same
    seed replays them. The target is eps, the clean normalised actions, or v = sqrt(abar) eps -
    sqrt(1 - abar) a0 (Salimans & Ho 2022, section 4).
    """
    config = dataclasses.replace(tiny_config, schedule=NoiseScheduleConfig(prediction_type=prediction_type))
    torch.manual_seed(0)
    policy = DiffusionPolicy(config)
    gen = torch.Generator().manual_seed(1)
    policy.normalizer.fit(
        {"obs": torch.rand(200, 20, generator=gen) * 512, "action": torch.rand(200, 2, generator=gen) * 512}
    )
    B, H = 6, config.horizon
    batch = {
        "obs": torch.rand(B, H, 20, generator=gen) * 512,
        "action": torch.rand(B, H, 2, generator=gen) * 512,
    }
    seen = {}
    pred = torch.randn(B, H, 2, generator=gen)  # what the stub network answers

    class Stub(torch.nn.Module):
        def forward(self, x_t, t, cond):
            seen.update(x_t=x_t, t=t, cond=cond)
            return pred

    policy.network = Stub()
    loss = policy.compute_loss(batch, generator=torch.Generator().manual_seed(7))

    replay = torch.Generator().manual_seed(7)
    eps = torch.randn(B, H, 2, generator=replay)
    t = torch.randint(0, 100, (B,), generator=replay)
    a = policy.normalizer.get_stats("action")
    a0 = (2 * (batch["action"] - a["min"]) / (a["max"] - a["min"]) - 1).double()  # (B, H, Da) in [-1, 1]
    o = policy.normalizer.get_stats("obs")
    cond = (2 * (batch["obs"][:, :2] - o["min"]) / (o["max"] - o["min"]) - 1).reshape(B, 40)
    abar = cosine_alphas_cumprod(100)[t].view(B, 1, 1)
    x_t = abar.sqrt() * a0 + (1 - abar).sqrt() * eps
    target = {
        "epsilon": eps.double(),
        "sample": a0,
        "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * a0,
    }[prediction_type]
    assert torch.equal(seen["t"], t)
    torch.testing.assert_close(seen["cond"], cond, atol=1e-5, rtol=0)
    torch.testing.assert_close(seen["x_t"].double(), x_t, atol=1e-5, rtol=0)
    assert loss.item() == pytest.approx(((pred.double() - target) ** 2).mean().item(), rel=1e-5)


def test_loss_backpropagates_into_every_parameter(tiny_policy):
    batch = {"obs": torch.rand(4, 16, 20) * 512, "action": torch.rand(4, 16, 2) * 512}
    loss = tiny_policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_policy.network.parameters())


def test_traced_denoiser_matches_eager_and_survives_device_moves(tiny_policy):
    gen = torch.Generator().manual_seed(4)
    x, t, cond = (
        torch.randn(5, 16, 2, generator=gen),
        torch.randint(0, 100, (5,), generator=gen),
        torch.randn(5, 40),
    )
    eager = tiny_policy.denoise(x, t, cond)
    tiny_policy.set_compile("trace")  # on the CPU: oneDNN-prepacked graphs, within float32 rounding
    torch.testing.assert_close(tiny_policy.denoise(x, t, cond), eager, atol=1e-5, rtol=1e-5)
    tiny_policy.to("cpu")
    torch.testing.assert_close(tiny_policy.denoise(x, t, cond), eager, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="compile mode"):
        tiny_policy.set_compile("inductor")


def test_a_traced_policy_follows_loaded_weights(tiny_policy):
    x, t, cond = torch.randn(1, 16, 2), torch.tensor([7]), torch.randn(1, 40)  # (1, H, Da), (1,), (1, C)
    tiny_policy.set_compile("trace")
    state = {k: v.clone() for k, v in tiny_policy.state_dict().items()}
    with torch.no_grad():
        before = tiny_policy.denoise(x, t, cond)
        for name in state:
            if name.endswith("conv.weight") or name.endswith("block.0.weight"):
                state[name] *= 1.5
        tiny_policy.load_state_dict(state)
        after = tiny_policy.denoise(x, t, cond)
        tiny_policy.set_compile("none")
        eager = tiny_policy.denoise(x, t, cond)
    assert (after - before).abs().max() > 1e-2  # the new weights, not float rounding
    torch.testing.assert_close(after, eager, atol=1e-5, rtol=1e-5)


def test_a_traced_policy_follows_weights_written_in_place(tiny_policy, tiny_config):
    """``network.load_state_dict``, an optimizer step or `EMA.update` write the weights in place, which
    `DiffusionPolicy.load_state_dict`'s hook does not see: the next plan re-records the trace (and drops
    a linear coarse model measured with the old weights)."""
    obs = {"obs": torch.rand(1, 2, 20) * 512}
    sampler = SamplerConfig(
        num_inference_steps=10, algorithm="picard", update="parareal", coarse="linear", window=4
    )
    tiny_policy.set_sampler(sampler)
    tiny_policy.set_compile("trace")
    tiny_policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert tiny_policy.coarse_jacobian is not None
    torch.manual_seed(9)
    other = DiffusionPolicy(tiny_config).network.state_dict()
    tiny_policy.network.load_state_dict(other)  # in place, past the policy's own hook
    traced = tiny_policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(1)).plan
    assert tiny_policy.coarse_jacobian is not None  # measured again on this plan
    fresh = DiffusionPolicy(tiny_config)
    fresh.network.load_state_dict(other)
    fresh.normalizer.load_state_dict(tiny_policy.normalizer.state_dict())
    fresh.set_sampler(sampler)
    eager = fresh.predict_action_chunk(obs, generator=torch.Generator().manual_seed(1)).plan
    torch.testing.assert_close(traced, eager, atol=1e-3, rtol=1e-4)


def test_loading_weights_drops_the_linear_coarse_model(tiny_policy):
    sampler = SamplerConfig(
        num_inference_steps=10, algorithm="picard", update="parareal", coarse="linear", window=4
    )
    tiny_policy.set_sampler(sampler)
    tiny_policy.predict_action_chunk({"obs": torch.rand(1, 2, 20) * 512})
    assert tiny_policy.coarse_jacobian is not None
    tiny_policy.load_state_dict(tiny_policy.state_dict())
    assert tiny_policy.coarse_jacobian is None


def test_tracing_keeps_the_networks_training_mode(tiny_policy):
    tiny_policy.train()
    tiny_policy.set_compile("trace")
    assert tiny_policy.network.training
    tiny_policy.to("cpu")  # a move re-records the trace
    assert tiny_policy.network.training


def test_select_action_keeps_its_own_copy_of_each_observation(tiny_policy):
    """A driver that writes every observation into one buffer must not rewrite the policy's history."""
    tiny_policy.config.n_action_steps = 1  # a plan per call: it sees the last two observations
    frames = [np.random.default_rng(i).uniform(0, 512, 20).astype(np.float32) for i in range(2)]

    def second_action(reuse: bool) -> torch.Tensor:
        tiny_policy.reset()
        buffer = np.empty(20, np.float32)
        for i, frame in enumerate(frames):
            buffer[:] = frame
            action = tiny_policy.select_action(
                {"obs": buffer if reuse else frame.copy()}, generator=torch.Generator().manual_seed(i)
            )
        return action

    torch.testing.assert_close(second_action(reuse=True), second_action(reuse=False), rtol=0, atol=0)


def test_set_denoiser_routes_sampling(tiny_policy):
    rows = []

    def counting(x, t, cond):
        rows.append(x.shape[0])
        return tiny_policy.local_denoise(x, t, cond)

    tiny_policy.set_denoiser(counting)
    tiny_policy.predict_action_chunk(
        {"obs": torch.rand(2, 20) * 512}, generator=torch.Generator().manual_seed(0)
    )
    assert rows == [1] * 100
    tiny_policy.set_denoiser(None)
    tiny_policy.predict_action_chunk(
        {"obs": torch.rand(2, 20) * 512}, generator=torch.Generator().manual_seed(0)
    )
    assert len(rows) == 100
    with pytest.raises(TypeError, match="callable"):
        tiny_policy.set_denoiser(3)


def test_auto_window_still_checks_the_other_fields():
    with pytest.raises(ValueError, match="tol"):
        SamplerConfig(window="auto", tol=0.0)
    assert SamplerConfig(num_inference_steps=4).window == 8  # the window matters only to Picard
    with pytest.raises(ValueError, match="window"):
        SamplerConfig(num_inference_steps=4, algorithm="picard")


def test_a_float64_policy_plans_in_float64(tiny_policy):
    obs = {"obs": torch.rand(1, 2, 20) * 512}
    single = tiny_policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0)).plan
    tiny_policy.double()
    assert tiny_policy.table.dtype == tiny_policy.dtype == torch.float64
    double = tiny_policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0)).plan
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, atol=1e-3, rtol=1e-4)  # the same noise and weights
    tiny_policy.set_sampler(SamplerConfig(num_inference_steps=10, algorithm="picard", window=4))
    assert tiny_policy.table.dtype == torch.float64
    tiny_policy.float()
    assert tiny_policy.table.dtype == torch.float32
