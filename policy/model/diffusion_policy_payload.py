"""Reading a Diffusion Policy workspace checkpoint (``.ckpt``) as data, without running any of its code.

real-stanford/diffusion_policy's ``BaseWorkspace.save_checkpoint`` writes ``torch.save({"cfg": cfg,
"state_dicts": {"model": ..., "ema_model": ..., "optimizer": ...}, "pickles": {...}}, f,
pickle_module=dill)``: a torch zip archive whose pickle names, beside the tensors, OmegaConf's container
and node classes (the resolved config), ``typing.Any``, ``collections.defaultdict`` and dill's
``_load_type`` (how dill pickles ``dict``). `read_payload` loads it with torch's weights-only unpickler,
each of those names bound to a stand-in that only keeps the state it was pickled with: no OmegaConf or
dill code runs (neither needs to be installed), and every other global is refused by name. The config
comes back as plain dicts and lists. No hydra imports.
"""

from __future__ import annotations

import pickle
import re
import typing
import zipfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from parapolicy.policy.model.checkpoint import CheckpointError

__all__ = ["DiffusionPolicyPayload", "is_diffusion_policy_checkpoint", "read_payload", "refuse"]


def refuse(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"Diffusion Policy checkpoint {path}: {what}")


class _Pickled:
    """An object of an allowed OmegaConf class, kept as the state it was pickled with."""

    kind = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stand_in(kind: str, name: str) -> tuple[type, str]:
    return type(f"_{name.rsplit('.', 1)[-1]}", (_Pickled,), {"kind": kind}), name


_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode")
_STAND_INS = [
    _stand_in("dict", "omegaconf.dictconfig.DictConfig"),
    _stand_in("list", "omegaconf.listconfig.ListConfig"),
    _stand_in("meta", "omegaconf.base.ContainerMetadata"),
    _stand_in("meta", "omegaconf.base.Metadata"),
    *(_stand_in("node", f"omegaconf.nodes.{n}") for n in _NODES),
]
_BUILTIN_TYPES = {t.__name__: t for t in (dict, list, tuple, set, frozenset, int, float, str, bytes, bool)}
_BUILTIN_TYPES["NoneType"] = type(None)


def _load_type(name: str) -> type:
    """dill's ``_load_type``, for builtin types only."""
    if name not in _BUILTIN_TYPES:
        raise pickle.UnpicklingError(f"dill type {name!r} is not allowed (only {sorted(_BUILTIN_TYPES)})")
    return _BUILTIN_TYPES[name]


_SAFE_GLOBALS: list[Any] = [
    *_STAND_INS,
    (_load_type, "dill._dill._load_type"),
    (typing.Any, "typing.Any"),
    (defaultdict, "collections.defaultdict"),
]


@dataclass(frozen=True)
class DiffusionPolicyPayload:
    """What a Diffusion Policy checkpoint holds that a policy needs.

    ``cfg``: the resolved training config as plain dicts and lists; ``state_dict``: the policy's state
    dict (``ema_model`` when the run kept one, else ``model``); ``weights``: which of the two it is.
    """

    cfg: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    weights: str


_ZIP_MAGIC = b"PK\x03\x04"


def is_diffusion_policy_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a file in torch's zip format (as Diffusion Policy's ``.ckpt`` files are), or
    a zip file too damaged to tell (a truncated copy: `read_payload` then says it is unreadable)."""
    p = Path(path)
    if not p.is_file():
        return False
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            return f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC  # a zip's first entry, its directory gone
    with zipfile.ZipFile(p) as z:
        return any(name.endswith("/data.pkl") for name in z.namelist())


def read_payload(path: str | Path) -> DiffusionPolicyPayload:
    """Load a Diffusion Policy ``.ckpt`` as data (see the module docstring).

    Raises:
        CheckpointError: a global that is not data, a torch archive that is not a workspace
            checkpoint, or one without a policy state dict.
    """
    p = Path(path)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            raw = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise refuse(p, f"it pickles {_what(exc)}, which is not data; refused without running it") from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise refuse(p, f"not a readable torch archive (truncated or corrupt?): {exc}") from exc
    if not isinstance(raw, Mapping) or not isinstance(raw.get("state_dicts"), Mapping) or "cfg" not in raw:
        raise refuse(p, "not a workspace checkpoint (expected a dict with 'cfg' and 'state_dicts')")
    cfg = _plain(raw["cfg"])
    if not isinstance(cfg, dict):
        raise refuse(p, "its 'cfg' is not a config mapping")
    states = raw["state_dicts"]
    weights = "ema_model" if isinstance(states.get("ema_model"), Mapping) else "model"
    state = states.get(weights)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise refuse(p, "its state_dicts hold no policy state dict ('ema_model' or 'model' of tensors)")
    return DiffusionPolicyPayload(cfg, dict(state), weights)


def _what(exc: pickle.UnpicklingError) -> str:
    """The global a refused pickle names (torch's message is long and suggests an unsafe load)."""
    found = re.search(r"GLOBAL ([\w.]+)|unrecognized function (.+?)(?:\n|$)|(dill type '\w+')", str(exc))
    return next((g for g in found.groups() if g), "?") if found else "something other than tensors"


def _plain(obj: Any) -> Any:
    """The pickled config as plain data: containers to dicts and lists, nodes to their values."""
    if isinstance(obj, _Pickled):
        state = getattr(obj, "state", None)  # absent when the pickle never set it
        state = state if isinstance(state, Mapping) else {}
        if obj.kind == "node":
            return _plain(state.get("_val"))
        if obj.kind in ("dict", "list"):
            return _plain(state.get("_content"))
        return None  # container metadata
    if isinstance(obj, dict):  # OrderedDict included
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
