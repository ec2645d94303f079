"""Shared plumbing of the Hydra entry points: schema registration, conversion to dataclasses, run dir,
and the one way every command starts (claims its run folder) and fails (one line, a documented code).

Only `scripts/` imports Hydra; library code receives plain dataclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from parapolicy.policy.errors import ConfigError, ParapolicyError
from parapolicy.policy.run_dir import claim_run_dir

CONFIG_PATH = "../configs"  # relative to this package: the repository's (or the wheel's) configs/
VERSION_BASE = "1.3"
RECORD_DIR = ".hydra"  # this launch's config, Hydra settings and overrides (`save_launch_record`)
DIST_TIMEOUT_ENV = "PARAPOLICY_DIST_TIMEOUT_S"
DEFAULT_DIST_TIMEOUT_S = 1800.0  # torch's own default for gloo; a rank waits this long for a peer
# overrides of ranks > 0 under torchrun: they write nothing into the run folder
_QUIET_RANK_OVERRIDES = (
    "hydra.output_subdir=null",
    "hydra/job_logging=disabled",
    "hydra/hydra_logging=disabled",
)
_launch_time: datetime.datetime | None = None


def _launch_time_resolver(pattern: str) -> str:
    """``${launch_time:<strftime pattern>}``: the job's start, the same on every torchrun rank."""
    global _launch_time
    if _launch_time is None:
        _launch_time = datetime.datetime.now()
    return _launch_time.strftime(pattern)


OmegaConf.register_new_resolver("launch_time", _launch_time_resolver, replace=True)


def torchrun_main(hydra_main: Callable[[], None]) -> None:
    """Run a Hydra entry point once per torchrun rank (or once, without torchrun).

    With ``WORLD_SIZE > 1`` the default process group is created before Hydra starts (gloo for CPU
    tensors, plus NCCL for CUDA tensors when CUDA is available; timeout ``$PARAPOLICY_DIST_TIMEOUT_S``,
    default 1800 s), rank 0's start time is shared so that every rank resolves the same default run
    folder, and ranks > 0 run Hydra without its ``.hydra/`` files and log file. The group is destroyed
    when the job ends.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        hydra_main()
        return
    from parapolicy.policy.runtime.distributed import MIXED_BACKEND, init_distributed, shutdown_distributed
    from parapolicy.policy.runtime.ranks import broadcast_int

    global _launch_time
    timeout_s = float(os.environ.get(DIST_TIMEOUT_ENV, DEFAULT_DIST_TIMEOUT_S))
    import torch

    backend = MIXED_BACKEND if torch.cuda.is_available() else "gloo"
    info = init_distributed(backend, timeout_s)
    try:
        now_us = broadcast_int(int(datetime.datetime.now().timestamp() * 1e6), info)
        _launch_time = datetime.datetime.fromtimestamp(now_us / 1e6)
        if not info.is_main:
            sys.argv.extend(_QUIET_RANK_OVERRIDES)
        hydra_main()
    finally:
        shutdown_distributed()


def register_schema(name: str, node: type) -> None:
    """Register a dataclass as the structured schema ``name`` (typos and wrong types fail at compose)."""
    ConfigStore.instance().store(name=name, node=node)


def _reject_unknown_keys(node: Any, where: str) -> None:
    """Keys added with ``+key=value`` bypass the schema's struct flag: refuse any key it does not declare."""
    if not isinstance(node, DictConfig):
        return
    kind = OmegaConf.get_type(node)
    if kind is not None and dataclasses.is_dataclass(kind):
        declared = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(str(k) for k in node if k not in declared)
        if unknown:
            name = ", ".join(f"{where}{k}" for k in unknown)
            raise ConfigError(
                f"unknown config key(s) {name} (with or without '+'); {where or 'the config'} "
                f"accepts: {', '.join(sorted(declared))}"
            )
    for key in node:
        child = node._get_node(key)  # noqa: SLF001 - avoid resolving interpolations of leaves
        if isinstance(child, DictConfig):
            _reject_unknown_keys(child, f"{where}{key}.")


def to_dataclass(cfg: DictConfig) -> Any:
    """Convert the composed config to its dataclass once; nothing after this line sees OmegaConf.

    Raises:
        ConfigError: an unknown key (also one added with ``+``) or a value the dataclass refuses.
    """
    _reject_unknown_keys(cfg, "")
    try:
        return OmegaConf.to_object(cfg)
    except ParapolicyError:
        raise
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key} is required: add {exc.full_key}=<value>") from exc
    except OmegaConfBaseException as exc:  # its message, then "full_key: ..." lines: one line
        first = str(getattr(exc, "msg", None) or exc).splitlines()[0]
        where = f" (key {exc.full_key})" if getattr(exc, "full_key", None) else ""
        raise ConfigError(f"invalid configuration: {first}{where}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def run_dir() -> Path:
    """The Hydra run directory of this job (Hydra >= 1.2 does not chdir into it)."""
    return Path(HydraConfig.get().runtime.output_dir)


def command(name: str, outputs: Iterable[str] = ()) -> Callable[[Callable[[DictConfig], None]], Any]:
    """Wrap a Hydra task function: claim its run folder, keep what it prints, refuse in one line.

    Put it under ``@hydra.main``. Rank 0 first records the launch (`save_launch_record`). Before the
    body runs, the run folder is refused if it already holds any of ``outputs``
    (`parapolicy.policy.run_dir.claim_run_dir`, on rank 0 only under torchrun; commands whose library
    function claims its own folder pass none). What the body prints (stdout and stderr) also goes to
    Hydra's job log, ``<run folder>/<job name>.log``. A `ParapolicyError` raised by the body prints
    ``<name>: error: <message>`` on stderr (a `ConfigError`, the same on every torchrun rank, on rank 0
    only) and exits with the error's ``exit_code`` (see `parapolicy.policy.errors`); a refused launch
    whose run folder this launch made and left holding nothing but its record and log is removed.
    Ctrl-C exits 130 with one line; any other exception keeps Hydra's traceback.
    """
    names = tuple(outputs)

    def wrap(fn: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> None:
            out = run_dir() if HydraConfig.initialized() else None  # (None when called outside Hydra)
            made_here = out is not None and is_main_rank() and _only_the_job_log(out)
            if out is not None and is_main_rank():
                save_launch_record(out, cfg)
            try:
                with _echo_to_job_log(out):
                    try:
                        if names:
                            _claim_on_rank0(run_dir(), names, name)
                        fn(cfg)
                    except ParapolicyError as exc:
                        if is_main_rank() or not isinstance(exc, ConfigError):
                            print(f"{name}: error: {exc}", file=sys.stderr, flush=True)
                        raise
                    except KeyboardInterrupt:  # Ctrl-C: what the command kept is printed by it
                        print(f"{name}: interrupted", file=sys.stderr, flush=True)
                        raise SystemExit(130) from None
            except ParapolicyError as exc:
                if made_here and out is not None and _only_the_job_log(out, RECORD_DIR):
                    shutil.rmtree(out, ignore_errors=True)
                raise SystemExit(exc.exit_code) from None

        return task

    return wrap


def _job_log_files() -> list[Path]:
    """The files Hydra's job logging writes (its file handlers on the root logger)."""
    handlers = logging.getLogger().handlers
    return [Path(h.baseFilename) for h in handlers if isinstance(h, logging.FileHandler)]


def _only_the_job_log(out: Path, *also: str) -> bool:
    """Whether ``out`` holds nothing but Hydra's job log and the entries named in ``also``."""
    allowed = {p.name for p in _job_log_files() if p.parent == out} | set(also)
    return out.is_dir() and all(entry.name in allowed for entry in out.iterdir())


class _Tee:
    """A text stream that writes to ``stream`` and appends to ``log`` (flushed per write), all but a
    progress bar's redraws (text with a carriage return)."""

    def __init__(self, stream: Any, log: Any) -> None:
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        if "\r" not in text:
            self._log.write(text)
            self._log.flush()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, attr: str) -> Any:  # isatty, fileno, encoding ...: the terminal's
        return getattr(self._stream, attr)


@contextlib.contextmanager
def _echo_to_job_log(out: Path | None) -> Iterator[None]:
    """Copy stdout and stderr into Hydra's job log in the run folder ``out`` while the body runs
    (nothing outside Hydra, or without a job log there)."""
    logs = [p for p in _job_log_files() if out is not None and p.parent == out]
    if not logs:
        yield
        return
    with open(logs[0], "a", encoding="utf-8") as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def save_launch_record(out: Path, cfg: DictConfig) -> Path:
    """Hydra's record of this launch (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``), written here
    instead of by Hydra (the configs set ``hydra.output_subdir: null``): in ``out/.hydra/`` of a fresh
    folder, else in ``out/.hydra/launch-<time>/``, so that a refused (or resumed) launch never overwrites
    the record of the run that made the folder. Returns the record's folder."""
    hydra_cfg = HydraConfig.get()
    record = out / RECORD_DIR
    if (record / "config.yaml").exists():
        record = record / f"launch-{datetime.datetime.now():%Y-%m-%d_%H-%M-%S.%f}"
    record.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, record / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)}), record / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, record / "overrides.yaml")
    return record


def _claim_on_rank0(out: Path, names: tuple[str, ...], command_name: str) -> None:
    """`claim_run_dir` on rank 0 (the only rank that writes); the other ranks wait for its verdict."""
    from parapolicy.policy.runtime.ranks import current_ranks, run_on_rank0

    run_on_rank0(current_ranks(), lambda: claim_run_dir(out, names, command_name), "claimed the run folder")


def is_main_rank() -> bool:
    """Whether this process prints the command's summary (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0") or 0) == 0
