"""`parapolicy-eval`: closed-loop evaluation of a checkpoint on the reference PushT test seeds.

Settings and the job itself: `parapolicy.policy.eval` (EvalJobConfig, run_eval).
"""

from __future__ import annotations

import hydra

from parapolicy.policy.eval import EvalJobConfig, format_eval, run_eval
from parapolicy.policy.run_health import check_rejected_share

from ._hydra import (
    CONFIG_PATH,
    VERSION_BASE,
    command,
    register_schema,
    run_dir,
    to_dataclass,
    torchrun_main,
)

register_schema("eval_schema", EvalJobConfig)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="eval")
@command("parapolicy-eval", outputs=("eval_info.json", "videos"))
def _eval(cfg) -> None:
    """Evaluate and write ``eval_info.json`` (+ videos) in the run folder."""
    app: EvalJobConfig = to_dataclass(cfg)
    out = run_dir()
    result = run_eval(app, out)
    if result is None:  # a torchrun rank > 0: rank 0 gathered its records and reports
        return
    print(f"{format_eval(result)} -> {out / 'eval_info.json'}")
    check_rejected_share(result["aggregated"], app.max_rejected_share, str(out / "eval_info.json"))


def main() -> None:
    """`parapolicy-eval`; also ``torchrun --nproc-per-node=N -m parapolicy.scripts.eval`` (seeds split)."""
    torchrun_main(_eval)


if __name__ == "__main__":
    main()
