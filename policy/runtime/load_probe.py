"""Machine facts and a load probe for timing jobs (no torch, no hydra).

`machine_info` names the CPU and the threads a timing ran with; `LoadProbe` measures, over a timed
section, the load averages before and after, this process's CPU time against the wall time, and (on
Linux, from ``/proc/stat``) how many CPUs other processes kept busy meanwhile. A timing taken while
other processes held CPUs is not comparable with one taken on a quiet machine; the probe says which.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

__all__ = ["LoadProbe", "cpu_model", "machine_info"]

_PROC_STAT = "/proc/stat"
_CPUINFO = "/proc/cpuinfo"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else `platform.processor()`, else ``"unknown"``."""
    try:
        with open(_CPUINFO, encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(torch_threads: int) -> dict[str, Any]:
    """CPU model, logical CPUs, CPUs this process may run on, and the torch intra-op threads used."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": int(torch_threads),
    }


def _busy_cpu_seconds() -> float | None:
    """System-wide busy CPU time (all CPUs, seconds) from ``/proc/stat``; None where it is missing."""
    try:
        with open(_PROC_STAT, encoding="utf-8") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


class LoadProbe:
    """Measure the machine's load over one timed section: ``with LoadProbe() as p: ...; p.result``.

    ``result`` holds ``wall_s``; ``process_cpu_s`` and ``cpu_per_wall`` (this process's CPU time, and
    that over the wall time: about the threads it kept busy); ``foreign_busy_cpus`` (CPUs other
    processes kept busy on average, None without ``/proc/stat``); ``loadavg_before`` and
    ``loadavg_after`` (1-minute load averages).
    """

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}

    def __enter__(self) -> LoadProbe:
        self._load0 = os.getloadavg()[0]
        self._busy0 = _busy_cpu_seconds()
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall0
        cpu = time.process_time() - self._cpu0
        busy1 = _busy_cpu_seconds()
        foreign = None
        if self._busy0 is not None and busy1 is not None and wall > 0:
            foreign = max(0.0, (busy1 - self._busy0 - cpu) / wall)
        self.result = {
            "wall_s": wall,
            "process_cpu_s": cpu,
            "cpu_per_wall": cpu / wall if wall > 0 else 0.0,
            "foreign_busy_cpus": foreign,
            "loadavg_before": self._load0,
            "loadavg_after": os.getloadavg()[0],
        }
