"""The data -> training -> evaluation console commands end to end, as a user runs them, with tiny settings.

`parapolicy-collect` writes a store, `parapolicy-train` trains a tiny policy on it, `parapolicy-eval`
evaluates that checkpoint; each in its own process through its Hydra entry point, in a temporary folder.
(`parapolicy-demo`, `-bench-env`: tests/test_scripts_smoke.py; `-bench`: tests/test_bench_sampler.py;
`-compare`, `-profile`: tests/test_compare.py through their modules.)
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import console_script

from parapolicy.policy.data.replay_store import ReplayStore
from parapolicy.policy.model.pretrained import load_policy

TINY_POLICY = ["policy.unet.down_dims=[16,32]", "policy.unet.diffusion_step_embed_dim=16"]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = console_script(args[0])
    proc = subprocess.run([exe, *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=300)
    return proc


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run collect, train and eval once; the tests below read what they wrote."""
    root = tmp_path_factory.mktemp("console")
    procs = {
        "collect": run(
            [
                "parapolicy-collect",
                "n_episodes=2",
                "workers=1",
                "keep=all",
                "max_steps=40",
                "progress=false",
                f"hydra.run.dir={root / 'collect'}",
            ],
            root,
        )
    }
    store = root / "collect" / "pusht_expert.zarr"
    procs["train"] = run(
        [
            "parapolicy-train",
            f"dataset_path={store}",
            *TINY_POLICY,
            "num_steps=3",
            "batch_size=4",
            "log_every=1",
            "val_every=0",
            "progress=false",
            f"hydra.run.dir={root / 'train'}",
        ],
        root,
    )
    procs["eval"] = run(
        [
            "parapolicy-eval",
            f"policy_path={root / 'train' / 'checkpoints' / 'last' / 'pretrained_model'}",
            "sampler.kind=ddim",
            "sampler.num_inference_steps=4",
            "eval.n_episodes=2",
            "eval.batch_size=2",
            "eval.max_steps=8",
            "eval.max_videos=0",
            "eval.progress=false",
            f"hydra.run.dir={root / 'eval'}",
        ],
        root,
    )
    return root, procs


def test_collect_writes_a_store(pipeline):
    root, procs = pipeline
    assert procs["collect"].returncode == 0, procs["collect"].stderr
    assert "kept 2 of 2 episodes" in procs["collect"].stdout
    info = json.loads((root / "collect" / "collect_info.json").read_text())
    assert info["episodes_kept"] == 2
    with ReplayStore.open(root / "collect" / "pusht_expert.zarr", keys=("state", "action")) as store:
        assert store.n_episodes == 2 and store.episode_seeds == [0, 1]
        assert 2 <= store.n_steps <= 80  # max_steps=40 per episode


def test_train_writes_a_loadable_checkpoint_of_the_tiny_policy(pipeline):
    root, procs = pipeline
    assert procs["train"].returncode == 0, procs["train"].stderr
    run_dir = root / "train"
    assert (
        f"final checkpoint: {run_dir / 'checkpoints' / '000003' / 'pretrained_model'}"
        in procs["train"].stdout
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert json.loads((run_dir / "train_config.json").read_text())["num_steps"] == 3
    policy = load_policy(run_dir / "checkpoints" / "last" / "pretrained_model")
    assert policy.config.unet.down_dims == (16, 32)  # the overrides reached the policy
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def test_eval_scores_the_checkpoint(pipeline):
    root, procs = pipeline
    assert procs["eval"].returncode == 0, procs["eval"].stderr
    assert "mean_score" in procs["eval"].stdout and "over 2 episodes" in procs["eval"].stdout
    info = json.loads((root / "eval" / "eval_info.json").read_text())
    assert info["aggregated"]["n_episodes"] == 2 and len(info["per_episode"]) == 2
    assert info["run"]["sampler"]["kind"] == "ddim" and info["run"]["sampler"]["num_inference_steps"] == 4
    assert all(e["n_steps"] <= 8 for e in info["per_episode"])


@pytest.mark.parametrize(
    ("command", "words"), [("collect", "kept 2 of 2 episodes"), ("eval", "over 2 episodes")]
)
def test_the_job_log_keeps_what_the_command_printed(pipeline, command, words):
    root, procs = pipeline
    log = (root / command / f"{command}.log").read_text()
    summary = next(line for line in procs[command].stdout.splitlines() if words in line)
    assert summary in log.splitlines()


def test_every_console_script_is_installed_and_resolves_to_its_main():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = pyproject["project"]["scripts"]
    installed = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name in declared}
    assert set(installed) == set(declared)
    for name, target in declared.items():
        assert installed[name].value == target
        assert callable(installed[name].load()), name
        console_script(name)  # the executable exists
