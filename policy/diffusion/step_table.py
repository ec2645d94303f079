"""`StepTable`, the per-step coefficients of one sampler, and `StepRows`, a gathered batch of its rows.

The table's columns are the shared ones (`SHARED_COLUMNS`: noise levels, the DDPM posterior variance,
the step noise std and the held-x̂₀ roll-out map) followed by the columns of its update rule (see
`rules/`). `schedules.make_step_table` builds it; `step.step` reads it by step position.

Library module: imports torch only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor

from parapolicy.policy.diffusion.rules import UpdateRule

__all__ = ["SHARED_COLUMNS", "StepRows", "StepTable"]

T = TypeVar("T")

SHARED_COLUMNS = (
    "alpha_bar",
    "alpha_bar_prev",
    "sqrt_alpha_bar",
    "sqrt_one_minus_alpha_bar",
    "sqrt_recip_alpha_bar",
    "sqrt_recipm1_alpha_bar",
    "posterior_variance",
    "sigma",
    "rollout_coef_x",
    "rollout_coef_x0",
)
"""Columns every table has, whatever its rule (see `StepTable`)."""


class StepRows(NamedTuple):
    """The per-step coefficients of a batch of rows, gathered from a `StepTable` in one indexing op.

    `step.step` accepts it in place of a LongTensor of step positions: row r then reads its
    coefficients from `values[r]` instead of gathering every column separately (the Picard sampler
    evaluates many rows per iteration, and one gather is cheaper than a dozen). The values carry
    trailing singleton dims, so a column broadcasts against the rows' tensors as it is (one `select`,
    no reshaping per coefficient). A NamedTuple: built several times per Picard iteration, and cheaper
    to build than a frozen dataclass.

    Attributes:
        values: (R, n_columns, 1, ..., 1) coefficients of the rows (any leading shape, e.g. (M, A),
            then one dim over the columns at `axis`, then ``trailing`` singleton dims); column c = the
            table's column c.
        axis: the dim of `values` that runs over the columns (= the number of leading dims).
        index: column name -> column number (the table's).
        selected: the columns read so far, by name (`column` keeps each view, so rows that a sampler
            keeps, e.g. a one-sample Picard window's, select each column once).
    """

    values: Tensor
    axis: int
    index: Mapping[str, int]
    selected: dict[str, Tensor]

    def column(self, name: str) -> Tensor:
        """Coefficient ``name`` of every row: the leading shape + (1,) * trailing (a view)."""
        c = self.selected.get(name)
        if c is None:
            c = self.selected[name] = self.values.select(self.axis, self.index[name])
        return c

    def view(self, *shape: int) -> StepRows:
        """The same rows with the leading shape ``shape`` (e.g. (M·A,) -> (M, A))."""
        per_row = self.values.shape[self.axis :]  # (n_columns, 1, ..., 1)
        return StepRows(self.values.view(*shape, *per_row), len(shape), self.index, {})


@dataclass(frozen=True)
class StepTable:
    """Per-inference-step coefficients of one sampler, built once by `schedules.make_step_table`.

    Every column is indexed by the step position i in 0..K-1 (step i leaves buffer slot i, at timestep
    τ_i, and lands in slot i+1) and read as an attribute (``table.sigma``) or with `column`.
    Coefficients are computed in float64 and stored in the working dtype; `tol_variance` is kept in at
    least float32 so that tiny variances do not underflow.

    Shared columns, each (K,) (ᾱ = ᾱ(τ_i), ᾱ' = ᾱ(τ_{i+1}), the level step i lands on)::

        alpha_bar                  ᾱ
        alpha_bar_prev             ᾱ'; after the last step 1.0 (DDPM, or `set_alpha_to_one`) or ᾱ_0
        sqrt_alpha_bar             √ᾱ
        sqrt_one_minus_alpha_bar   √(1-ᾱ)
        sqrt_recip_alpha_bar       1/√ᾱ
        sqrt_recipm1_alpha_bar     √(1/ᾱ - 1)
        posterior_variance         β̃ = β_s·(1-ᾱ')/(1-ᾱ) (exactly 0 when ᾱ' = 1)
        sigma                      std of the noise step i adds (0 for deterministic rules)
        rollout_coef_x             with x̂₀ held fixed step i is affine: x' = a·x_t + b·x̂₀ + σ·z; a
        rollout_coef_x0            b (both read off `step.step` itself when the table is built)

    followed by the rule's own columns (`rule.columns`, documented in its module under `rules/`).

    Attributes:
        rule: the update rule `step.step` applies (its `kind` names it).
        prediction_type: what the denoiser predicts ("epsilon", "sample", "v_prediction").
        clip_sample: clamp x̂₀ to [-clip_sample_range, clip_sample_range] (all rules).
        clip_sample_range: clipping bound.
        num_train_timesteps: T.
        timestep_values: host copy of the timesteps (τ_0, ..., τ_{K-1}); never needs a device sync.
        orders: host copy of each step's order (1 or 2; all 1 for one-step rules).
        alphas_cumprod: (T,) training schedule ᾱ_t (for `add_noise` during training).
        timesteps: (K,) int64 τ_i, fed to the denoiser.
        tol_variance: (K,) variance that normalises the Picard change of slot i (see `make_step_table`).
        column_names: `SHARED_COLUMNS` + `rule.columns`.
        coefficients: (K, len(column_names)) every column stacked (`rows` gathers from it).
        memo: what samplers derived from this table, by key (`cached`); never compared.
    """

    rule: UpdateRule
    prediction_type: str
    clip_sample: bool
    clip_sample_range: float
    num_train_timesteps: int
    timestep_values: tuple[int, ...]
    orders: tuple[int, ...]
    alphas_cumprod: Tensor
    timesteps: Tensor
    tol_variance: Tensor
    column_names: tuple[str, ...]
    coefficients: Tensor
    columns: Mapping[str, Tensor] = dataclasses.field(init=False, repr=False, compare=False)
    index: Mapping[str, int] = dataclasses.field(init=False, repr=False, compare=False)
    memo: dict[Hashable, Any] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        K, n = self.num_steps, len(self.column_names)
        if tuple(self.coefficients.shape) != (K, n):
            raise ValueError(f"coefficients must have shape {(K, n)}, got {tuple(self.coefficients.shape)}")
        index = {name: c for c, name in enumerate(self.column_names)}
        # one contiguous (K,) tensor per column: an int step reads a 0-d view of it, no gather kernel
        columns = {name: self.coefficients[:, c].contiguous() for name, c in index.items()}
        object.__setattr__(self, "index", index)  # plain dicts: read in the hot loop, never written
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "memo", {})  # see `cached`; a moved or replaced table starts empty

    def __getattr__(self, name: str) -> Tensor:
        columns = self.__dict__.get("columns")
        if columns is not None and name in columns:
            return columns[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or column {name!r}")

    def cached(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()``, computed once per table and key: what a sampler derives from the table alone
        (e.g. the Picard convergence thresholds), kept for the next call with the same table."""
        if key not in self.memo:
            self.memo[key] = build()
        return self.memo[key]

    def column(self, name: str) -> Tensor:
        """The (K,) column ``name``."""
        return self.columns[name]

    def rows(self, positions: Tensor | slice, trailing: int = 0) -> StepRows:
        """Gather the coefficients of the steps at ``positions`` in one indexing op.

        Args:
            positions: (R,) int64 step positions (or any leading shape), or a slice of consecutive
                positions (read as a view, no gather).
            trailing: singleton dims appended to each row's coefficients, so that a column broadcasts
                against tensors of shape (R, *trailing dims) as it is.
        """
        if isinstance(positions, slice):
            values, lead = self.coefficients[positions], 1  # (R, n_columns) view
        else:
            values = self.coefficients.index_select(0, positions.reshape(-1))  # (R, n_columns)
            values, lead = values.view(*positions.shape, -1), positions.dim()
        return StepRows(values.view(*values.shape, *(1,) * trailing), lead, self.index, {})

    @property
    def kind(self) -> str:
        """The update rule's name ("ddpm", "ddim", "dpmsolver++", ...)."""
        return self.rule.kind

    @property
    def num_steps(self) -> int:
        """Number of inference steps K."""
        return len(self.timestep_values)

    @property
    def device(self) -> torch.device:
        """Device holding the coefficient tensors."""
        return self.timesteps.device

    @property
    def dtype(self) -> torch.dtype:
        """Working dtype of the coefficients."""
        return self.coefficients.dtype

    @property
    def is_stochastic(self) -> bool:
        """True when steps add pre-drawn noise (DDPM)."""
        return self.rule.is_stochastic

    @property
    def uses_history(self) -> bool:
        """True when step i also needs the x̂₀ prediction of step i-1 (DPM-Solver++(2M))."""
        return self.rule.uses_history

    def to(self, device: torch.device | str) -> StepTable:
        """Return a copy with every tensor moved to `device` (host-side fields are shared)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if f.init and isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)
