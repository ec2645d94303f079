"""Per-dimension min-max normaliser to [-1, 1] whose statistics live in the module's state dict.

`MinMaxNormalizer` is the reference's `LinearNormalizer` in `limits` mode (pusht.md section 2.3):
fitted on data, for each key and each dimension of its last axis::

    scale  = 2 / (max - min)
    offset = -1 - scale * min              ->  normalize(x) = x * scale + offset  in [-1, 1]

A dimension whose range is below `range_eps` (1e-4) is not scaled: scale = 1 and
offset = -(max + min) / 2, which centres it at 0 without dividing by (almost) zero. The same rule is
used whatever the data, so training and inference see the same transform.

The statistics are registered buffers (`stats.<key>.{min,max,scale,offset,fitted}`), so they are
saved and loaded with the policy's `state_dict` (and safetensors checkpoints). Loading a state dict
with non-finite or zero scales raises.

Imports torch and numpy only: no hydra, no zarr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["DEFAULT_RANGE_EPS", "MinMaxNormalizer"]

DEFAULT_RANGE_EPS = 1e-4


class _KeyStats(nn.Module):
    """Buffers of one key: input min/max and the affine map, each (D,); `fitted` is a bool scalar."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("min", torch.zeros(dim))
        self.register_buffer("max", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(dim))
        self.register_buffer("fitted", torch.tensor(False))


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class MinMaxNormalizer(nn.Module):
    """Min-max normaliser to [-1, 1] per dimension, for a fixed set of keys (e.g. `obs`, `action`).

    Example:
        >>> norm = MinMaxNormalizer({"obs": 20, "action": 2})
        >>> norm.fit({"obs": obs, "action": action})   # obs (N, 20), action (N, 2)
        >>> x = norm.normalize("action", action_batch)  # (..., 2) in [-1, 1]

    Args:
        dims: Key -> size `D` of the last axis. Keys must be valid module names (no ".").
        range_eps: Dimensions with `max - min < range_eps` are shifted to 0 but not scaled.
    """

    def __init__(self, dims: Mapping[str, int], range_eps: float = DEFAULT_RANGE_EPS) -> None:
        super().__init__()
        if not dims:
            raise ValueError("MinMaxNormalizer needs at least one key")
        for key, dim in dims.items():
            if not isinstance(key, str) or not key or "." in key:
                raise ValueError(f"normaliser key must be a non-empty string without '.', got {key!r}")
            if int(dim) < 1:
                raise ValueError(f"normaliser key {key!r} needs a dimension >= 1, got {dim}")
        if not range_eps > 0:
            raise ValueError(f"range_eps must be > 0, got {range_eps}")
        self.range_eps = float(range_eps)
        self.stats = nn.ModuleDict({key: _KeyStats(int(dim)) for key, dim in dims.items()})
        self._fitted_keys: set[str] = set()  # host-side mirror of the `fitted` buffers (no device sync)
        self.register_load_state_dict_post_hook(MinMaxNormalizer._after_load)

    @classmethod
    def from_data(cls, data: Mapping[str, Any], range_eps: float = DEFAULT_RANGE_EPS) -> MinMaxNormalizer:
        """Build a normaliser with one key per entry of `data` (sized by its last axis) and fit it."""
        dims = {key: int(_to_numpy(value).shape[-1]) for key, value in data.items()}
        return cls(dims, range_eps=range_eps).fit(data)

    @property
    def keys(self) -> tuple[str, ...]:
        """The normaliser's keys."""
        return tuple(self.stats.keys())

    def dim(self, key: str) -> int:
        """Size of the last axis for `key`."""
        return int(self._stats(key).scale.shape[0])

    def is_fitted(self, key: str) -> bool:
        """Whether `key` has statistics (from `fit` or a loaded state dict)."""
        self._stats(key)
        return key in self._fitted_keys

    @torch.no_grad()
    def fit(self, data: Mapping[str, Any]) -> MinMaxNormalizer:
        """Fit the statistics of the given keys (others keep theirs).

        Args:
            data: Key -> array or tensor (..., D); statistics are taken over all leading axes.

        Returns:
            self, for chaining.

        Raises:
            KeyError: A key is not one of this normaliser's keys.
            ValueError: An array is empty, has the wrong last axis, or holds NaN/inf.
        """
        for key, value in data.items():
            stats = self._stats(key)
            x = _to_numpy(value)
            dim = stats.scale.shape[0]
            if x.ndim == 0 or x.shape[-1] != dim:
                raise ValueError(f"normaliser key {key!r}: expected shape (..., {dim}), got {x.shape}")
            x = x.reshape(-1, dim).astype(np.float64)  # (M, D)
            if x.shape[0] == 0:
                raise ValueError(f"normaliser key {key!r}: cannot fit on an empty array")
            if not np.isfinite(x).all():
                raise ValueError(f"normaliser key {key!r}: data holds non-finite values (NaN or inf)")
            lo, hi = x.min(axis=0), x.max(axis=0)  # (D,)
            with np.errstate(over="ignore", invalid="ignore"):
                span = hi - lo  # (D,)
                constant = span < self.range_eps
                scale = np.where(constant, 1.0, 2.0 / np.where(constant, 1.0, span))
                offset = np.where(constant, -(hi + lo) / 2.0, -1.0 - scale * lo)
            values = {
                name: torch.from_numpy(array).to(dtype=getattr(stats, name).dtype)
                for name, array in (("min", lo), ("max", hi), ("scale", scale), ("offset", offset))
            }
            if not all(torch.isfinite(v).all() for v in values.values()) or (values["scale"] == 0).any():
                raise ValueError(
                    f"normaliser key {key!r}: statistics are non-finite (or a zero scale) in "
                    f"{stats.scale.dtype} (data range too large)"
                )
            for name, value in values.items():
                buf = getattr(stats, name)
                buf.copy_(value.to(device=buf.device))
            stats.fitted.fill_(True)
            self._fitted_keys.add(key)
        return self

    def normalize(self, key: str, x: Any) -> torch.Tensor:
        """Map raw values to the normalised range: `x * scale + offset`.

        Args:
            key: Which statistics to use.
            x: Array or tensor (..., D). Non-float input is converted to float32.

        Returns:
            Tensor (..., D) with the dtype (float) and device of `x`.
        """
        x, scale, offset = self._prepare(key, x)
        return x * scale + offset

    def unnormalize(self, key: str, x: Any) -> torch.Tensor:
        """Inverse of :meth:`normalize`: `(x - offset) / scale`.

        Args:
            key: Which statistics to use.
            x: Array or tensor (..., D) in normalised units.

        Returns:
            Tensor (..., D) in raw units, with the dtype (float) and device of `x`.
        """
        x, scale, offset = self._prepare(key, x)
        return (x - offset) / scale

    def get_stats(self, key: str) -> dict[str, torch.Tensor]:
        """Copies of the buffers of `key`: `min`, `max`, `scale`, `offset`, each (D,)."""
        self._require_fitted(key)
        stats = self._stats(key)
        return {name: getattr(stats, name).detach().clone() for name in ("min", "max", "scale", "offset")}

    def extra_repr(self) -> str:
        dims = ", ".join(f"{key}={self.dim(key)}" for key in self.keys)
        fitted = ", ".join(sorted(self._fitted_keys)) or "none"
        return f"dims=({dims}), fitted=({fitted}), range_eps={self.range_eps:g}"

    # ------------------------------------------------------------------------------------------ internals

    def _stats(self, key: str) -> _KeyStats:
        if key not in self.stats:
            raise KeyError(f"unknown normaliser key {key!r} (keys: {', '.join(self.keys)})")
        return self.stats[key]  # type: ignore[return-value]

    def _require_fitted(self, key: str) -> None:
        self._stats(key)
        if key not in self._fitted_keys:
            raise RuntimeError(f"normaliser key {key!r} used before fit (call fit() or load a state dict)")

    def _prepare(self, key: str, x: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._require_fitted(key)
        stats = self._stats(key)
        x = torch.as_tensor(x)
        if not torch.is_floating_point(x):
            x = x.to(torch.float32)
        dim = stats.scale.shape[0]
        if x.ndim == 0 or x.shape[-1] != dim:
            raise ValueError(f"normaliser key {key!r}: expected shape (..., {dim}), got {tuple(x.shape)}")
        scale = stats.scale.to(device=x.device, dtype=x.dtype)
        offset = stats.offset.to(device=x.device, dtype=x.dtype)
        return x, scale, offset

    @staticmethod
    def _after_load(module: nn.Module, incompatible_keys: Any) -> None:
        """Post-load hook: refresh the host-side fitted set and reject unusable statistics."""
        assert isinstance(module, MinMaxNormalizer)
        module._fitted_keys = set()
        for key, stats in module.stats.items():
            if not bool(stats.fitted):
                continue
            scale, offset = stats.scale, stats.offset
            if not (torch.isfinite(scale).all() and torch.isfinite(offset).all()):
                raise ValueError(f"loaded normaliser key {key!r} has non-finite scale/offset")
            if (scale == 0).any():
                raise ValueError(f"loaded normaliser key {key!r} has a zero scale (cannot unnormalize)")
            module._fitted_keys.add(key)
