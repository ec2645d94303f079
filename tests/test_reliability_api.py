"""Reliability of the library API (issue 15, items 4, 6, 7 and 9): bad checkpoints, policy-API misuse,
non-representable reset angles, a poisoned window=auto cache. Each refusal names the problem."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import image_config
from safetensors.torch import load_file, save_file

from parapolicy.envs import ENV_ID
from parapolicy.policy.config import PolicyConfig
from parapolicy.policy.diffusion.sequential import draw_noise
from parapolicy.policy.model.checkpoint import CheckpointError
from parapolicy.policy.model.policy import DiffusionPolicy, ObservationError
from parapolicy.policy.model.pretrained import load_policy, save_policy
from parapolicy.policy.runtime import auto_window

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def saved(tmp_path, tiny_policy):
    return save_policy(tiny_policy, tmp_path / "ckpt")


def obs_history(batch: int = 1) -> dict:
    return {"obs": torch.linspace(0, 512, batch * 40).reshape(batch, 2, 20)}


# --------------------------------------------------------------------------------------- item 4
@pytest.mark.parametrize(("file", "prefix"), [("model.safetensors", "ema."), ("normalizer.safetensors", "")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_or_normaliser_are_refused_at_load(saved, file, prefix, bad):
    tensors = load_file(saved / file)
    floats = (k for k in tensors if k.startswith(prefix) and tensors[k].is_floating_point())
    name = sorted(k for k in floats if not k.endswith((".min", ".max")))[0]  # those: the test below
    tensors[name].view(-1)[0] = bad
    save_file(tensors, saved / file)
    with pytest.raises(
        CheckpointError, match=rf"{file}: tensor '{name.removeprefix(prefix)}' holds 1 non-finite"
    ):
        load_policy(saved)


# --------------------------------------------------------------------------------------- item 6
def test_huge_finite_observation_is_refused(tiny_policy):
    obs = obs_history()
    obs["obs"][0, 1, 3] = 1e30  # finite in float32, NaN plan without the check
    with pytest.raises(
        ObservationError, match=r"value 1e\+30 at index \(0, 1, 3\) is far outside the normaliser's"
    ):
        tiny_policy.predict_action_chunk(obs)
    with pytest.raises(ObservationError, match="far outside"):
        tiny_policy.select_action({"obs": np.full(20, -1e30, np.float32)})


def test_identity_normalised_dimensions_have_no_range_to_check(tiny_policy):
    """A LeRobot IDENTITY feature (scale 1, offset 0: the network sees raw values) is not refused."""
    policy = copy.deepcopy(tiny_policy)
    stats = policy.normalizer._stats("obs")
    stats.scale[:16], stats.offset[:16] = 1.0, 0.0  # the 16 environment-state dims pass through
    stats.min[:16], stats.max[:16] = -torch.inf, torch.inf  # no range, as the LeRobot loader writes it
    obs = obs_history()
    obs["obs"][..., :16] = 337.0  # raw pixels: 337x the identity "half-width"
    policy.predict_action_chunk(obs)
    obs["obs"][0, 1, 17] = 1e30  # a dimension with statistics is still checked
    with pytest.raises(ObservationError, match=r"at index \(0, 1, 17\) is far outside"):
        policy.predict_action_chunk(obs)


def test_a_dimension_fitted_on_minus_one_to_one_is_still_checked(tiny_policy):
    """Its fit is scale 1 / offset 0 exactly, the identity's transform, but it has a range."""
    policy = copy.deepcopy(tiny_policy)
    data = torch.linspace(0, 512, 40).reshape(2, 20).repeat(5, 1)  # (10, 20)
    data[:, 3] = torch.linspace(-1, 1, 10)
    policy.normalizer.fit({"obs": data})
    stats = policy.normalizer.get_stats("obs")
    assert (stats["scale"][3], stats["offset"][3]) == (1.0, 0.0)
    obs = obs_history()
    obs["obs"][..., 3] = 0.5
    policy.predict_action_chunk(obs)
    obs["obs"][0, 1, 3] = 337.0
    with pytest.raises(ObservationError, match=r"337 at index \(0, 1, 3\) is far outside .* \[-1, 1\]"):
        policy.predict_action_chunk(obs)


@pytest.mark.parametrize(("name", "bad"), [("min", np.nan), ("min", np.inf), ("max", -np.inf)])
def test_only_an_unbounded_range_may_be_infinite_in_a_saved_normaliser(saved, name, bad):
    tensors = load_file(saved / "normalizer.safetensors")
    tensors["stats.obs.min"][:2], tensors["stats.obs.max"][:2] = -torch.inf, torch.inf  # unbounded: loads
    save_file(tensors, saved / "normalizer.safetensors")
    lows = load_policy(saved).normalizer.get_stats("obs")["min"]
    assert torch.equal(lows[:2], torch.full((2,), -torch.inf))
    tensors[f"stats.obs.{name}"][5] = bad
    save_file(tensors, saved / "normalizer.safetensors")
    with pytest.raises(CheckpointError, match=rf"tensor 'stats.obs.{name}' holds 1 non-finite"):
        load_policy(saved)


@pytest.mark.parametrize(("widths", "refused"), [(99.0, False), (101.0, True)])
def test_the_range_limit_is_100_half_widths_from_the_centre(tiny_policy, widths, refused):
    stats = tiny_policy.normalizer.get_stats("obs")
    centre, half = (stats["max"][3] + stats["min"][3]) / 2, (stats["max"][3] - stats["min"][3]) / 2
    obs = obs_history()
    obs["obs"][0, 1, 3] = float(centre + widths * half)
    if refused:
        with pytest.raises(ObservationError, match=r"at index \(0, 1, 3\) is far outside"):
            tiny_policy.predict_action_chunk(obs)
    else:
        tiny_policy.predict_action_chunk(obs)


def test_observation_slightly_outside_the_range_is_accepted(tiny_policy):
    obs = obs_history()
    obs["obs"][0, 1, 3] = 700.0  # outside [0, 512] but plausible
    assert torch.isfinite(tiny_policy.predict_action_chunk(obs, generator=torch.Generator()).action).all()


def test_batch_size_change_mid_episode_is_refused(tiny_policy):
    tiny_policy.reset()
    tiny_policy.select_action({"obs": torch.rand(2, 20) * 512})
    with pytest.raises(ObservationError, match="batch size changed from 2 to 3 .*call reset"):
        tiny_policy.select_action({"obs": torch.rand(3, 20) * 512})
    tiny_policy.reset()
    assert tiny_policy.select_action({"obs": torch.rand(3, 20) * 512}).shape == (3, 2)


def _noise(policy, batch=1, horizon=None):
    cfg = policy.config
    return draw_noise(policy.table, (batch, horizon or cfg.horizon, cfg.action_dim), torch.Generator())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _noise(p, horizon=8), r"noise x_T must have shape \(1, 16, 2\), got \(1, 8, 2\)"),
        (
            lambda p: tuple(t.double() for t in _noise(p)),
            "noise x_T must have the policy's dtype torch.float32",
        ),
        (lambda p: (_noise(p)[0], _noise(p)[1].long()), "step_noise must have the policy's dtype"),
        (lambda p: _noise(p)[0], r"noise must be a pair .*got a single Tensor of shape \(1, 16, 2\)"),
        (lambda p: (_noise(p)[0] * float("nan"), _noise(p)[1]), "noise x_T holds non-finite"),
        (lambda p: (_noise(p)[0], _noise(p)[1][:3]), r"step_noise must have shape \(100, 1, 16, 2\)"),
        (lambda p: (_noise(p)[0].numpy(), _noise(p)[1]), "noise x_T must be a torch.Tensor"),
    ],
)
def test_bad_noise_is_refused(tiny_policy, make, message):
    with pytest.raises(ValueError, match=message):
        tiny_policy.predict_action_chunk(obs_history(), noise=make(tiny_policy))


def test_bad_x0_guess_is_refused(tiny_policy):
    with pytest.raises(ValueError, match=r"x0_guess must have shape \(1, 16, 2\)"):
        tiny_policy.predict_action_chunk(obs_history(), x0_guess=torch.zeros(1, 8, 2))


def test_valid_noise_still_gives_the_same_plan(tiny_policy):
    noise = _noise(tiny_policy)
    a = tiny_policy.predict_action_chunk(obs_history(), noise=noise).plan
    b = tiny_policy.predict_action_chunk(obs_history(), noise=list(noise)).plan
    assert torch.equal(a, b) and torch.isfinite(a).all()


# --------------------------------------------------------------------------------------- item 7
def _rewrite_config(saved: Path, edit) -> None:
    path = saved / "config.json"
    config = json.loads(path.read_text())
    edit(config["policy"])
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("drop", "field"),
    [
        (lambda p: p.pop("schedule"), "policy.schedule.num_train_timesteps"),
        (lambda p: p.pop("horizon"), "policy.horizon"),
        (lambda p: p["schedule"].pop("prediction_type"), "policy.schedule.prediction_type"),
        (lambda p: p["unet"].pop("down_dims"), "policy.unet.down_dims"),
    ],
)
def test_checkpoint_config_missing_architecture_fields_is_refused(saved, drop, field):
    _rewrite_config(saved, drop)
    with pytest.raises(
        CheckpointError, match=rf"lacks required field\(s\) {field}.*schema_version 1 requires"
    ):
        load_policy(saved)


@pytest.mark.parametrize("field", ["crop_shape", "image_mean", "pool"])
def test_an_image_checkpoint_missing_its_encoder_or_pixel_transform_is_refused(tmp_path, field):
    policy = DiffusionPolicy(image_config(crop_shape=None, image_mean=(0.485, 0.456, 0.406)))
    policy.normalizer.fit({"obs": torch.rand(20, 2) * 512, "action": torch.rand(20, 2) * 512})
    saved = save_policy(policy.eval(), tmp_path / "image")
    assert load_policy(saved).config.vision == policy.config.vision
    _rewrite_config(saved, lambda p: p["vision"].pop(field))  # the default would load silently
    with pytest.raises(CheckpointError, match=rf"lacks required field\(s\) policy\.vision\.{field};"):
        load_policy(saved)


def test_checkpoint_without_sampler_section_still_loads(saved):
    _rewrite_config(saved, lambda p: p.pop("sampler"))  # an inference choice: defaults are fine
    assert load_policy(saved).config.sampler.algorithm == "sequential"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("horizon", "sixteen", r"policy\.horizon must be int, got str 'sixteen'"),
        ("unet.down_dims", [16, "32"], r"policy\.unet\.down_dims must be tuple\[int, \.\.\.\]"),
        ("schedule.beta_end", "0.02", r"policy\.schedule\.beta_end must be float, got str"),
        ("unet.cond_predict_scale", 1, r"policy\.unet\.cond_predict_scale must be bool, got int"),
    ],
)
def test_checkpoint_config_type_errors_name_the_field(saved, field, value, message):
    def edit(policy):
        node = policy
        *parents, leaf = field.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value

    _rewrite_config(saved, edit)
    with pytest.raises(CheckpointError, match=message):
        load_policy(saved)


def test_policy_config_from_dict_names_the_field():
    with pytest.raises(ValueError, match=r"policy\.horizon must be int, got str"):
        PolicyConfig.from_dict({"horizon": "sixteen"})


def test_pickle_renamed_config_json_is_refused_clearly(saved):
    (saved / "config.json").write_bytes(pickle.dumps({"policy": object.__name__}, protocol=4))
    with pytest.raises(CheckpointError, match=r"config.json is not a JSON text file .*pickle"):
        load_policy(saved)


# --------------------------------------------------------------------------------------- item 9
def test_reset_to_state_refuses_non_representable_angles():
    env = gym.make(ENV_ID, obs_type="state")
    with pytest.raises(ValueError, match=r"angle 1e\+30 rad is not representable"):
        env.reset(options={"reset_to_state": [256, 256, 300, 300, 1e30]})
    obs, info = env.reset(options={"reset_to_state": [256, 256, 300, 300, 1000.0], "legacy": False})
    assert obs[4] == pytest.approx(1000.0 % (2 * np.pi), abs=1e-12)
    assert info["block_pose"][2] == 1000.0


def test_poisoned_auto_window_cache_is_remeasured(tiny_policy, tmp_path, monkeypatch):
    monkeypatch.setenv("PARAPOLICY_CACHE_DIR", str(tmp_path))
    sizes = (1, 2)
    auto_window.denoiser_cost_curve(tiny_policy, sizes, repeats=1)
    cache = json.loads(auto_window.cache_path().read_text())
    (key,) = cache
    cache[key]["ms_per_call"] = {"1": float("nan"), "2": -1.0}
    auto_window.cache_path().write_text(json.dumps(cache))
    calls = []
    monkeypatch.setattr(
        auto_window, "measure_denoiser_ms", lambda p, rows, repeats: calls.append(rows) or 1.0 + rows
    )
    assert auto_window.denoiser_cost_curve(tiny_policy, sizes, repeats=1) == {1: 2.0, 2: 3.0}
    assert calls == [1, 2]
    assert json.loads(auto_window.cache_path().read_text())[key]["ms_per_call"] == {"1": 2.0, "2": 3.0}


def test_shipped_policy_still_loads():
    policy = load_policy(ROOT / "assets" / "default_policy")
    assert policy.config.horizon == 16


def test_a_policy_path_that_is_no_checkpoint_says_what_is_accepted(tmp_path):
    from parapolicy.policy.control.run_support import open_policy

    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        open_policy(str(notes), "cpu")
    message = str(info.value)
    assert "notes.txt" in message and "is a file" in message and ".." not in message
    assert "LeRobot diffusion directory" in message and "Diffusion Policy .ckpt file" in message
