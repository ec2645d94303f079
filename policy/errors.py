"""The library's known refusals and the exit code each one ends a command with (torch-free leaf).

Every error the library raises on purpose for bad input or a bad state of the disk derives from
`ParapolicyError`. The entry points (`scripts/_hydra.py`) print such an error as one line,
``parapolicy-<verb>: error: <message>``, and exit with its ``exit_code``; anything else is a bug and
keeps its traceback (exit code 1). The codes are listed in docs/reliability.md:

====  ==========================================================================
 1    unexpected error (traceback printed), or a config Hydra rejected at compose time
 2    invalid configuration value (`ConfigError`)
 3    run folder already used (`RunFolderError`), or nothing to resume there (`NoRunToResumeError`)
 4    checkpoint refused (`CheckpointError`)
 5    demonstration store missing or refused (`DatasetError`, `StoreLockedError`, `ReadOnlyStoreError`)
 6    observation or policy-API input refused (`ObservationError`)
 7    requested device unavailable (`DeviceUnavailableError`)
 8    the run finished, its records are written, but it is not trustworthy (`RunFailedError`)
====  ==========================================================================
"""

from __future__ import annotations

EXIT_UNEXPECTED = 1


class ParapolicyError(Exception):
    """Base of the library's known refusals; ``exit_code`` is what a command exits with."""

    exit_code = 2


class ConfigError(ParapolicyError, ValueError):
    """A configuration value is invalid (the message names the field)."""

    exit_code = 2


class RunFolderError(ParapolicyError, FileExistsError):
    """A run folder already holds results of a command (results are never overwritten)."""

    exit_code = 3


class NoRunToResumeError(ParapolicyError, FileNotFoundError):
    """``resume=true`` on a folder that holds no run."""

    exit_code = 3


class DeviceUnavailableError(ParapolicyError, RuntimeError):
    """The requested torch device does not exist on this machine."""

    exit_code = 7


class RunFailedError(ParapolicyError, RuntimeError):
    """A run completed and wrote its records, but its results must not be trusted (e.g. guard share)."""

    exit_code = 8


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, in one line (``cuda`` without CUDA, ``mps`` ...).

    Raises:
        DeviceUnavailableError: naming the device and what is available.
    """
    import torch  # local: keep this module importable without torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailableError(f"device={device!r} is not a torch device: {exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device={device!r} but CUDA is not available on this machine (torch {torch.__version__}, "
                "CUDA build: " + str(torch.version.cuda) + "); use device=cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceUnavailableError(
            f"device={device!r} but MPS is not available on this machine; use device=cpu"
        )
