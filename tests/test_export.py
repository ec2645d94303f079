"""`parapolicy-export`: a parapolicy checkpoint out as a LeRobot directory and back, through the CLI; a
Diffusion Policy checkpoint converted to a parapolicy directory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import console_script

from parapolicy.policy.export import ExportConfig, run_export
from parapolicy.policy.model.checkpoint import read_metadata
from parapolicy.policy.model.pretrained import load_policy, save_policy


def export(args: list[str], cwd) -> subprocess.CompletedProcess:
    exe = console_script("parapolicy-export")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_exports_a_checkpoint_that_loads_back_identically(tiny_policy, tmp_path):
    save_policy(tiny_policy, tmp_path / "ckpt")
    out = tmp_path / "lerobot"
    args = [
        f"policy_path={tmp_path / 'ckpt'}",
        "format=lerobot",
        f"output_path={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = export(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote lerobot checkpoint {out}" in proc.stdout
    loaded = load_policy(out)
    obs = {"obs": torch.rand(2, 2, 20, generator=torch.Generator().manual_seed(0)) * 512}
    a = tiny_policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(1))
    b = loaded.predict_action_chunk(obs, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.plan, b.plan)
    again = export(args, tmp_path)  # never overwrites
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr


def test_a_diffusion_policy_ckpt_converts_once_to_a_parapolicy_directory(tmp_path):
    ckpt = Path(__file__).parent / "artifacts" / "diffusion_policy_lowdim_tiny.ckpt"
    out = run_export(
        ExportConfig(policy_path=str(ckpt), format="parapolicy", output_path=str(tmp_path / "p"))
    )
    assert read_metadata(out)["exported_from"] == str(ckpt)
    obs = {"obs": torch.rand(2, 2, 20, generator=torch.Generator().manual_seed(0)) * 512}
    a = load_policy(ckpt).predict_action_chunk(obs, generator=torch.Generator().manual_seed(1))
    b = load_policy(out).predict_action_chunk(obs, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.plan, b.plan)


def test_cli_refuses_unknown_formats_and_bad_inputs(tmp_path):
    proc = export([f"policy_path={tmp_path}", "format=onnx", f"output_path={tmp_path / 'x'}"], tmp_path)
    assert proc.returncode != 0 and "format must be one of ('lerobot', 'parapolicy')" in proc.stderr
    with pytest.raises(Exception, match="does not exist"):
        run_export(ExportConfig(policy_path=str(tmp_path / "nope"), output_path=str(tmp_path / "y")))
    assert not (tmp_path / "y").exists()


def test_compare_runs_a_lerobot_directory(tiny_policy, tmp_path):
    """A LeRobot (low-dim) directory runs in parapolicy-compare like a parapolicy checkpoint."""
    from parapolicy.policy.compare import CompareConfig, SamplerEntry, run_compare
    from parapolicy.policy.config import SamplerConfig
    from parapolicy.policy.control.evaluation import EvalConfig
    from parapolicy.policy.model.lerobot_format import save_lerobot_policy

    path = save_lerobot_policy(tiny_policy, tmp_path / "lerobot")
    samplers = {
        "sequential": SamplerEntry(SamplerConfig(num_inference_steps=10)),
        "paraddpm": SamplerEntry(
            SamplerConfig(num_inference_steps=10, algorithm="picard", window=4, tol=1e-6)
        ),
    }
    cfg = CompareConfig(
        policy_path=str(path),
        samplers=samplers,
        run=["sequential", "paraddpm"],
        modes=["frozen"],
        realtime_episodes=0,
        eval=EvalConfig(n_episodes=2, batch_size=2, max_steps=16, max_videos=0, progress=False),
    )
    data = run_compare(cfg, tmp_path / "run")
    check = data["checks"]["frozen_score_within_tolerance"]
    assert check["ok"] and abs(check["diff_vs_baseline"]["paraddpm"]) < 1e-4
    assert (tmp_path / "run" / "compare.json").exists()


def test_the_lerobot_state_width_is_the_one_asked_for(tiny_policy, tmp_path):
    """state_dim splits the low-dim observation: the last 4 of 20 dims as observation.state here."""
    src = save_policy(tiny_policy, tmp_path / "src")
    cfg = ExportConfig(policy_path=str(src), format="lerobot", output_path=str(tmp_path / "a"), state_dim=4)
    out = run_export(cfg)
    features = json.loads((out / "config.json").read_text())["input_features"]
    assert features["observation.state"]["shape"] == [4]
    assert features["observation.environment_state"]["shape"] == [16]
    with pytest.raises(ValueError, match="state_dim must be >= 1, got 0"):
        ExportConfig(policy_path=str(src), output_path=str(tmp_path / "b"), state_dim=0)
