"""Reliability of the commands (issue 15, items 1, 4, 7 and 8): run folders are never reused, a run the
output guard could not trust exits non-zero, config typos and bad devices are refused, and every known
refusal is one line with its documented exit code (policy/errors.py, docs/reliability.md)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import console_script
from safetensors.torch import load_file, save_file

from parapolicy.policy.atomic_write import write_atomically
from parapolicy.policy.errors import ConfigError, ParapolicyError, RunFolderError
from parapolicy.policy.run_dir import claim_run_dir, write_result

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "assets" / "default_policy"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = console_script(args[0])
    return subprocess.run([exe, *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line_refusal(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit ``code``, one ``<cmd>: error:`` line naming ``words``, no traceback, no Hydra banner."""
    assert proc.returncode == code, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------- item 1
@pytest.mark.parametrize(
    ("command", "result", "args"),
    [
        ("parapolicy-eval", "eval_info.json", [f"policy_path={POLICY}"]),
        ("parapolicy-bench", "bench.json", [f"policy_path={POLICY}"]),
        ("parapolicy-bench-env", "bench_env.json", []),
        ("parapolicy-demo", "demo.json", []),
        ("parapolicy-collect", "collect_info.json", []),
    ],
)
def test_every_command_refuses_a_used_run_folder(tmp_path, command, result, args):
    out = tmp_path / "run"
    (out / ".hydra").mkdir(parents=True)
    (out / result).write_text('{"earlier": "result"}')
    (out / ".hydra" / "config.yaml").write_text("earlier: run\n")  # the record of the run that made it
    proc = run([command, *args, f"hydra.run.dir={out}"], tmp_path)
    assert_one_line_refusal(proc, RunFolderError.exit_code, str(out), result, "never overwritten")
    assert json.loads((out / result).read_text()) == {"earlier": "result"}
    assert (out / ".hydra" / "config.yaml").read_text() == "earlier: run\n"  # its record too
    (launch,) = (out / ".hydra").glob("launch-*")  # the refused launch's own record
    assert sorted(f.name for f in launch.iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]


def test_write_result_writes_strict_json(tmp_path):
    path = write_result(tmp_path / "r.json", {"loss": float("nan"), "rows": [float("inf"), 1.5], "n": 2})
    written = json.loads(path.read_text(), parse_constant=_not_json)
    assert written == {"loss": None, "rows": [None, 1.5], "n": 2}


def test_write_result_writes_whole_or_not_at_all(tmp_path):
    path = write_result(tmp_path / "sub" / "eval_info.json", {"mean_score": 0.5})
    assert json.loads(path.read_text()) == {"mean_score": 0.5}
    with pytest.raises(TypeError):  # fails while serialising: the earlier result stays whole
        write_result(path, {"mean_score": object()})
    assert json.loads(path.read_text()) == {"mean_score": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["eval_info.json"]


def test_a_write_that_fails_half_way_leaves_the_earlier_file(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("earlier")

    def half(tmp: Path) -> None:
        tmp.write_text("half a ")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, half)
    assert path.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["steps.csv"]


def test_claim_run_dir_is_the_one_helper(tmp_path):
    claim_run_dir(tmp_path / "a", ["x.json"])
    assert (tmp_path / "a").is_dir()
    (tmp_path / "a" / "x.json").write_text("{}")
    with pytest.raises(RunFolderError, match=r"already holds x\.json"):
        claim_run_dir(tmp_path / "a", ["x.json", "y.json"], "parapolicy-x")


# --------------------------------------------------------------------------------------- item 4
def test_eval_with_nan_weights_is_refused_at_load(tmp_path):
    ckpt = tmp_path / "nan_policy"
    shutil.copytree(POLICY, ckpt)
    weights = load_file(ckpt / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, ckpt / "model.safetensors")
    proc = run(["parapolicy-eval", f"policy_path={ckpt}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert_one_line_refusal(proc, 4, "non-finite", name.removeprefix("ema."))


def test_eval_whose_guard_rejects_most_plans_exits_non_zero_with_records(tmp_path):
    out = tmp_path / "run"
    proc = run(
        [
            "parapolicy-eval",
            f"policy_path={POLICY}",
            "sampler.algorithm=picard",
            "sampler.tol=inf",  # every plan fails in the sampler: the guard replaces all of them
            "sampler.num_inference_steps=4",
            "sampler.window=2",
            "eval.n_episodes=1",
            "eval.max_steps=8",
            "eval.max_videos=0",
            "eval.progress=false",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
    )
    assert proc.returncode == 8, proc.stderr[-3000:]
    assert "output guard rejected 100.0% of 8 plans" in proc.stderr
    assert "max_rejected_share=0.05" in proc.stderr
    info = json.loads((out / "eval_info.json").read_text(), parse_constant=_not_json)  # strict JSON
    agg = info["aggregated"]  # the records are written
    assert agg["total_denoiser_errors"] == agg["total_n_chunks"] == 8
    assert info["run"]["sampler"]["tol"] is None  # inf is not JSON: written as null


def _not_json(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


# --------------------------------------------------------------------------------------- item 7
@pytest.mark.parametrize("override", ["+sampler.windw=2", "sampler.windw=2"])
def test_unknown_keys_are_refused_with_or_without_plus(tmp_path, override):
    proc = run(["parapolicy-eval", override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode != 0
    assert "windw" in proc.stderr
    assert not (tmp_path / "run" / "eval_info.json").exists()


def test_plus_typo_is_one_line_config_error(tmp_path):
    proc = run(["parapolicy-demo", "+max_stepz=3", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert_one_line_refusal(proc, 2, "unknown config key", "max_stepz", "max_steps")


# --------------------------------------------------------------------------------------- item 8
def test_known_refusal_is_one_line_without_traceback(tmp_path):
    proc = run(
        ["parapolicy-eval", f"policy_path={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'r'}"],
        tmp_path,
    )
    assert_one_line_refusal(proc, 4, "policy_path", str(tmp_path / "nowhere"), "does not exist")
    assert not (tmp_path / "r").exists()  # the folder this refused launch made is removed


def test_a_refused_launch_removes_only_a_folder_it_made_and_logs_the_error(tmp_path):
    out = tmp_path / "r"
    proc = run(
        ["parapolicy-eval", f"policy_path={POLICY}", "eval.n_episodes=-1", f"hydra.run.dir={out}"], tmp_path
    )
    line = assert_one_line_refusal(proc, 2, "eval.n_episodes must be >= 1")
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a folder the user made: kept, with the refusal in its log
    proc = run(
        ["parapolicy-eval", f"policy_path={POLICY}", "eval.n_episodes=-1", f"hydra.run.dir={out}"], tmp_path
    )
    assert_one_line_refusal(proc, 2, "eval.n_episodes must be >= 1")
    assert (out / "notes.txt").read_text() == "mine" and line in (out / "eval.log").read_text().splitlines()


@pytest.mark.parametrize(("error", "printed"), [(ConfigError, False), (RunFolderError, True)])
def test_under_torchrun_a_config_error_is_printed_by_rank_0_only(capsys, monkeypatch, error, printed):
    from parapolicy.scripts._hydra import command

    def body(cfg):
        raise error("eval.n_episodes must be >= 1")

    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exc:
        command("parapolicy-x")(body)(None)
    assert exc.value.code == error.exit_code
    assert capsys.readouterr().err == (
        "parapolicy-x: error: eval.n_episodes must be >= 1\n" if printed else ""
    )


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["dataset_path={nowhere}"], 5, ["no demonstration store at {nowhere}", "parapolicy-collect"]),
        (["init_policy={nowhere}"], 4, ["{nowhere}", "does not exist"]),
    ],
)
def test_train_refuses_a_missing_input_in_one_line(tmp_path, args, code, words):
    nowhere = tmp_path / "nowhere"
    overrides = [a.format(nowhere=nowhere) for a in args]
    proc = run(["parapolicy-train", *overrides, "num_steps=1", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert_one_line_refusal(proc, code, *(w.format(nowhere=nowhere) for w in words))
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("command", "override"),
    [
        ("parapolicy-eval", "sampler.num_inference_steps=101"),
        ("parapolicy-profile", "sampler.num_inference_steps=101"),
        ("parapolicy-bench", "bench.num_inference_steps=101"),
    ],
)
def test_a_sampler_the_policy_cannot_run_is_a_one_line_config_error(tmp_path, command, override):
    proc = run([command, f"policy_path={POLICY}", override, f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert_one_line_refusal(proc, 2, "num_inference_steps=101 must be <=", "num_train_timesteps=100")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_says_so_in_one_line(tmp_path):
    proc = run(
        ["parapolicy-bench", f"policy_path={POLICY}", "device=cuda", f"hydra.run.dir={tmp_path / 'r'}"],
        tmp_path,
    )
    assert_one_line_refusal(proc, 7, "device='cuda'", "CUDA is not available")


def test_unexpected_errors_keep_their_traceback():
    from parapolicy.scripts._hydra import command

    def body(cfg):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError, match="a bug"):  # not turned into a one-line exit
        command("parapolicy-x")(body)(None)


def test_known_refusal_exits_with_its_code(capsys):
    from parapolicy.scripts._hydra import command

    class RefusedError(ParapolicyError):
        exit_code = 5

    def body(cfg):
        raise RefusedError("store /x is broken: data/action chunk 3 is missing")

    with pytest.raises(SystemExit) as exc:
        command("parapolicy-x")(body)(None)
    assert exc.value.code == 5
    assert (
        capsys.readouterr().err == "parapolicy-x: error: store /x is broken: data/action chunk 3 is missing\n"
    )


def test_rejected_share_limit_is_inclusive_and_names_every_failing_run():
    from parapolicy.policy.errors import RunFailedError
    from parapolicy.policy.run_health import check_rejected_share, check_rejected_shares

    check_rejected_share({"total_n_chunks": 100, "total_nan_chunks": 5}, 0.05, "eval_info.json")
    runs = {
        "ddpm frozen": {"total_n_chunks": 100, "total_nan_chunks": 1},
        "picard realtime_sim": {
            "total_n_chunks": 50,
            "total_denoiser_errors": 3,
            "total_observation_errors": 1,
        },
    }
    with pytest.raises(RunFailedError, match=r"^picard realtime_sim: .*rejected 8\.0% of 50 plans") as exc:
        check_rejected_shares(runs, 0.05, "compare.json")
    assert "denoiser_errors 3, observation_errors 1" in str(exc.value) and "ddpm" not in str(exc.value)


def test_export_refusals_are_one_line_with_their_codes(tmp_path):
    transformer = ROOT / "tests" / "artifacts" / "diffusion_policy_transformer_causal.ckpt"
    base = ["parapolicy-export", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run(
        [*base, f"policy_path={transformer}", "format=lerobot", f"output_path={tmp_path / 'a'}"], tmp_path
    )
    assert_one_line_refusal(proc, 2, "format=lerobot cannot represent", "U-Net")
    assert not (tmp_path / "a").exists()
    proc = run([*base, f"policy_path={tmp_path / 'nope'}", f"output_path={tmp_path / 'b'}"], tmp_path)
    assert_one_line_refusal(proc, 4, "nope")
    proc = run([*base, f"policy_path={POLICY}"], tmp_path)
    assert_one_line_refusal(proc, 2, "output_path is required: add output_path=<value>")
    (tmp_path / "c").mkdir()
    proc = run([*base, f"policy_path={POLICY}", f"output_path={tmp_path / 'c'}"], tmp_path)
    assert_one_line_refusal(proc, 3, "refusing to overwrite")


def test_ctrl_c_exits_130_in_one_line(capsys):
    from parapolicy.scripts._hydra import command

    def body(cfg):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        command("parapolicy-x")(body)(None)
    assert exc.value.code == 130 and capsys.readouterr().err == "parapolicy-x: interrupted\n"


def test_outside_hydra_no_other_log_file_gets_the_printed_lines(tmp_path, capsys):
    from parapolicy.scripts._hydra import command

    handler = logging.FileHandler(tmp_path / "theirs.log")  # an application's own log file, first
    logging.getLogger().handlers.insert(0, handler)
    try:
        command("parapolicy-x")(lambda cfg: print("a summary line"))(None)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert capsys.readouterr().out == "a summary line\n"
    assert "a summary line" not in (tmp_path / "theirs.log").read_text()
