"""Memory and CPU of a process tree, read from /proc (Linux).

Memory is PSS (``/proc/PID/smaps_rollup``) when the kernel has it: prefork children share
most of their pages with the parent, and RSS would count those once per child. RSS is read
too, and used alone where PSS is missing. CPU is user + system time of every process in
the tree, plus what its reaped children used.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children", encoding="ascii") as fh:
                    todo.extend(int(child) for child in fh.read().split())
            except OSError:
                continue
    return found


def memory_kb(pid: int) -> tuple[int | None, int]:
    """(PSS or None, RSS) of one process in kB; (None, 0) when it is gone."""
    pss = rss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    if rss is None:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as fh:
                rss = next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0)
        except OSError:
            rss = 0
    return pss, rss


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the tree under ``pid``, reaped children included."""
    total = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/stat", encoding="ascii") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / _TICKS


@dataclass
class MemoryPeak:
    pss_mb: float | None  # None when the kernel has no smaps_rollup
    rss_mb: float
    processes: int
    samples: int


class TreeSampler:
    """Samples the tree's summed memory every ``interval`` s in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="geventcheck-sampler",
                                        daemon=True)
        self.peak = MemoryPeak(None, 0.0, 0, 0)

    def sample(self) -> None:
        members = tree(self.pid)
        readings = [memory_kb(p) for p in members]
        rss = sum(r for _, r in readings) / 1024
        pss_values = [p for p, _ in readings if p is not None]
        pss = sum(pss_values) / 1024 if len(pss_values) == len(readings) else None
        peak = self.peak
        peak.samples += 1
        peak.rss_mb = max(peak.rss_mb, rss)
        if pss is not None:
            peak.pss_mb = max(peak.pss_mb or 0.0, pss)
        peak.processes = max(peak.processes, len(members))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from the first line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total
