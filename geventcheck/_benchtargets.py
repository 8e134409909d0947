"""The figures ``geventcheck bench`` is judged by: ratios to the first run, and the targets.

Issue #12's targets, for I/O tasks at 200 ms on 2 cores: the last gevent run at least 6x the
throughput of the first (prefork) run, at no more than a fifth of its memory, and every
gevent run within 90% of the bound that holds for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._bench import BenchResult, RunFigures

THROUGHPUT_X = 6.0
MEMORY_FRACTION = 1 / 5
OF_BOUND = 0.90


@dataclass(frozen=True)
class Target:
    name: str
    wanted: str
    measured: str
    passed: bool


def ratios(run: RunFigures, first: RunFigures) -> dict[str, float]:
    """``run`` against the first run: throughput, memory and CPU per task, as multiples."""
    return {"throughput_x": run.throughput / first.throughput,
            "memory_x": run.memory_mb / first.memory_mb,
            "cpu_per_task_x": (run.cpu_ms_per_task / first.cpu_ms_per_task
                               if first.cpu_ms_per_task else float("nan"))}


def targets(result: BenchResult) -> list[Target]:
    runs = result.runs
    out: list[Target] = []
    gevent = [r for r in runs if r.pool == "gevent"]
    if runs and runs[0].pool == "prefork" and gevent:
        base, last = runs[0], gevent[-1]
        x = last.throughput / base.throughput
        out.append(Target(f"throughput {last.label} vs {base.label}",
                          f">= {THROUGHPUT_X:g}x", f"{x:.1f}x", x >= THROUGHPUT_X))
        share = last.memory_mb / base.memory_mb
        out.append(Target(f"memory {last.label} vs {base.label}",
                          f"<= {MEMORY_FRACTION:.2f}x", f"{share:.2f}x",
                          share <= MEMORY_FRACTION))
    out += [Target(f"{r.label} of its bound ({r.bound_name})", f">= {OF_BOUND:.0%}",
                   f"{r.of_bound:.0%}", r.of_bound >= OF_BOUND) for r in gevent]
    return out
