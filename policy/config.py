"""Typed configuration of the diffusion policy (plain dataclasses; no hydra, no OmegaConf, no torch).

Field names follow diffusion_policy / LeRobot so settings compare directly with the references.
String options are typed ``str`` (OmegaConf structured configs do not accept ``Literal``) and checked
against the allowed values in ``__post_init__``, which also checks every cross-field rule, so a bad
config fails when it is built, before anything runs.

A leaf of the package: it imports only the diffusion core's torch-free option names
(`diffusion/options.py`, re-exported here) and the refusal types (`errors.py`, itself a leaf), so every
layer can import it (`tests/test_layout.py`).
The settings rules other modules need (`validate_horizon`, `check_action_steps`,
`check_inference_steps`, `shipped_path`) are defined here once and called from there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parapolicy.policy.diffusion.options import (
    ALGORITHMS,
    BETA_SCHEDULES,
    COARSE_MODELS,
    ON_MAX_ITERS,
    PARALLEL_ALGORITHMS,
    PREDICTION_TYPES,
    REFILL_RULES,
    SAMPLER_KINDS,
    TIMESTEP_SPACINGS,
    UPDATE_RULES,
)
from parapolicy.policy.errors import ConfigError

__all__ = [
    "ALGORITHMS",
    "BETA_SCHEDULES",
    "COARSE_MODELS",
    "ON_MAX_ITERS",
    "PREDICTION_TYPES",
    "REFILL_RULES",
    "UPDATE_RULES",
    "SAMPLER_KINDS",
    "TIMESTEP_SPACINGS",
    "IMAGE_NORMS",
    "IMAGE_POOLS",
    "BACKBONES",
    "OBS_TYPES",
    "NETWORKS",
    "NoiseScheduleConfig",
    "PolicyConfig",
    "SamplerConfig",
    "TransformerConfig",
    "UNetConfig",
    "VisionConfig",
    "check_action_steps",
    "check_inference_steps",
    "max_action_steps",
    "validate_horizon",
]

OBS_TYPES = ("state", "pixels_agent_pos")
NETWORKS = ("unet", "transformer")
BACKBONES = ("resnet18",)
IMAGE_NORMS = ("group_norm", "batch_norm")
IMAGE_POOLS = ("spatial_softmax", "avg")
# channels of each backbone's last stage (what `avg` pooling gives per image)
BACKBONE_WIDTHS = {"resnet18": 512}


REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
"""The checkout this package runs from (an editable install); its ``assets/`` holds the shipped files."""


def shipped_path(path: str) -> str:
    """``path`` as given, except a relative ``assets/...`` path that does not exist from the working
    directory but names a file this checkout ships: then that file's absolute path, so that the
    shipped defaults (``assets/default_policy``, ``assets/pusht_expert.zarr``, ...) work from any
    working directory."""
    given = Path(path)
    shipped = REPOSITORY_ROOT / given
    if given.parts[:1] == ("assets",) and not given.exists() and shipped.exists():
        return str(shipped)
    return path


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def validate_horizon(horizon: int, down_dims: tuple[int, ...]) -> None:
    """Check that the U-Net can halve and re-double a sequence of length `horizon`.

    The encoder downsamples by 2 after every level except the last, so the horizon must be a positive
    multiple of `2 ** (len(down_dims) - 1)`.

    Raises:
        ValueError: naming the horizon, the factor and the widths.
    """
    factor = 2 ** (len(down_dims) - 1)
    if horizon <= 0 or horizon % factor != 0:
        raise ValueError(
            f"horizon={horizon} must be a positive multiple of 2**(len(down_dims)-1)={factor} "
            f"for down_dims={tuple(down_dims)}"
        )


def max_action_steps(horizon: int, n_obs_steps: int) -> int:
    """The most rows one plan of ``horizon`` rows can execute after its To - 1 context rows: H - To + 1."""
    return horizon - n_obs_steps + 1


def check_action_steps(
    n_action_steps: int, horizon: int, n_obs_steps: int, name: str = "n_action_steps"
) -> None:
    """Check that a plan of ``horizon`` rows holds ``n_action_steps`` executed rows after To - 1 context rows.

    Raises:
        ConfigError: ``n_action_steps > horizon - n_obs_steps + 1`` (the message calls it ``name``).
    """
    max_ta = max_action_steps(horizon, n_obs_steps)
    if n_action_steps > max_ta:
        raise ConfigError(
            f"{name}={n_action_steps} must be <= horizon - n_obs_steps + 1 = {max_ta} "
            f"(horizon={horizon}, n_obs_steps={n_obs_steps})"
        )


def check_inference_steps(num_inference_steps: int, num_train_timesteps: int) -> None:
    """Check that a sampler takes no more inference steps than the schedule has training timesteps.

    Raises:
        ConfigError: ``num_inference_steps > num_train_timesteps``.
    """
    if num_inference_steps > num_train_timesteps:
        raise ConfigError(
            f"sampler.num_inference_steps={num_inference_steps} must be <= the policy's "
            f"num_train_timesteps={num_train_timesteps}"
        )


@dataclass
class UNetConfig:
    """Sizes of `ConditionalUnet1d`. Reference: down_dims (256, 512, 1024), embed 256 (65.8 M params)."""

    down_dims: tuple[int, ...] = (256, 512, 1024)
    """Channel widths of the encoder levels; the horizon must be divisible by 2**(len - 1)."""
    diffusion_step_embed_dim: int = 256
    """Width of the sinusoidal step embedding."""
    kernel_size: int = 5
    """Temporal convolution kernel size (odd)."""
    n_groups: int = 8
    """GroupNorm groups; must divide every width."""
    cond_predict_scale: bool = True
    """FiLM with scale and bias (True, reference) or bias only."""

    def __post_init__(self) -> None:
        self.down_dims = tuple(int(d) for d in self.down_dims)
        if not self.down_dims or any(d <= 0 for d in self.down_dims):
            raise ValueError(f"down_dims must be non-empty positive widths, got {self.down_dims}")
        _check_positive(self, "diffusion_step_embed_dim", "kernel_size", "n_groups")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        bad = [d for d in self.down_dims if d % self.n_groups]
        if bad:
            raise ValueError(f"n_groups={self.n_groups} must divide every down_dims width, not {bad}")


@dataclass
class TransformerConfig:
    """Sizes of `TransformerDenoiser` (Diffusion Policy's ``TransformerForDiffusion``: the noisy actions
    decoded against a memory of the timestep and observation tokens). PushT reference: 8 layers, 4
    heads, width 256, causal attention, an MLP over the memory (``n_cond_layers`` 0)."""

    n_layer: int = 8
    """Decoder layers."""
    n_head: int = 4
    """Attention heads; must divide ``n_emb``."""
    n_emb: int = 256
    """Token width (even, >= 4: it is also the sinusoidal step embedding's width)."""
    p_drop_emb: float = 0.0
    """Dropout on the token embeddings (training only)."""
    p_drop_attn: float = 0.01
    """Dropout inside the transformer layers (training only)."""
    causal_attn: bool = True
    """Each action token attends to itself and earlier ones, and to the memory up to its own step."""
    n_cond_layers: int = 0
    """Transformer-encoder layers over the memory tokens; 0: a two-layer MLP (the reference)."""

    def __post_init__(self) -> None:
        _check_positive(self, "n_layer", "n_head", "n_emb")
        if self.n_emb % self.n_head or self.n_emb % 2 or self.n_emb < 4:
            raise ValueError(f"n_emb={self.n_emb} must be even, >= 4 and divisible by n_head={self.n_head}")
        if self.n_cond_layers < 0:
            raise ValueError(f"n_cond_layers must be >= 0, got {self.n_cond_layers}")
        for name in ("p_drop_emb", "p_drop_attn"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class VisionConfig:
    """The image encoder of a ``pixels_agent_pos`` policy (DP / robomimic style; see `model/vision.py`).

    ResNet trunk (no avgpool / fc) -> spatial softmax with ``num_keypoints`` keypoints -> Linear(2K, 2K)
    -> ReLU, so each image gives ``2 * num_keypoints`` features (64 for the reference's 32); or, with
    ``pool="avg"``, the trunk's global average (512 features for ResNet-18).
    """

    image_shape: tuple[int, ...] = (3, 96, 96)
    """(C, H, W) of one camera image as the policy receives it."""
    crop_shape: tuple[int, ...] | None = (84, 84)
    """(h, w) crop: random in training, centred in evaluation; None: no crop."""
    crop_is_random: bool = True
    """Random crop in training (False: the centre crop in training too)."""
    backbone: str = "resnet18"
    """torchvision backbone (built with ``weights=None``; nothing is ever downloaded)."""
    norm: str = "group_norm"
    """``group_norm`` (GroupNorm(C // 16, C) in place of every BatchNorm, the reference) or ``batch_norm``."""
    pool: str = "spatial_softmax"
    """How the trunk's feature map becomes features: ``spatial_softmax`` (K keypoints, then Linear(2K, 2K)
    and ReLU: LeRobot's and robomimic's encoder) or ``avg`` (each channel's global average, torchvision's
    avgpool: Diffusion Policy's ``MultiImageObsEncoder``)."""
    num_keypoints: int = 32
    """Spatial-softmax keypoints K (unused with ``pool="avg"``)."""
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel mean subtracted from images scaled to [0, 1] (0.5 / 0.5 maps them to [-1, 1])."""
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel standard deviation that images in [0, 1] are divided by."""
    backbone_weights: str | None = None
    """Optional local safetensors file of torchvision ``resnet18`` weights (batch_norm only): the trunk's
    initialisation when training starts; a checkpoint loads without it."""

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(d) for d in self.image_shape)
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if self.crop_shape is not None:
            self.crop_shape = tuple(int(d) for d in self.crop_shape)
        _check_choice("vision.backbone", self.backbone, BACKBONES)
        _check_choice("vision.norm", self.norm, IMAGE_NORMS)
        _check_choice("vision.pool", self.pool, IMAGE_POOLS)
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"vision.image_shape must be (C, H, W) > 0, got {self.image_shape}")
        if self.crop_shape is not None and (
            len(self.crop_shape) != 2
            or min(self.crop_shape) < 1
            or self.crop_shape[0] > self.image_shape[1]
            or self.crop_shape[1] > self.image_shape[2]
        ):
            raise ValueError(
                f"vision.crop_shape must be (h, w) within the image {self.image_shape[1:]}, "
                f"got {self.crop_shape}"
            )
        _check_positive(self, "num_keypoints")
        C = self.image_shape[0]
        if len(self.image_mean) != C or len(self.image_std) != C or min(self.image_std) <= 0:
            raise ValueError(
                f"vision.image_mean / image_std need {C} values (std > 0), "
                f"got {self.image_mean}, {self.image_std}"
            )
        if self.backbone_weights is not None and self.norm != "batch_norm":
            raise ValueError(
                "vision.backbone_weights needs vision.norm='batch_norm' (GroupNorm would discard them)"
            )

    @property
    def feature_dim(self) -> int:
        """Features per image: 2 x num_keypoints, or the trunk's width with ``pool="avg"``."""
        return BACKBONE_WIDTHS[self.backbone] if self.pool == "avg" else 2 * self.num_keypoints


@dataclass
class NoiseScheduleConfig:
    """The training noise schedule (reference: 100 steps, squaredcos_cap_v2, epsilon, clip to 1)."""

    num_train_timesteps: int = 100
    """T, the number of training diffusion steps."""
    beta_schedule: str = "squaredcos_cap_v2"
    """``squaredcos_cap_v2`` or ``linear``."""
    beta_start: float = 1e-4
    """First beta of the linear schedule."""
    beta_end: float = 0.02
    """Last beta of the linear schedule."""
    prediction_type: str = "epsilon"
    """What the network predicts: ``epsilon``, ``sample`` or ``v_prediction``."""
    clip_sample: bool = True
    """Clamp the predicted clean sample to [-clip_sample_range, clip_sample_range]."""
    clip_sample_range: float = 1.0
    """Clipping bound."""

    def __post_init__(self) -> None:
        _check_positive(self, "num_train_timesteps", "clip_sample_range")
        _check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")


@dataclass
class SamplerConfig:
    """How action chunks are sampled: the update rule and the execution order (sequential or Picard)."""

    kind: str = "ddpm"
    """Update rule: ``ddpm``, ``ddim`` (eta 0) or ``dpmsolver++`` (2M)."""
    num_inference_steps: int = 100
    """K, the number of denoising steps (<= num_train_timesteps)."""
    timestep_spacing: str = "leading"
    """How the K inference timesteps are spread over the T training ones: diffusers' DDPM/DDIM names
    (``leading``, ``trailing``, ``linspace``) for every rule, or DPMSolverMultistep's ``leading`` and
    ``linspace`` grids as ``dpm_leading`` and ``dpm_linspace`` (see `schedules.make_timesteps`)."""
    steps_offset: int = 0
    """Offset added to leading-spaced timesteps (DDIM)."""
    set_alpha_to_one: bool = True
    """DDIM / DPM-Solver++: the final step lands on alpha_bar = 1 (clean data)."""
    algorithm: str = "sequential"
    """``sequential`` (one network call per step) or ``picard`` (ParaDDPM sliding-window iteration)."""
    window: Any = 8
    """Picard window: steps evaluated in one batched network call, or ``"auto"`` (measured on the device)."""
    tol: float = 0.1
    """Picard tolerance on the per-step change, in units of that step's noise std."""
    max_iters: int | None = None
    """Cap on Picard iterations per chunk (None: no cap, K at most)."""
    on_max_iters: str = "finish_sequential"
    """At the cap: ``finish_sequential`` from the last trusted step, or ``return_iterate`` (flagged)."""
    warm_start: bool = False
    """Roll Picard's first window out from the previous chunk's sample, shifted by the executed rows."""
    common_random_numbers: bool = False
    """With warm_start: reuse the previous chunk's noise shifted by n_action_steps (fresh tail rows)."""
    abs_floor: float = 0.0
    """Picard: a step also counts as converged when its RMS change is below this (0: off)."""
    refill: str = "x0_rollout"
    """Picard guess for newly exposed slots: ``x0_rollout`` (model-free roll-out) or ``window_end``
    (ParaDiGMS: copy the old window end)."""
    update: str = "picard"
    """Picard correction: ``picard`` (ParaDiGMS, slope 1) or ``parareal`` (the held-x̂₀ slope of each step;
    same fixed point, fewer iterations for wide windows)."""
    coarse: str = "held_x0"
    """Parareal's model of a step: ``held_x0`` (x̂₀ held fixed) or ``linear`` (x̂₀ follows x through its
    Jacobian, which the policy measures on the first plan it samples with this sampler; see
    `diffusion.coarse`). Same fixed point; needs ``update=parareal``."""

    def __post_init__(self) -> None:
        _check_choice("sampler.kind", self.kind, SAMPLER_KINDS)
        _check_choice("sampler.timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        _check_choice("sampler.algorithm", self.algorithm, ALGORITHMS)
        _check_choice("sampler.on_max_iters", self.on_max_iters, ON_MAX_ITERS)
        _check_choice("sampler.refill", self.refill, REFILL_RULES)
        _check_choice("sampler.update", self.update, UPDATE_RULES)
        _check_choice("sampler.coarse", self.coarse, COARSE_MODELS)
        if self.coarse == "linear" and not (self.is_parallel and self.update == "parareal"):
            raise ValueError(
                "sampler.coarse='linear' is Parareal's coarse model: it needs sampler.algorithm=picard and "
                f"sampler.update=parareal, got algorithm={self.algorithm!r}, update={self.update!r}"
            )
        if self.num_inference_steps < 1:
            raise ValueError(f"sampler.num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.steps_offset < 0:
            raise ValueError(f"sampler.steps_offset must be >= 0, got {self.steps_offset}")
        if self.window != "auto":
            if isinstance(self.window, bool) or not isinstance(self.window, int):
                raise ValueError(f"sampler.window must be an integer or 'auto', got {self.window!r}")
            if self.window < 1 or (self.is_parallel and self.window > self.num_inference_steps):
                raise ValueError(
                    f"sampler.window must be in [1, num_inference_steps={self.num_inference_steps}], "
                    f"got {self.window}"
                )
        if not self.tol > 0.0:
            raise ValueError(f"sampler.tol must be > 0 (use a tiny value for exact parity), got {self.tol}")
        if self.abs_floor < 0:
            raise ValueError(f"sampler.abs_floor must be >= 0, got {self.abs_floor}")
        if self.common_random_numbers and not self.warm_start:
            raise ValueError("sampler.common_random_numbers needs sampler.warm_start=true")
        if self.max_iters is not None and self.max_iters < 1:
            raise ValueError(f"sampler.max_iters must be >= 1 or null, got {self.max_iters}")

    @property
    def is_parallel(self) -> bool:
        """True when the execution order evaluates a window of steps per call (Picard: ``window``,
        ``tol``, ``max_iters``, warm start apply), False for the sequential order. The one place
        that decides it; `diffusion.dispatch.run_sampler` and every caller read it."""
        return self.algorithm in PARALLEL_ALGORITHMS


@dataclass
class PolicyConfig:
    """The diffusion policy: shapes, action chunking, network, noise schedule and sampler.

    Observation/action timing (To = n_obs_steps, Ta = n_action_steps, H = horizon)::

        obs index:     t-1  t                          (the last To observations condition the plan)
        plan row:      0    1    2   ...   8   ...  15 (H rows predicted)
        executed:           |<--- rows To-1 .. To-1+Ta-1 --->|
    """

    obs_dim: int = 20
    """Do: per-step low-dim observation width (9 keypoints x 2 + agent xy; the agent xy alone for
    ``pixels_agent_pos``)."""
    obs_type: str = "state"
    """Observation keys: ``state`` ({"obs": (Do,)}) or ``pixels_agent_pos`` ({"pixels": (H, W, C) uint8,
    "agent_pos": (Do,)}, encoded by `vision`)."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    """The image encoder (used by ``pixels_agent_pos`` only)."""
    action_dim: int = 2
    """Da: action width (absolute pusher target)."""
    horizon: int = 16
    """H: rows of the predicted action plan."""
    n_obs_steps: int = 2
    """To: observations that condition the plan."""
    n_action_steps: int = 8
    """Ta: plan rows executed before replanning."""
    network: str = "unet"
    """The denoiser: ``unet`` (`ConditionalUnet1d`, FiLM-conditioned) or ``transformer``
    (`TransformerDenoiser`, one token per observation step)."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    """U-Net sizes (``network="unet"``)."""
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    """Transformer sizes (``network="transformer"``)."""
    schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    """Training noise schedule."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Inference sampler."""

    def __post_init__(self) -> None:
        _check_positive(self, "obs_dim", "action_dim", "horizon", "n_obs_steps", "n_action_steps")
        _check_choice("obs_type", self.obs_type, OBS_TYPES)
        _check_choice("network", self.network, NETWORKS)
        if self.network == "unet":
            validate_horizon(self.horizon, self.unet.down_dims)
        if self.n_obs_steps > self.horizon:
            raise ValueError(f"n_obs_steps={self.n_obs_steps} must be <= horizon={self.horizon}")
        self.check_action_steps(self.n_action_steps)
        self.check_sampler(self.sampler)

    @property
    def max_action_steps(self) -> int:
        """The most rows one plan can execute: H - To + 1."""
        return max_action_steps(self.horizon, self.n_obs_steps)

    def check_action_steps(self, n_action_steps: int, name: str = "n_action_steps") -> None:
        """Raise ConfigError unless ``n_action_steps <= max_action_steps`` (see `check_action_steps`)."""
        check_action_steps(n_action_steps, self.horizon, self.n_obs_steps, name)

    def check_sampler(self, sampler: SamplerConfig) -> None:
        """Raise ConfigError when ``sampler`` needs more inference steps than the training schedule has."""
        check_inference_steps(sampler.num_inference_steps, self.schedule.num_train_timesteps)

    @property
    def global_cond_dim(self) -> int:
        """Width of the FiLM condition from observations: To x Do (+ To x image features)."""
        return self.n_obs_steps * self.obs_step_dim

    @property
    def obs_step_dim(self) -> int:
        """Conditioning features per observation step: Do, plus the image features for images."""
        if self.obs_type == "pixels_agent_pos":
            return self.obs_dim + self.vision.feature_dim
        return self.obs_dim

    @property
    def action_start(self) -> int:
        """First executed plan row (To - 1)."""
        return self.n_obs_steps - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        """Build from `to_dict` output; unknown or missing-type keys raise ``ValueError``."""
        return _from_dict(cls, data, "policy")


def _type_ok(annotation: str, value: Any) -> bool:
    """Whether a JSON value fits a field annotation (the simple ones the configs use; others pass)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    checks = {
        "int": is_int,
        "float": is_int or isinstance(value, float),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "int | None": value is None or is_int,
        "tuple[int, ...]": isinstance(value, list | tuple)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
    }
    return checks.get(annotation, True)


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(fields)}")
    nested = {
        "unet": UNetConfig,
        "transformer": TransformerConfig,
        "schedule": NoiseScheduleConfig,
        "sampler": SamplerConfig,
        "vision": VisionConfig,
    }
    kwargs = {}
    for name, value in data.items():
        if cls is PolicyConfig and name in nested:
            kwargs[name] = _from_dict(nested[name], value, f"{where}.{name}")
        else:
            annotation = str(fields[name].type)
            if not _type_ok(annotation, value):
                raise ValueError(f"{where}.{name} must be {annotation}, got {type(value).__name__} {value!r}")
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from exc
