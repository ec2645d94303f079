"""Shared plumbing of the Hydra entry points: schema registration, conversion to dataclasses, run dir,
and the one way every command starts (claims its run folder) and fails (one line, a documented code).

Only `scripts/` imports Hydra; library code receives plain dataclasses.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from parapolicy.policy.errors import ConfigError, ParapolicyError
from parapolicy.policy.run_dir import claim_run_dir

CONFIG_PATH = "../configs"  # relative to this package: the repository's (or the wheel's) configs/
VERSION_BASE = "1.3"


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
    except (ValueError, TypeError, OmegaConfBaseException) as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def run_dir() -> Path:
    """The Hydra run directory of this job (Hydra >= 1.2 does not chdir into it)."""
    return Path(HydraConfig.get().runtime.output_dir)


def command(name: str, outputs: Iterable[str] = ()) -> Callable[[Callable[[DictConfig], None]], Any]:
    """Wrap a Hydra task function: claim its run folder, print known refusals as one line.

    Put it under ``@hydra.main``. Before the body runs, the run folder is refused if it already holds
    any of ``outputs`` (`parapolicy.policy.run_dir.claim_run_dir`; commands whose library function
    claims its own folder pass none). A `ParapolicyError` raised by the body prints
    ``<name>: error: <message>`` on stderr and exits with the error's ``exit_code`` (see
    `parapolicy.policy.errors`); any other exception keeps Hydra's traceback.
    """
    names = tuple(outputs)

    def wrap(fn: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> None:
            try:
                if names:
                    claim_run_dir(run_dir(), names, name)
                fn(cfg)
            except ParapolicyError as exc:
                print(f"{name}: error: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(exc.exit_code) from None

        return task

    return wrap
