"""The evaluation job (`policy/eval.py`) and its CLI (`scripts/eval.py`)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from parapolicy.policy.compare import CompareConfig
from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.control.evaluation import EvalConfig, episode_generator
from parapolicy.policy.control.run_support import PolicyRunConfig
from parapolicy.policy.eval import EvalJobConfig, format_eval, run_eval
from parapolicy.policy.model.checkpoint import CheckpointError
from parapolicy.policy.profile import ProfileConfig


def job(checkpoint, task: str) -> EvalJobConfig:
    ec = EvalConfig(n_episodes=2, batch_size=2, max_steps=10, max_videos=0, progress=False)
    return EvalJobConfig(
        policy_path=str(checkpoint), task=task, sampler=SamplerConfig(num_inference_steps=5), eval=ec
    )


def test_run_eval_writes_eval_info_and_both_tasks_agree(checkpoint, tmp_path):
    a = run_eval(job(checkpoint, "pusht"), tmp_path / "a")
    b = run_eval(job(checkpoint, "gym_pusht"), tmp_path / "b")
    on_disk = json.loads((tmp_path / "a" / "eval_info.json").read_text())
    assert set(on_disk) == {"per_episode", "aggregated", "run"} and on_disk["run"]["task"] == "pusht"
    assert [e["seed"] for e in a["per_episode"]] == [100000, 100001]
    for ea, eb in zip(a["per_episode"], b["per_episode"], strict=True):
        assert (ea["n_steps"], ea["success"]) == (eb["n_steps"], eb["success"])
        assert eb["max_reward"] == pytest.approx(ea["max_reward"], abs=1e-6)
    assert "over 2 episodes" in format_eval(a)


@pytest.mark.parametrize("job", [EvalJobConfig, CompareConfig, ProfileConfig])
def test_every_rollout_job_refuses_an_unknown_task_or_compile_mode(job):
    """The three rollout jobs share `PolicyRunConfig` and its checks."""
    assert issubclass(job, PolicyRunConfig)
    with pytest.raises(ValueError, match="task must be one of .*'mujoco'"):
        job(task="mujoco")
    with pytest.raises(ValueError, match="compile mode must be one of .*'jit'"):
        job(compile="jit")
    with pytest.raises(ValueError, match="compile=cuda_graph needs a CUDA device, got device='cpu'"):
        job(compile="cuda_graph")


def test_run_eval_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot load policy_path=.*nowhere.*does not exist. Point"):
        run_eval(EvalJobConfig(policy_path=str(tmp_path / "nowhere")), tmp_path / "run")


def test_unknown_task_fails_at_compose_time(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        EvalJobConfig(task="mujoco")
    proc = subprocess.run(
        [sys.executable, "-m", "parapolicy.scripts.eval", "task=mujoco", f"hydra.run.dir={tmp_path / 'r'}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "task must be one of" in proc.stderr + proc.stdout


def test_a_traced_denoiser_plays_the_same_episodes_as_the_eager_one(checkpoint, tmp_path):
    eager = run_eval(dataclasses.replace(job(checkpoint, "pusht"), compile="none"), tmp_path / "eager")
    traced = run_eval(job(checkpoint, "pusht"), tmp_path / "traced")  # the default: trace
    assert job(checkpoint, "pusht").compile == "trace"
    for a, b in zip(eager["per_episode"], traced["per_episode"], strict=True):
        # the CPU graphs compute the eager network within float32 rounding (cpu_graphs.CpuGraphs)
        assert (a["n_steps"], a["success"]) == (b["n_steps"], b["success"])
        assert a["max_reward"] == pytest.approx(b["max_reward"], abs=1e-5)
    with pytest.raises(ValueError, match="compile mode must be one of"):
        EvalJobConfig(compile="jit")


def test_each_noise_seed_and_episode_seed_has_its_own_noise():
    """noise_seed * 1,000,003 + episode seed (golden): run 1's seed s is not run 0's seed s + 1."""
    assert episode_generator(1, 100000).initial_seed() == 1_000_003 + 100000
    assert episode_generator(0, 100000).initial_seed() == 100000
    draw = [torch.randn(4, generator=episode_generator(n, s)) for n, s in ((1, 100000), (0, 100001))]
    assert not torch.equal(*draw)


@pytest.mark.parametrize(("share", "accepted"), [(0.0, True), (1.0, True), (-0.5, False), (1.5, False)])
def test_the_rejected_share_limit_is_a_share(share, accepted):
    if accepted:
        assert EvalJobConfig(max_rejected_share=share).max_rejected_share == share
    else:
        with pytest.raises(ValueError, match=rf"max_rejected_share must be in \[0, 1\], got {share}"):
            EvalJobConfig(max_rejected_share=share)


def test_the_eval_summary_line_is_golden():
    agg = {
        "mean_score": 0.9876,
        "pc_success": 96.0,
        "pc_success_ci95": (86.5, 98.9),
        "n_episodes": 50,
        "eval_s": 61.4,
    }
    assert format_eval({"aggregated": agg}) == (
        "mean_score 0.988 | success 96.0% (95% CI 86.5-98.9) over 50 episodes | 61 s"
    )
