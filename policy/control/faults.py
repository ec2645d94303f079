"""`Fault`: why a plan has no actions; the one mapping of fault codes (log column, CSV label, counter)."""

from __future__ import annotations

import enum


class Fault(enum.IntEnum):
    """Why a plan has no actions (its integer value is the chunk log's ``fault`` column)."""

    NONE = 0
    NAN = 1
    """The plan had a non-finite action."""
    ERROR = 2
    """Planning raised (e.g. the denoiser)."""
    OBSERVATION = 3
    """The observation was rejected before the model."""

    @property
    def label(self) -> str:
        """The name in CSVs: ``""``, ``nan``, ``error``, ``observation``."""
        return "" if self is Fault.NONE else self.name.lower()

    @property
    def counter(self) -> str:
        """The episode-record counter this fault increments."""
        counters = {
            Fault.NAN: "nan_chunks",
            Fault.ERROR: "denoiser_errors",
            Fault.OBSERVATION: "observation_errors",
        }
        if self not in counters:
            raise ValueError("Fault.NONE counts nothing")
        return counters[self]
