"""Diffusion Policy's transformer policy (``DiffusionTransformerLowdimPolicy``) in, and the
`TransformerDenoiser` it loads onto, against Diffusion Policy's own ``TransformerForDiffusion``.

The checkpoints and golden values come from `tests/artifacts/make_diffusion_policy_transformer_ckpt.py`,
which runs Diffusion Policy's network itself (from a checkout of its repository) and writes the
``.ckpt`` files as its workspace does (OmegaConf config, dill pickle). Two variants: ``causal`` (the
PushT recipe: causal attention, an MLP over the memory) and ``encoder`` (full attention, a transformer
encoder over the memory).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from parapolicy.policy.config import PolicyConfig, SamplerConfig, TransformerConfig
from parapolicy.policy.export import ExportConfig, run_export
from parapolicy.policy.model.checkpoint import CheckpointError
from parapolicy.policy.model.diffusion_policy_payload import read_payload
from parapolicy.policy.model.policy import DiffusionPolicy
from parapolicy.policy.model.pretrained import load_policy

ARTIFACTS = Path(__file__).parent / "artifacts"
VARIANTS = ["causal", "encoder"]


def ckpt(variant: str) -> Path:
    return ARTIFACTS / f"diffusion_policy_transformer_{variant}.ckpt"


def golden(variant: str) -> dict[str, torch.Tensor]:
    return load_file(str(ARTIFACTS / f"diffusion_policy_transformer_{variant}_golden.safetensors"))


def test_the_config_comes_from_the_checkpoint():
    cfg = load_policy(ckpt("causal")).config
    assert (cfg.network, cfg.obs_type, cfg.obs_dim, cfg.action_dim, cfg.horizon) == (
        "transformer",
        "state",
        20,
        2,
        16,
    )
    assert cfg.transformer == TransformerConfig(
        n_layer=2, n_head=4, n_emb=16, p_drop_emb=0.0, p_drop_attn=0.01, causal_attn=True, n_cond_layers=0
    )
    assert (cfg.sampler.kind, cfg.sampler.num_inference_steps, cfg.n_action_steps) == ("ddpm", 100, 8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_network_is_diffusion_policys_transformer(variant):
    g = golden(variant)
    policy = load_policy(ckpt(variant))
    with torch.no_grad():
        cond = policy.condition(policy.validate_observation({"obs": g["obs"]}, history=True))
        out = policy.network(g["x_T"], g["t"], cond)
    torch.testing.assert_close(out, g["eps"], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ddim_actions_equal_diffusion_policys_own_predict_action(variant):
    g = golden(variant)
    policy = load_policy(ckpt(variant), sampler=SamplerConfig(kind="ddim", num_inference_steps=10))
    with torch.no_grad():
        ours = policy.predict_action_chunk({"obs": g["obs"]}, noise=(g["x_T"], torch.zeros(10, 3, 16, 2)))
    torch.testing.assert_close(ours.action, g["actions"], atol=1e-3, rtol=1e-5)  # env units (hundreds)


@pytest.mark.parametrize("variant", VARIANTS)
def test_paraddpm_and_the_trace_give_the_sequential_sample(variant):
    g = torch.Generator().manual_seed(6)
    obs = {"obs": 20 + torch.rand(1, 2, 20, generator=g) * 470}
    noise = (torch.randn(1, 16, 2, generator=g), torch.randn(100, 1, 16, 2, generator=g))
    seq = load_policy(ckpt(variant))
    para = load_policy(
        ckpt(variant), sampler=SamplerConfig(algorithm="picard", window=16, tol=1e-6, update="parareal")
    )
    with torch.no_grad():
        a = seq.predict_action_chunk(obs, noise=noise).plan
        b = para.predict_action_chunk(obs, noise=noise)
        seq.set_compile("trace")
        c = seq.predict_action_chunk(obs, noise=noise).plan
    assert seq.compiled_as == "trace"  # no convolutions to pack: one trace, not the CPU graphs
    assert b.result.iterations < 100
    torch.testing.assert_close(b.plan, a, atol=1e-3, rtol=0)
    torch.testing.assert_close(c, a, atol=1e-4, rtol=0)


def test_it_converts_to_this_projects_format_but_not_to_lerobots(tmp_path):
    out = run_export(
        ExportConfig(policy_path=str(ckpt("causal")), format="parapolicy", output_path=str(tmp_path / "a"))
    )
    saved = json.loads((out / "config.json").read_text())["policy"]
    assert saved["network"] == "transformer" and saved["transformer"]["n_emb"] == 16
    a, b = load_policy(ckpt("causal")), load_policy(out)
    for (name, x), (_, y) in zip(a.network.state_dict().items(), b.network.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    torch.testing.assert_close(b.network.mask, a.network.mask, atol=0, rtol=0)  # rebuilt from the config
    with pytest.raises(ValueError, match="LeRobot's diffusion policy is a U-Net"):
        run_export(
            ExportConfig(policy_path=str(ckpt("causal")), format="lerobot", output_path=str(tmp_path / "b"))
        )
    assert not (tmp_path / "b").exists()


def test_a_saved_transformer_config_without_its_sizes_is_refused(tmp_path):
    out = run_export(
        ExportConfig(policy_path=str(ckpt("causal")), format="parapolicy", output_path=str(tmp_path / "a"))
    )
    doc = json.loads((out / "config.json").read_text())
    del doc["policy"]["transformer"]["n_head"]  # no weight shape depends on it: only the check sees it
    (out / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"lacks required field\(s\) policy\.transformer\.n_head"):
        load_policy(out)
    del doc["policy"]["transformer"]
    (out / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"lacks required field\(s\) policy\.transformer\.n_layer"):
        load_policy(out)


def test_an_image_transformer_takes_one_token_per_step_of_state_and_image_features():
    cfg = PolicyConfig(network="transformer", obs_type="pixels_agent_pos", obs_dim=2)
    net = DiffusionPolicy(cfg).network.unet
    assert net.cond_obs_emb.in_features == 2 + 64 and net.n_obs_steps == 2
    with pytest.raises(ValueError, match="divisible by n_head"):
        TransformerConfig(n_emb=30, n_head=4)


def write(tmp_path: Path, cfg_edit=None, state_edit=None) -> Path:
    """The causal checkpoint's data, edited, as torch.save writes it (plain dicts)."""
    payload = read_payload(ckpt("causal"))
    cfg = json.loads(json.dumps(payload.cfg))
    state = dict(payload.state_dict)
    if cfg_edit:
        cfg_edit(cfg)
    if state_edit:
        state_edit(state)
    path = tmp_path / "edited.ckpt"
    torch.save({"cfg": cfg, "state_dicts": {"model": state}, "pickles": {}}, path)
    return path


def _model(key, value):
    return lambda cfg: cfg["policy"]["model"].__setitem__(key, value)


@pytest.mark.parametrize(
    ("cfg_edit", "state_edit", "message"),
    [
        (_model("time_as_cond", False), None, "encoder-only variant"),
        (_model("cond_dim", 0), None, "model.cond_dim=0"),
        (lambda c: c["policy"].__setitem__("obs_as_cond", False), None, "policy.obs_as_cond=False"),
        (
            lambda c: c["policy"].__setitem__("pred_action_steps_only", True),
            None,
            "pred_action_steps_only=True",
        ),
        (_model("n_head", 3), None, "divisible by n_head"),
        (None, lambda s: s.__setitem__("model.mask", torch.zeros(16, 16)), "model.mask is different"),
        (None, lambda s: s.pop("model.memory_mask"), "model.memory_mask is missing"),
        (_model("causal_attn", False), None, "model.mask is set but model.causal_attn is False"),
        (None, lambda s: s.pop("model.head.bias"), "head.bias"),
    ],
    ids=[
        "encoder-only",
        "no-obs-cond",
        "inpainting",
        "action-steps-only",
        "heads",
        "mask",
        "no-memory-mask",
        "mask-without-causal",
        "missing-tensor",
    ],  # fmt: skip
)
def test_what_cannot_be_represented_is_refused_by_name(tmp_path, cfg_edit, state_edit, message):
    path = write(tmp_path, cfg_edit, state_edit)
    with pytest.raises(CheckpointError) as info:
        load_policy(path)
    assert str(path) in str(info.value) and message in str(info.value)
