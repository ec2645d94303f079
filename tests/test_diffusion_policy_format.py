"""Diffusion Policy low-dim ``.ckpt`` files in: read as data, mapped strictly, and sampled as Diffusion
Policy's own `predict_action` samples them (against diffusers' scheduler)."""

from __future__ import annotations

import pathlib
import sys
import types
from pathlib import Path

import pytest
import torch
from diffusion_policy_mirror import ddim_sample

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.model.checkpoint import CheckpointError
from parapolicy.policy.model.diffusion_policy_payload import read_payload
from parapolicy.policy.model.networks import ConditionalUnet1d
from parapolicy.policy.model.pretrained import load_policy

# Written by tests/artifacts/make_diffusion_policy_ckpt.py exactly as Diffusion Policy's workspace writes
# one (OmegaConf config, dill pickle), at a tiny network size.
CKPT = Path(__file__).parent / "artifacts" / "diffusion_policy_lowdim_tiny.ckpt"


@pytest.fixture(scope="module")
def payload():
    return read_payload(CKPT)


def test_the_checkpoint_is_read_as_data_with_its_resolved_config(payload):
    assert payload.weights == "ema_model"  # the run kept EMA weights: those are the policy's
    assert payload.cfg["policy"]["model"]["down_dims"] == [8, 16]
    assert payload.cfg["policy"]["noise_scheduler"]["beta_schedule"] == "squaredcos_cap_v2"
    assert payload.cfg["training"]["use_ema"] is True
    policy = load_policy(CKPT)
    cfg = policy.config
    assert (cfg.obs_dim, cfg.action_dim, cfg.horizon) == (20, 2, 16)
    assert (cfg.n_obs_steps, cfg.n_action_steps) == (2, 8)
    assert (cfg.unet.down_dims, cfg.unet.diffusion_step_embed_dim, cfg.unet.kernel_size) == ((8, 16), 8, 5)
    assert (cfg.sampler.kind, cfg.sampler.num_inference_steps) == ("ddpm", 100)
    assert cfg.schedule.num_train_timesteps == 100
    for name, value in policy.network.state_dict().items():
        assert torch.equal(value, payload.state_dict[f"model.{name}"]), name
    for ours, theirs in (("obs", "obs"), ("action", "action")):
        stats = policy.normalizer.get_stats(ours)
        for name, key in (("scale", "scale"), ("offset", "offset"), ("min", "input_stats.min")):
            assert torch.equal(stats[name], payload.state_dict[f"normalizer.params_dict.{theirs}.{key}"])


def diffusion_policy_predict_action(
    payload, obs: torch.Tensor, x_T: torch.Tensor, steps: int
) -> torch.Tensor:
    """Diffusion Policy's `DiffusionUnetLowdimPolicy.predict_action` (global conditioning, oa_step_convention)
    with diffusers' DDIM scheduler, written from its source: (B, Ta, Da) actions."""
    pytest.importorskip("diffusers")
    cfg, sd = payload.cfg["policy"], payload.state_dict
    m = cfg["model"]
    net = ConditionalUnet1d(
        input_dim=m["input_dim"], global_cond_dim=m["global_cond_dim"],
        diffusion_step_embed_dim=m["diffusion_step_embed_dim"], down_dims=tuple(m["down_dims"]),
        kernel_size=m["kernel_size"], n_groups=m["n_groups"], cond_predict_scale=m["cond_predict_scale"],
    )  # fmt: skip
    net.load_state_dict({k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")})
    To, Ta = cfg["n_obs_steps"], cfg["n_action_steps"]
    n = "normalizer.params_dict."
    nobs = obs * sd[f"{n}obs.scale"] + sd[f"{n}obs.offset"]  # (B, To, Do)
    global_cond = nobs[:, :To].reshape(obs.shape[0], -1)
    denoise = lambda x, t: net(x, t.expand(obs.shape[0]), global_cond)  # noqa: E731
    trajectory = ddim_sample(denoise, x_T, cfg["noise_scheduler"], steps)
    action_pred = (trajectory - sd[f"{n}action.offset"]) / sd[f"{n}action.scale"]
    return action_pred[:, To - 1 : To - 1 + Ta]


def test_ddim_actions_equal_diffusion_policys_own_predict_action(payload):
    g = torch.Generator().manual_seed(3)
    obs = 20 + torch.rand(4, 2, 20, generator=g) * 470  # (B, To, Do) in env units
    x_T = torch.randn(4, 16, 2, generator=g)
    theirs = diffusion_policy_predict_action(payload, obs, x_T, steps=10)
    policy = load_policy(CKPT, sampler=SamplerConfig(kind="ddim", num_inference_steps=10))
    with torch.no_grad():
        ours = policy.predict_action_chunk({"obs": obs}, noise=(x_T, torch.zeros(10, 4, 16, 2))).action
    assert ours.shape == theirs.shape == (4, 8, 2)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)  # env units (hundreds of px)


def test_paraddpm_on_a_diffusion_policy_checkpoint_is_its_sequential_sample():
    g = torch.Generator().manual_seed(4)
    obs = {"obs": 20 + torch.rand(2, 2, 20, generator=g) * 470}
    noise = (torch.randn(2, 16, 2, generator=g), torch.randn(100, 2, 16, 2, generator=g))
    seq = load_policy(CKPT)
    picard = SamplerConfig(algorithm="picard", window=16, tol=1e-6, update="parareal")
    para = load_policy(CKPT, sampler=picard)
    with torch.no_grad():
        a, b = seq.predict_action_chunk(obs, noise=noise), para.predict_action_chunk(obs, noise=noise)
    assert b.result.iterations < 100
    torch.testing.assert_close(b.plan, a.plan, atol=1e-3, rtol=0)


def write(tmp_path: Path, payload, edit=None, cfg_edit=None) -> Path:
    """A copy of the checkpoint's data as torch.save writes it (plain dicts: no OmegaConf needed)."""
    cfg = {**payload.cfg, "policy": {**payload.cfg["policy"]}}
    cfg["policy"]["model"] = {**cfg["policy"]["model"]}
    cfg["policy"]["noise_scheduler"] = {**cfg["policy"]["noise_scheduler"]}
    if cfg_edit:
        cfg_edit(cfg)
    state = dict(payload.state_dict)
    if edit:
        edit(state)
    path = tmp_path / "edited.ckpt"
    torch.save({"cfg": cfg, "state_dicts": {"model": state}, "pickles": {}}, path)
    return path


def _set(section: str | None, key: str, value):
    """A config edit: set ``key`` at the top (None), in ``policy``, or in a section of ``policy``."""

    def edit(cfg):
        target = cfg if section is None else cfg["policy"]
        if section not in (None, "policy"):
            target = target[section]
        target[key] = value

    return edit


# a Diffusion Policy class this project does not map (its video policy)
VIDEO_POLICY = "diffusion_policy.policy.diffusion_unet_video_policy.DiffusionUnetVideoPolicy"


@pytest.mark.parametrize(
    ("cfg_edit", "message"),
    [
        (_set("policy", "_target_", VIDEO_POLICY), "DiffusionUnetVideoPolicy' is not supported"),
        (_set("policy", "obs_as_global_cond", False), r"policy.obs_as_global_cond=False is not supported"),
        (_set("policy", "pred_action_steps_only", True), "pred_action_steps_only=True is not supported"),
        (_set("policy", "oa_step_convention", False), "oa_step_convention=False is not supported"),
        (_set(None, "n_latency_steps", 2), "n_latency_steps=2 is not supported"),
        (_set("noise_scheduler", "_target_", "diffusers.Euler"), "'diffusers.Euler' is not supported"),
        (_set("noise_scheduler", "variance_type", "fixed_small_log"), "variance_type 'fixed_small_log'"),
        (_set("model", "n_groups", 4), "n_groups must be 8"),
        (_set("model", "global_cond_dim", 20), "do not match"),
        (_set("policy", "horizon", "${horizon}"), "unresolved interpolation"),
    ],
)  # fmt: skip
def test_configs_it_cannot_represent_are_refused_by_name(payload, tmp_path, cfg_edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_policy(write(tmp_path, payload, cfg_edit=cfg_edit))


@pytest.mark.parametrize("scheduler", ["DDPMScheduler", "DDIMScheduler"])
def test_scheduler_settings_a_config_leaves_out_are_diffusers_defaults(payload, tmp_path, scheduler):
    """The checkpoint's num_inference_steps is kept; an omitted scheduler key means diffusers' default."""
    diffusers = pytest.importorskip("diffusers")

    def edit(cfg):
        cfg["policy"]["num_inference_steps"] = 16
        sched = cfg["policy"]["noise_scheduler"]
        sched["_target_"] = f"diffusers.schedulers.scheduling_{scheduler[:4].lower()}.{scheduler}"
        for key in ("clip_sample", "prediction_type", "set_alpha_to_one", "steps_offset", "timestep_spacing"):
            sched.pop(key, None)

    cfg = load_policy(write(tmp_path, payload, cfg_edit=edit)).config
    default = getattr(diffusers, scheduler)().config
    assert cfg.sampler.num_inference_steps == 16
    assert cfg.schedule.prediction_type == default.prediction_type
    assert cfg.schedule.clip_sample == default.clip_sample
    assert cfg.schedule.clip_sample_range == default.clip_sample_range
    assert cfg.sampler.steps_offset == default.steps_offset
    assert cfg.sampler.timestep_spacing == default.get("timestep_spacing", "leading")
    if scheduler == "DDIMScheduler":
        assert cfg.sampler.set_alpha_to_one == default.set_alpha_to_one


def test_missing_extra_and_misshaped_tensors_are_refused(payload, tmp_path):
    cases = [
        (lambda s: s.pop("model.final_conv.1.weight"), r"missing keys \['final_conv.1.weight'\]"),
        (lambda s: s.update({"obs_encoder.w": torch.zeros(1)}), r"does not use: \['obs_encoder.w'\]"),
        (lambda s: s.update({"model.final_conv.1.bias": torch.zeros(3)}), "mismatch: final_conv.1.bias"),
        (lambda s: s.pop("normalizer.params_dict.action.scale"), r"scale must have shape \(2,\), missing"),
        (lambda s: s["model.final_conv.1.bias"].fill_(float("nan")), "non-finite"),
    ]  # fmt: skip
    for edit, message in cases:
        state_edit = lambda s, e=edit: (s.update({k: v.clone() for k, v in s.items()}), e(s))  # noqa: E731
        with pytest.raises(CheckpointError, match=message):
            load_policy(write(tmp_path, payload, edit=state_edit))


class _RunsCode:
    """Unpickling this would create a file: a checkpoint that carries code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_code_is_refused_without_running_and_other_archives_are_named(payload, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    data = {"cfg": payload.cfg, "state_dicts": {"model": payload.state_dict}, "x": _RunsCode(marker)}
    torch.save(data, path)
    with pytest.raises(
        CheckpointError, match="it pickles getattr, which is not data; refused without running"
    ):
        load_policy(path)
    assert not marker.exists()
    weights_only = tmp_path / "weights.ckpt"
    torch.save(payload.state_dict, weights_only)
    with pytest.raises(CheckpointError, match="not a workspace checkpoint"):
        load_policy(weights_only)


def test_a_truncated_checkpoint_is_named_unreadable_not_a_pickle(tmp_path):
    data = CKPT.read_bytes()
    for share in (0.5, 0.98):  # a copy cut short: its zip directory is gone
        path = tmp_path / f"cut_{share}.ckpt"
        path.write_bytes(data[: int(len(data) * share)])
        with pytest.raises(CheckpointError, match=r"not a readable torch archive \(truncated or corrupt\?\)"):
            load_policy(path)


def test_a_dill_type_other_than_a_builtin_container_is_refused(payload, tmp_path, monkeypatch):
    def _load_type(name: str) -> type:  # pickled as dill's own global
        raise AssertionError("never called")

    fake = types.ModuleType("dill._dill")
    _load_type.__module__, _load_type.__qualname__, fake._load_type = "dill._dill", "_load_type", _load_type
    monkeypatch.setitem(sys.modules, "dill", types.ModuleType("dill"))  # dill itself is not needed
    monkeypatch.setitem(sys.modules, "dill._dill", fake)

    class DillType:
        def __reduce__(self):
            return (_load_type, ("FunctionType",))

    path = tmp_path / "dill_type.ckpt"
    torch.save({"cfg": payload.cfg, "state_dicts": {"model": payload.state_dict}, "x": DillType()}, path)
    with pytest.raises(CheckpointError, match="it pickles dill type 'FunctionType', which is not data"):
        load_policy(path)
