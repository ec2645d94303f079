"""`DiffusionPolicy`: the DiffusionPolicy-style policy (normaliser + denoiser + step table + sampler), on
low-dim observations or, with ``obs_type="pixels_agent_pos"``, on images through `vision.VisionUnet`.

Observation/action timing (To = n_obs_steps = 2, Ta = n_action_steps = 8, H = horizon = 16)::

    observations used:   o[t-1] o[t]
    plan rows:           a0     a1 a2 a3 a4 a5 a6 a7 a8 a9 ... a15      (H rows, row 0 aligned with t-1)
    executed:                   a1 ........................ a8         (rows To-1 .. To-1+Ta-1)

`select_action` keeps the last To observations and a queue of Ta actions, and samples a new plan when
the queue is empty. `predict_action_chunk` samples one plan for a batch of observation histories.
Observations enter through one validation boundary (`validate_observation`) before the network runs.

No hydra imports.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parapolicy.policy.config import PolicyConfig, SamplerConfig
from parapolicy.policy.diffusion.coarse import x0_jacobian
from parapolicy.policy.diffusion.dispatch import run_sampler
from parapolicy.policy.diffusion.inpaint import Inpaint
from parapolicy.policy.diffusion.schedules import (
    StepTable,
    make_alphas_cumprod,
    make_step_table,
    make_timesteps,
)
from parapolicy.policy.diffusion.sequential import SampleResult, draw_noise
from parapolicy.policy.diffusion.step import add_noise
from parapolicy.policy.diffusion.warm_start import PreviousChunk, next_chunk_inputs
from parapolicy.policy.errors import ParapolicyError
from parapolicy.policy.model.image_observation import (
    batch_size,
    stack_steps,
    validate_image_observation,
)
from parapolicy.policy.model.normalizer import MinMaxNormalizer
from parapolicy.policy.model.vision import build_network
from parapolicy.policy.runtime import cpu_graphs
from parapolicy.policy.runtime.cuda_graphs import GraphedDenoiser

OBS_KEY = "obs"
# An observation whose normalised value exceeds this in magnitude (the training range maps to [-1, 1])
# lies far outside anything the policy was trained on: it is refused, not planned from.
OBS_RANGE_LIMIT = 100.0
COMPILE_MODES = ("none", "trace", "cuda_graph")


def check_compile_mode(mode: str, device: str | None = None) -> None:
    """Raise ValueError naming ``mode`` unless it is one of `COMPILE_MODES` (and, given the run's
    ``device``, unless it runs there: ``cuda_graph`` needs a CUDA device)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "cuda_graph" and device is not None and not str(device).startswith("cuda"):
        raise ValueError(f"compile=cuda_graph needs a CUDA device, got device={device!r} (use trace or none)")


class ObservationError(ParapolicyError, ValueError):
    """An observation is missing, misshaped, of the wrong dtype, or not finite."""

    exit_code = 6


@dataclass(frozen=True)
class ChunkPrediction:
    """Output of `DiffusionPolicy.predict_action_chunk`.

    Attributes:
        action: (B, Ta, Da) the executed chunk, in environment units.
        plan: (B, H, Da) the full predicted plan, in environment units.
        result: the sampler's `SampleResult` (normalised sample, trajectory for Picard, statistics).
        x_T: (B, H, Da) the initial sample used.
        noise: (K, B, H, Da) the step noise used.
    """

    action: Tensor
    plan: Tensor
    result: SampleResult
    x_T: Tensor
    noise: Tensor


@dataclass(frozen=True)
class TrainingNoise:
    """The random draws of one training batch (`DiffusionPolicy.draw_training_noise`), on the CPU.

    Attributes:
        eps: (B, H, Da) the Gaussian noise added to the normalised actions.
        t: (B,) int64 diffusion timesteps.
        crops: (B*To, 2) training crop offsets of an image policy (sample-major), else None.
    """

    eps: Tensor
    t: Tensor
    crops: Tensor | None = None

    def rows(self, start: int, stop: int) -> TrainingNoise:
        """The draws of windows ``start .. stop - 1`` (one rank's slice of a global batch)."""
        per = None if self.crops is None else self.crops.shape[0] // self.eps.shape[0]  # To
        crops = None if per is None else self.crops[start * per : stop * per]
        return TrainingNoise(self.eps[start:stop], self.t[start:stop], crops)


def build_step_table(
    config: PolicyConfig,
    sampler: SamplerConfig,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> StepTable:
    """The step table of ``sampler`` for the policy's training schedule, in the network's ``dtype``."""
    sched = config.schedule
    alphas_cumprod = make_alphas_cumprod(
        sched.beta_schedule, sched.num_train_timesteps, sched.beta_start, sched.beta_end
    )
    timesteps = make_timesteps(
        sched.num_train_timesteps,
        sampler.num_inference_steps,
        spacing=sampler.timestep_spacing,
        steps_offset=sampler.steps_offset,
    )
    return make_step_table(
        alphas_cumprod,
        timesteps,
        kind=sampler.kind,
        prediction_type=sched.prediction_type,
        clip_sample=sched.clip_sample,
        clip_sample_range=sched.clip_sample_range,
        set_alpha_to_one=sampler.set_alpha_to_one,
        device=device,
        dtype=dtype,
    )


class DiffusionPolicy(nn.Module):
    """Diffusion policy over action chunks, conditioned (FiLM) on the last To observations.

    Args:
        config: the policy configuration.
        normalizer: a fitted normaliser with keys ``obs`` (Do) and ``action`` (Da); a blank one is made
            when omitted (fit it, or load a checkpoint, before use).
    """

    def __init__(self, config: PolicyConfig, normalizer: MinMaxNormalizer | None = None) -> None:
        super().__init__()
        self.config = config
        self.network = build_network(config)  # the U-Net, or a VisionUnet (U-Net + image encoder)
        self.normalizer = normalizer or MinMaxNormalizer(
            {OBS_KEY: config.obs_dim, "action": config.action_dim}
        )
        self.sampler = config.sampler
        self.table = build_step_table(config, config.sampler, "cpu")
        # training schedule for add_noise, taken from the table (one source of the schedule)
        self.register_buffer("alphas_cumprod", self.table.alphas_cumprod.float(), persistent=False)  # (T,)
        self._obs_history: deque[Tensor] = deque(maxlen=config.n_obs_steps)
        self._action_queue: deque[Tensor] = deque()
        self._previous: ChunkPrediction | None = None  # warm-start source
        self._compile_mode = "none"
        self._compiled: Any = None  # the traced or graphed network (set_compile)
        self._denoiser: Any = None  # set by set_denoiser (device layouts)
        self._coarse_jacobian: Tensor | None = None  # (K, H·Da, H·Da), sampler.coarse="linear"
        self._seen_versions: tuple[int, ...] | None = None  # `_follow_weight_changes`
        self.register_load_state_dict_post_hook(DiffusionPolicy._after_load)

    # ----------------------------------------------------------------------------------------------
    # configuration
    @property
    def device(self) -> torch.device:
        """Device of the network weights."""
        return self.alphas_cumprod.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the network weights (observations, noise and the samplers use it)."""
        return self.alphas_cumprod.dtype

    def _apply(self, fn: Any, recurse: bool = True) -> DiffusionPolicy:
        super()._apply(fn, recurse)
        if self.table.dtype != self.dtype:  # .double() / .float(): the samplers work in the network's dtype
            self.table = build_step_table(self.config, self.sampler, self.device, self.dtype)
        self.table = self.table.to(self.alphas_cumprod.device)  # keep the table beside the weights
        if getattr(self, "_coarse_jacobian", None) is not None:
            self._coarse_jacobian = self._coarse_jacobian.to(self.alphas_cumprod)
        mode = getattr(self, "_compile_mode", "none")  # unset while nn.Module.__init__ runs
        if mode == "cuda_graph" and self.device.type != "cuda":
            msg = f"policy moved to {self.device}: compile mode 'cuda_graph' reset to 'none'"
            warnings.warn(msg, stacklevel=2)
            self.set_compile("none")
        elif mode != "none":
            self.set_compile(mode)  # re-record the trace / graphs for the new device and dtype
        return self

    @staticmethod
    def _after_load(policy: DiffusionPolicy, incompatible_keys: Any) -> None:
        """`load_state_dict` post-hook: `_follow_weight_changes` at once, not at the next plan (the
        samplers may call `denoise` without a plan: the bench, `auto_window`)."""
        policy._follow_weight_changes()

    def _weight_versions(self) -> tuple[int, ...]:
        """Each network parameter's in-place write counter (`Tensor._version`)."""
        return tuple(p._version for p in self.network.parameters())

    def _follow_weight_changes(self) -> None:
        """Before a plan: weights written in place since the last plan or trace (an optimizer step,
        `EMA.update`, ``network.load_state_dict``) re-record the trace and drop the linear coarse model,
        both of which hold values of the old weights."""
        versions = self._weight_versions()
        if versions == self._seen_versions:
            return
        if self._seen_versions is not None:
            self._coarse_jacobian = None
            if self._compile_mode == "trace":
                self.set_compile("trace")
        self._seen_versions = versions

    def set_sampler(self, sampler: SamplerConfig) -> None:
        """Switch the inference sampler (rebuilds the step table once; resets the rollout state).

        ``window="auto"`` must be resolved first, by the job (`runtime.auto_window.resolve_sampler`).
        """
        if sampler.window == "auto":
            raise ValueError("sampler.window='auto' must be resolved first: use auto_window.resolve_sampler")
        self.config.check_sampler(sampler)
        self.sampler = sampler
        self.table = build_step_table(self.config, sampler, self.device, self.dtype)
        self._coarse_jacobian = None  # measured again, for this table
        self.reset()

    @property
    def coarse_jacobian(self) -> Tensor | None:
        """(K, H·Da, H·Da) ∂x̂₀/∂x per step of the Parareal update's linear coarse model
        (``sampler.coarse="linear"``), measured on the first plan sampled after `set_sampler` (along
        its trajectory, `diffusion.coarse.x0_jacobian`); None before that or for another sampler."""
        return self._coarse_jacobian

    def denoise(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """The denoiser the samplers call: ``(N, H, Da), (N,), (N, C) -> (N, H, Da)``.

        It is the denoiser installed with `set_denoiser` (e.g. a `DistributedDenoiser` or a
        `ShardedDenoiser`), else `local_denoise`.
        """
        if self._denoiser is not None:
            return self._denoiser(x, t, cond)
        return self.local_denoise(x, t, cond)

    def local_denoise(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """This process's network on its own device (traced or graphed as `set_compile` chose)."""
        if self._compiled is not None:
            return self._compiled(x, t, cond)
        return self.network(x, t, cond)

    def set_denoiser(self, denoiser: Any | None) -> None:
        """Route sampling through ``denoiser`` (wrap `local_denoise` in it); None restores the local one.

        This is where a device layout plugs in: the samplers never change.
        """
        if denoiser is not None and not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        self._denoiser = denoiser

    @property
    def installed_denoiser(self) -> Any | None:
        """The denoiser installed with `set_denoiser`, or None when `local_denoise` serves."""
        return self._denoiser

    @property
    def compiled_as(self) -> str:
        """How `local_denoise` runs the network: ``"eager"``, ``"trace"`` (one trace),
        ``"cpu_graphs"`` (`cpu_graphs.CpuGraphs`) or ``"cuda_graph"`` (see `set_compile`)."""
        if self._compiled is None:
            return "eager"
        if isinstance(self._compiled, cpu_graphs.CpuGraphs):
            return "cpu_graphs"
        return self._compile_mode

    def set_compile(self, mode: str) -> None:
        """Inference compilation of the denoiser: ``"none"`` (eager), ``"trace"`` or ``"cuda_graph"``.

        ``"trace"``: `torch.jit.trace` recorded at batch 2; it serves every batch size (the network
        has no value- or size-dependent control flow). For a network with convolutions on the CPU in
        float32, with oneDNN (`cpu_graphs.serves`), it is `cpu_graphs.CpuGraphs`: two traces with
        oneDNN-prepacked convolutions, one for calls of fewer than `cpu_graphs.WIDE_ROWS` rows
        (sequential steps) and one for wider calls (Picard windows); they return the eager
        network's numbers within float32 rounding.
        Elsewhere it is one trace of the network, which returns the eager numbers bit for bit. A
        trace holds copies of the convolution weights, so loading weights (`load_state_dict`)
        records it again.
        ``"cuda_graph"`` (CUDA devices only): `cuda_graphs.GraphedDenoiser`, one CUDA graph per
        power-of-two row bucket, captured on first use. Training always uses the eager network.

        Raises:
            ValueError: an unknown mode, or ``"cuda_graph"`` on a device that is not CUDA.
        """
        check_compile_mode(mode)
        cfg = self.config
        if mode == "cuda_graph" and self.device.type != "cuda":
            raise ValueError(
                f"compile mode 'cuda_graph' needs the policy on a CUDA device, not {self.device}"
            )
        self._compiled, self._compile_mode = None, mode
        self._seen_versions = self._weight_versions()
        if mode == "trace":
            was_training = self.network.training  # the trace is recorded in eval mode, then given back
            network = self.network.eval()
            dtype = self.dtype
            example = (
                torch.zeros(2, cfg.horizon, cfg.action_dim, device=self.device, dtype=dtype),  # (2, H, Da)
                torch.zeros(2, dtype=torch.long, device=self.device),  # (2,)
                torch.zeros(2, cfg.global_cond_dim, device=self.device, dtype=dtype),  # (2, C)
            )
            if cpu_graphs.serves(network, self.device, dtype):
                self._compiled = cpu_graphs.CpuGraphs(network, example)
            else:
                self._compiled = cpu_graphs.trace_network(network, example)
            network.train(was_training)
        elif mode == "cuda_graph":
            shape = (cfg.horizon, cfg.action_dim)
            self._compiled = GraphedDenoiser(self.network, self.device, shape, cfg.global_cond_dim)

    # ----------------------------------------------------------------------------------------------
    # training
    def draw_training_noise(
        self, shape: tuple[int, int, int], generator: torch.Generator | None = None
    ) -> TrainingNoise:
        """The random draws `compute_loss` makes for a (B, H, Da) action batch, in its order: the
        training crops (image policies in training mode), eps, then t, all on the CPU."""
        B = shape[0]
        crops = None
        if self.config.obs_type == "pixels_agent_pos":
            crops = self.network.rgb_encoder.draw_crops(B * self.config.n_obs_steps, generator)
        eps = torch.randn(shape, generator=generator, device="cpu")  # (B, H, Da)
        T = self.config.schedule.num_train_timesteps
        t = torch.randint(0, T, (B,), generator=generator, device="cpu")  # (B,)
        return TrainingNoise(eps, t, crops)

    def compute_loss(
        self,
        batch: Mapping[str, Tensor],
        generator: torch.Generator | None = None,
        noise: TrainingNoise | None = None,
    ) -> Tensor:
        """Denoising loss of a batch ``{"obs": (B, H, Do), "action": (B, H, Da)}`` (reference recipe).

        The network sees x_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps with t ~ U{0..T-1} per sample and is
        trained to predict eps (or a / v, per ``prediction_type``) on all H action rows. The draws come
        from ``noise`` when given (e.g. one rank's rows of a global batch's draws), else from
        ``generator`` (`draw_training_noise`).
        """
        cfg = self.config
        nact = self.normalizer.normalize("action", batch["action"])  # (B, H, Da)
        B = nact.shape[0]
        if noise is None:
            noise = self.draw_training_noise(tuple(nact.shape), generator)
        elif noise.eps.shape != nact.shape:
            raise ValueError(f"noise.eps has shape {tuple(noise.eps.shape)}, the actions {tuple(nact.shape)}")
        cond = self.condition(self._observation_window(batch), noise.crops)  # (B, To*C)
        eps, t = noise.eps.to(nact), noise.t.to(nact.device)
        x_t = add_noise(self.alphas_cumprod, nact, eps, t)
        pred = self.network(x_t, t, cond)
        kind = cfg.schedule.prediction_type
        if kind == "epsilon":
            target = eps
        elif kind == "sample":
            target = nact
        else:  # v_prediction: v = sqrt(abar) eps - sqrt(1 - abar) x0
            abar = self.alphas_cumprod[t].view(B, 1, 1)
            target = abar.sqrt() * eps - (1 - abar).sqrt() * nact
        return F.mse_loss(pred, target)

    # ----------------------------------------------------------------------------------------------
    # observations -> FiLM condition (the one place that knows the observation keys)
    def _observation_window(self, batch: Mapping[str, Tensor]) -> Any:
        """The first To observation rows of a training batch: (B, To, Do), or a dict for images."""
        To = self.config.n_obs_steps
        if self.config.obs_type == "pixels_agent_pos":
            return {k: batch[k][:, :To] for k in ("pixels", "agent_pos")}
        return batch[OBS_KEY][:, :To]

    def condition(self, x_obs: Any, crops: Tensor | None = None) -> Tensor:
        """The FiLM condition (B, To*C) of validated observation histories (`validate_observation`).

        Low-dim: the normalised (B, To, Do) flattened. Images: the encoder runs here, once per chunk,
        on (B, To) images and the normalised agent state (`vision.VisionUnet.encode`; ``crops``: its
        training crop offsets).
        """
        if isinstance(x_obs, Mapping):
            state = self.normalizer.normalize(OBS_KEY, x_obs["agent_pos"])  # (B, To, Do)
            return self.network.encode(x_obs["pixels"], state, crops=crops)  # (B, To*(Do + 2K))
        return self.normalizer.normalize(OBS_KEY, x_obs).flatten(1)  # (B, To*Do)

    # ----------------------------------------------------------------------------------------------
    # inference
    def validate_observation(self, obs: Any, history: bool) -> Any:
        """The validation boundary: return ``obs["obs"]`` on the policy's device, in its dtype (`dtype`).

        Image policies take ``{"pixels", "agent_pos"}`` (`image_observation.validate_image_observation`).

        Args:
            obs: a mapping with key ``"obs"``: (Do,) or (B, Do) when ``history`` is False,
                (To, Do) or (B, To, Do) when it is True. Any float dtype; numpy or torch.
            history: whether the observation carries the To-step history.

        Raises:
            ObservationError: naming the missing key, the expected and actual shape, a non-float dtype,
                the position of a non-finite value, or a value far outside the normaliser's range
                (normalised magnitude above ``OBS_RANGE_LIMIT``; dimensions the normaliser passes
                through unchanged carry no range and are not checked).
        """
        if self.config.obs_type == "pixels_agent_pos":  # {"pixels", "agent_pos"}: see image_observation.py
            return validate_image_observation(
                self.config, obs, history, self.device, ObservationError, self.dtype
            )
        if not isinstance(obs, Mapping):
            raise ObservationError(
                f"observation must be a mapping with key {OBS_KEY!r}, got {type(obs).__name__}"
            )
        if OBS_KEY not in obs:
            raise ObservationError(f"observation is missing key {OBS_KEY!r} (got keys {sorted(obs)})")
        value = obs[OBS_KEY]
        arr = value if isinstance(value, Tensor) else np.asarray(value)
        dtype_ok = (
            arr.is_floating_point() if isinstance(arr, Tensor) else np.issubdtype(arr.dtype, np.floating)
        )
        if not dtype_ok:
            raise ObservationError(f"observation {OBS_KEY!r} must be floating point, got dtype {arr.dtype}")
        x = torch.as_tensor(arr).to(device=self.device, dtype=self.dtype)
        To, Do = self.config.n_obs_steps, self.config.obs_dim
        tail = (To, Do) if history else (Do,)
        if x.dim() == len(tail):
            x = x.unsqueeze(0)
        if x.dim() != len(tail) + 1 or tuple(x.shape[1:]) != tail or x.shape[0] < 1:
            want = f"{tail} or (B, {', '.join(map(str, tail))})"
            raise ObservationError(f"observation {OBS_KEY!r} must have shape {want}, got {tuple(arr.shape)}")
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = tuple(int(i) for i in (~finite).nonzero()[0])
            raise ObservationError(f"observation {OBS_KEY!r} has a non-finite value at index {bad}")
        if self.normalizer.is_fitted(OBS_KEY):
            stats = self.normalizer.get_stats(OBS_KEY)
            # LeRobot's IDENTITY mode has no statistics: its dimensions' range is unbounded (-inf, inf)
            ranged = torch.isfinite(stats["min"]) & torch.isfinite(stats["max"])  # (Do,)
            z = self.normalizer.normalize(OBS_KEY, x).abs()  # same shape as x; 1 at the range's edges
            far = (z > OBS_RANGE_LIMIT) & ranged.to(z.device)
            if bool(far.any()):
                bad = tuple(int(i) for i in far.nonzero()[0])
                lo, hi = float(stats["min"][bad[-1]]), float(stats["max"][bad[-1]])
                raise ObservationError(
                    f"observation {OBS_KEY!r} value {float(x[bad]):.6g} at index {bad} is far outside the "
                    f"normaliser's range [{lo:.6g}, {hi:.6g}] for that dimension (more than "
                    f"{OBS_RANGE_LIMIT:g}x its half-width from the centre): refusing to plan from it"
                )
        return x

    def _check_sampler_inputs(
        self, noise: Any, x0_guess: Tensor | None, shape: tuple[int, int, int]
    ) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None]:
        """Validate caller-supplied noise and Picard guess at the API boundary; returns them moved to
        the policy's device (None where not given).

        Raises:
            ValueError: naming the argument and the problem (not a pair, shape, dtype, non-finite).
        """
        dtype = self.dtype
        K = self.table.num_steps

        def check(name: str, value: Any, want: tuple[int, ...]) -> Tensor:
            if not isinstance(value, Tensor):
                raise ValueError(f"{name} must be a torch.Tensor of shape {want}, got {type(value).__name__}")
            if tuple(value.shape) != want:
                raise ValueError(f"{name} must have shape {want}, got {tuple(value.shape)}")
            if value.dtype != dtype:
                raise ValueError(f"{name} must have the policy's dtype {dtype}, got {value.dtype}")
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} holds non-finite values (NaN or inf)")
            return value.to(self.device)

        guess = None if x0_guess is None else check("x0_guess", x0_guess, shape)
        if noise is None:
            return None, guess
        if isinstance(noise, Tensor) or not isinstance(noise, tuple | list) or len(noise) != 2:
            got = (
                f"a single Tensor of shape {tuple(noise.shape)}"
                if isinstance(noise, Tensor)
                else repr(noise)[:80]
            )
            raise ValueError(
                f"noise must be a pair (x_T {shape}, step_noise {(K, *shape)}) as returned by draw_noise, "
                f"got {got}"
            )
        return (check("noise x_T", noise[0], shape), check("noise step_noise", noise[1], (K, *shape))), guess

    @torch.no_grad()
    def predict_action_chunk(
        self,
        obs: Mapping[str, Any],
        noise: tuple[Tensor, Tensor] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        x0_guess: Tensor | None = None,
        inpaint: Inpaint | None = None,
    ) -> ChunkPrediction:
        """Sample one plan per observation history.

        Args:
            obs: ``{"obs": (To, Do) or (B, To, Do)}`` in environment units.
            noise: optional pre-drawn ``(x_T (B, H, Da), step_noise (K, B, H, Da))``; drawn from
                ``generator`` (CPU) when omitted.
            generator: CPU generator(s) for the noise (one per sample for batch-independent noise).
            x0_guess: optional Picard guess of the sample (B, H, Da) in normalised units (warm start).
            inpaint: optional known rows of the plans (normalised units; see `diffusion.inpaint`), e.g.
                the actions a robot executes while this plan is computed.

        Returns:
            `ChunkPrediction` with the executed chunk rows [To-1, To-1+Ta) and the full plan.

        Raises:
            ObservationError: a bad observation (see `validate_observation`).
            ValueError: ``noise`` is not a pair of finite tensors of the policy's dtype with shapes
                (B, H, Da) and (K, B, H, Da), or ``x0_guess`` is not a finite (B, H, Da) tensor.
        """
        cfg = self.config
        self._follow_weight_changes()
        x_obs = self.validate_observation(obs, history=True)  # (B, To, Do), or a dict for images
        B = batch_size(x_obs)
        cond = self.condition(x_obs)  # (B, To*C)
        shape = (B, cfg.horizon, cfg.action_dim)
        noise, x0_guess = self._check_sampler_inputs(noise, x0_guess, shape)
        x_T, step_noise = noise or draw_noise(self.table, shape, generator, device=self.device)
        linear = self.sampler.is_parallel and self.sampler.coarse == "linear"
        result = run_sampler(
            self.sampler,
            self.denoise,
            x_T,
            self.table,
            step_noise,
            cond,
            x0_guess=x0_guess,
            inpaint=inpaint,
            coarse_jacobian=self._coarse_jacobian if linear else None,
        )
        if linear and self._coarse_jacobian is None:  # the first plan measures the linear coarse model
            self._coarse_jacobian = x0_jacobian(self.denoise, self.table, result.trajectory, cond)
        plan = self.normalizer.unnormalize("action", result.sample)  # (B, H, Da)
        start = cfg.action_start
        return ChunkPrediction(
            action=plan[:, start : start + cfg.n_action_steps],
            plan=plan,
            result=result,
            x_T=x_T,
            noise=step_noise,
        )

    def reset(self) -> None:
        """Clear the observation history, the action queue and the warm-start source."""
        self._obs_history.clear()
        self._action_queue.clear()
        self._previous = None

    @torch.no_grad()
    def select_action(
        self, obs: Mapping[str, Any], generator: torch.Generator | list[torch.Generator] | None = None
    ) -> Tensor:
        """One action per call from a queue refilled with a new chunk every Ta calls.

        Args:
            obs: ``{"obs": (Do,) or (B, Do)}``, the current observation (environment units).
            generator: CPU generator(s) for the sampling noise.

        Returns:
            (B, Da) action (B = 1 for an unbatched observation).
        """
        x = self.validate_observation(obs, history=False)  # (B, Do), or a dict for images
        if self._obs_history and batch_size(self._obs_history[-1]) != batch_size(x):
            raise ObservationError(
                f"observation batch size changed from {batch_size(self._obs_history[-1])} to {batch_size(x)} "
                "in the middle of an episode; call reset() before starting episodes with another batch size"
            )
        x = _own_copy(x)  # the caller may refill the array it passed (validation does not copy)
        if not self._obs_history:
            self._obs_history.extend([x] * self.config.n_obs_steps)  # the first obs is repeated
        else:
            self._obs_history.append(x)
        if not self._action_queue:
            history = stack_steps(list(self._obs_history))  # (B, To, Do), or a dict for images
            noise, guess = self.warm_start_inputs(self._previous, batch_size(history), generator)
            pred = self.predict_action_chunk(
                history if isinstance(history, dict) else {OBS_KEY: history},
                noise=noise,
                generator=generator,
                x0_guess=guess,
            )
            self._previous = pred
            self._action_queue.extend(pred.action.unbind(dim=1))  # Ta tensors of (B, Da)
        return self._action_queue.popleft()

    def warm_start_inputs(
        self, previous: ChunkPrediction | None, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None]:
        """Noise and Picard initial guess for the next chunk, from the previous chunk of the same batch.

        Returns ``(noise, x0_guess)``: ``noise`` is the shifted previous noise when common random numbers
        are on (else None: draw fresh), ``x0_guess`` the shifted previous sample when warm starting
        Picard (else None). Nothing is reused when there is no previous chunk or its batch size differs.
        """
        s = self.sampler
        if previous is None or not s.is_parallel or not s.warm_start or previous.x_T.shape[0] != batch_size:
            return None, None
        chunk = PreviousChunk(sample=previous.result.sample, x_T=previous.x_T, noise=previous.noise)
        return next_chunk_inputs(chunk, self.config.n_action_steps, s.common_random_numbers, generator)


def _own_copy(x: Tensor | dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
    """A copy of an observation (a tensor, or a dict of them for images) that no caller can write."""
    return {k: v.clone() for k, v in x.items()} if isinstance(x, dict) else x.clone()
