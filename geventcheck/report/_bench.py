"""``geventcheck bench`` output: the terminal table, the JSON document and the PNG chart."""

from __future__ import annotations

import datetime
import json
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .. import _version
from .._bench import BenchResult, RunFigures
from .._benchtargets import ratios, targets

LATENCY_MEASURE = ("send (bench clock) -> task_postrun (worker clock, same machine); "
                   "service time: task_prerun -> task_postrun of each task run alone")
BUSY_WARNING = 0.25
CPU_MEASURE = "utime+stime of the worker's processes (and reaped children) during the batch"


def memory_measure(result: BenchResult) -> str:
    kinds = {r.memory_measure for r in result.runs}
    kind = "PSS" if kinds == {"PSS"} else "RSS"
    return (f"peak {kind} summed over the worker's processes (main + pool children), sampled "
            "every 100 ms from /proc while the batch ran")


def to_dict(result: BenchResult) -> dict[str, Any]:
    first = result.runs[0] if result.runs else None
    return {
        "tool_version": _version.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "app": result.app, "scenario": result.scenario, "broker": result.broker,
        "latency_ms": result.latency_ms, "count": result.count, "tasks": result.tasks,
        "cpu_task": result.cpu_task, "cpus": result.cpus, "busy_before": result.busy_before,
        "measures": {"latency": LATENCY_MEASURE, "memory": memory_measure(result),
                     "cpu": CPU_MEASURE,
                     "bound": "the lower of concurrency / service time (Little's law) and "
                              "usable cores / CPU seconds per task (one core for a gevent "
                              "worker)"},
        "runs": [{**r.to_dict(), **(ratios(r, first) if first else {})} for r in result.runs],
        "mixed": result.mixed.to_dict() if result.mixed else None,
        "targets": [t.__dict__ for t in targets(result)],
        "notes": result.notes,
    }


def render_json(result: BenchResult) -> str:
    return json.dumps(to_dict(result), indent=2) + "\n"


def render_table(result: BenchResult) -> Group:
    first = result.runs[0]
    kind = "PSS" if all(r.memory_measure == "PSS" for r in result.runs) else "RSS"
    latency = (f", mocked HTTP latency {result.latency_ms:g} ms" if result.latency_ms is not None
               else ", the scenario's latencies" if result.scenario else "")
    table = Table(title=f"geventcheck bench: {result.app}, {result.count} tasks{latency}, "
                        f"{result.cpus} CPUs")
    for name in ("pool", "tasks/s", "x", "p50 ms", "p95 ms", f"{kind} MB", "x mem", "RSS sum MB",
                 "CPU s", "CPU ms/task", "bound that holds (other)", "of bound"):
        table.add_column(name, justify="left" if name.startswith(("pool", "bound")) else "right")
    for run in result.runs:
        r = ratios(run, first)
        table.add_row(
            run.label, f"{run.throughput:.1f}", f"{r['throughput_x']:.1f}x",
            f"{run.latency_p50_ms:.0f}", f"{run.latency_p95_ms:.0f}", f"{run.memory_mb:.0f}",
            f"{r['memory_x']:.2f}x", f"{run.rss_peak_mb:.0f}", f"{run.cpu_s:.2f}",
            f"{run.cpu_ms_per_task:.1f}", _bound_text(run), f"{run.of_bound:.0%}")
    parts: list[Any] = [table]
    if result.busy_before > BUSY_WARNING:
        parts.append(Text(f"other processes kept the CPUs {result.busy_before:.0%} busy before "
                          "the first run: these figures are not what this machine can do",
                          style="bold yellow"))
    for run in result.runs:
        if run.failed:
            parts.append(Text(f"{run.label}: {run.failed} of {run.sent} tasks failed: "
                              f"{'; '.join(run.errors)}", style="yellow"))
        if run.pool == "gevent" and not run.patched:
            parts.append(Text(f"{run.label}: the worker was not monkey-patched", style="red"))
    if (mixed := result.mixed) is not None:
        without, with_ = mixed.without, mixed.with_cpu
        parts.append(Text(
            f"mixed on {mixed.label}: waves of {mixed.wave} I/O tasks sent over 0.5 s, "
            f"{mixed.rounds} without and {mixed.rounds} with one {mixed.cpu_task} sent halfway "
            f"({mixed.cpu_task_run_ms:.0f} ms in the worker): I/O p95 {without['p95_ms']:.0f} -> "
            f"{with_['p95_ms']:.0f} ms, max {without['max_ms']:.0f} -> {with_['max_ms']:.0f} ms"))
    for run in result.runs:
        if run.pool == "gevent" and run.solo:
            body = sum(f["cpu_ms"] for f in run.solo.values()) / len(run.solo)
            heaviest = max(run.solo.items(), key=lambda item: item[1]["cpu_ms"])
            parts.append(Text(
                f"why the CPU ceiling ({run.label}): run alone, a task used {body:.1f} ms of "
                f"CPU on average between task_prerun and task_postrun (most: "
                f"{heaviest[0].rsplit('.', 1)[-1]} {heaviest[1]['cpu_ms']:.1f} ms); in the batch "
                f"the worker's process used {run.cpu_ms_per_task:.1f} ms per task, all told: one "
                f"core runs at most {run.cpu_bound:.0f} tasks/s"))
            break
    busy = [f"{r.label} {r.machine_busy:.0%}" for r in result.runs]
    services = [f"{r.services_cpu_ms_per_task:.1f}" for r in result.runs
                if r.services_cpu_ms_per_task is not None]
    parts.append(Text(f"machine CPU busy during each batch (every process: worker, mocks, "
                      f"broker, bench, others): {', '.join(busy)}"
                      + (f"; the mock services used {'/'.join(services)} ms CPU per task"
                         if services else ""), style="dim"))
    for target in targets(result):
        verdict = "PASS" if target.passed else "FAIL"
        parts.append(Text(f"{verdict}  {target.name}: {target.measured} (target "
                          f"{target.wanted})", style="green" if target.passed else "red"))
    parts.append(Text(f"latency: {LATENCY_MEASURE}; memory: {memory_measure(result)}; CPU: "
                      f"{CPU_MEASURE}", style="dim"))
    return Group(*parts)


def _bound_text(run: RunFigures) -> str:
    if run.bound_name == "CPU ceiling":
        return f"{run.cpu_bound:.0f}/s CPU (concurrency {run.little_bound:.0f}/s)"
    return f"{run.little_bound:.0f}/s concurrency (CPU {run.cpu_bound:.0f}/s)"


def render_plot(result: BenchResult, path: str) -> None:
    """A PNG: throughput against its bound, memory, batch latency, and the mixed run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.label for r in result.runs]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (thr, mem), (lat, mix) = axes
    thr.bar(labels, [r.throughput for r in result.runs], color="tab:blue", label="measured")
    thr.scatter(labels, [r.bound for r in result.runs], color="black", marker="_", s=900,
                label="bound that holds", zorder=3)
    thr.set_title("throughput (tasks/s)")
    thr.legend(fontsize=8)
    kind = "PSS" if all(r.memory_measure == "PSS" for r in result.runs) else "RSS"
    mem.bar(labels, [r.memory_mb for r in result.runs], color="tab:orange")
    mem.set_title(f"peak memory, {kind} summed over the worker's processes (MB)")
    lat.bar(labels, [r.latency_p95_ms / 1000 for r in result.runs], color="tab:green",
            label="p95")
    lat.bar(labels, [r.latency_p50_ms / 1000 for r in result.runs], color="tab:olive",
            label="p50")
    lat.set_title("task latency in the batch, send -> done (s)")
    lat.legend(fontsize=8)
    if (mixed := result.mixed) is not None:
        names = ["p50", "p95", "max"]
        positions = range(len(names))
        mix.bar([p - 0.2 for p in positions], [mixed.without[f"{n}_ms"] for n in names],
                width=0.4, color="tab:gray", label="I/O waves alone")
        mix.bar([p + 0.2 for p in positions], [mixed.with_cpu[f"{n}_ms"] for n in names],
                width=0.4, color="tab:red", label="with one CPU-bound task")
        mix.set_xticks(list(positions), names)
        mix.set_title(f"mixed on {mixed.label}: I/O task latency (ms)")
        mix.legend(fontsize=8)
    else:
        mix.set_axis_off()
    for ax in axes.flat:
        ax.tick_params(axis="x", labelsize=8)
    latency = f", mocked latency {result.latency_ms:g} ms" if result.latency_ms is not None \
        else ""
    fig.suptitle(f"geventcheck bench: {result.app}, {result.count} tasks{latency}, "
                 f"{result.cpus} CPUs")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
