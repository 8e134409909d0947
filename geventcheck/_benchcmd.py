"""The ``geventcheck bench`` command: options, checks of the input, output files."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import click
from rich.console import Console

from ._bench import DEFAULT_BROKER, DEFAULT_POOLS, BenchError, PoolSpec, parse_pool, run_bench
from ._scenario import load_scenario


def _pool(value: str, flag: str) -> PoolSpec:
    try:
        return parse_pool(value)
    except ValueError as exc:
        raise click.UsageError(f"{flag}: {exc}") from None


def _folder_of(path: str | None, flag: str) -> str | None:
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise click.UsageError(f"{flag}: folder {os.path.dirname(path)!r} does not exist")
    return os.path.abspath(path) if path else None


@click.command()
@click.option("--scenario", "scenario_path", type=click.Path(dir_okay=False),
              help="The scenario: app, services, task inputs and its [bench] batch.")
@click.option("-A", "--app", "app", metavar="MODULE[:ATTR]",
              help="The Celery app (default: the scenario's).")
@click.option("--django-settings", metavar="MODULE", help="Django settings module.")
@click.option("--task", "tasks", multiple=True, metavar="NAME",
              help="A task of the I/O batch (repeatable; default: the scenario's [bench] tasks).")
@click.option("--cpu-task", metavar="NAME",
              help="The CPU-bound task of the mixed run (default: [bench] cpu_task).")
@click.option("--count", type=int, help="Tasks in the batch (default: [bench] count, or 400).")
@click.option("--latency", "latency_ms", type=float, metavar="MS",
              help="Every mocked HTTP route answers after MS ms, no jitter (default: the "
                   "scenario's latencies).")
@click.option("--pool", "pools", multiple=True, metavar="POOL:N",
              help=f"A worker config, run in order (repeatable; default: "
                   f"{' '.join(DEFAULT_POOLS)}). The first is the baseline of the ratios.")
@click.option("--mixed", "mixed", default="gevent:80", show_default=True, metavar="POOL:N|none",
              help="The worker of the mixed run (the batch plus one CPU-bound task).")
@click.option("--broker", "broker_url", default=DEFAULT_BROKER, show_default=True,
              metavar="URL", help="The real broker (Redis or RabbitMQ).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write every figure as JSON here (atomically).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write a PNG chart here (needs matplotlib: pip install 'geventcheck[plot]').")
def bench(  # noqa: PLR0917 - click passes every option as an argument
        scenario_path: str | None, app: str | None, django_settings: str | None,
          tasks: tuple[str, ...], cpu_task: str | None, count: int | None,
          latency_ms: float | None, pools: tuple[str, ...], mixed: str, broker_url: str,
          json_path: str | None, plot_path: str | None) -> None:
    """The same batch of tasks through real prefork and gevent workers, side by side.

    Throughput, latency, memory and CPU of each worker, the bound that holds for it
    (concurrency / service time, or the CPU ceiling), and what one CPU-bound task does to
    the I/O tasks sharing a gevent worker.
    """
    from .report._bench import render_json, render_plot, render_table
    from .report._json import write_atomic

    specs = [_pool(p, "--pool") for p in (pools or DEFAULT_POOLS)]
    mixed_spec = None if mixed == "none" else _pool(mixed, "--mixed")
    if count is not None and count <= 0:
        raise click.UsageError(f"--count: expected a positive number, got {count}")
    if latency_ms is not None and latency_ms < 0:
        raise click.UsageError(f"--latency: expected 0 or more, got {latency_ms:g}")
    json_path = _folder_of(json_path, "--json")
    plot_path = _folder_of(plot_path, "--plot")
    if plot_path:
        try:
            import matplotlib  # noqa: F401 - checked before any worker starts
        except ImportError:
            raise click.UsageError("--plot needs matplotlib: pip install "
                                   "'geventcheck[plot]'") from None
    scenario = load_scenario(scenario_path) if scenario_path else None
    app = app or (scenario.app if scenario else None)
    if not app:
        raise click.UsageError("give the app: -A MODULE, or a scenario with app = \"...\"")
    batch = scenario.bench if scenario else None
    names = list(tasks) or (list(batch.tasks) if batch else [])
    if not names:
        where = f"{scenario_path} has no [bench] table" if scenario_path else "no scenario"
        raise click.UsageError(f"{where}: name the batch's tasks with --task NAME")
    cpu_task = cpu_task or (batch.cpu_task if batch else None)
    if mixed_spec is not None and cpu_task is None:
        mixed_spec = None  # nothing to mix in: the table says no mixed run
    try:
        result = run_bench(app, broker_url, specs, names,
                           count=count or (batch.count if batch else 400), scenario=scenario,
                           latency_ms=latency_ms, cpu_task=cpu_task, mixed=mixed_spec,
                           django_settings=django_settings,
                           app_dir=None if scenario else os.getcwd())
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    if json_path:
        write_atomic(json_path, render_json(result))
    if plot_path:
        _write_plot(result, plot_path, render_plot)
    Console(width=None if sys.stdout.isatty() else 200).print(render_table(result))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


def _write_plot(result: object, path: str, render: object) -> None:
    """Through a temporary file beside ``path``, renamed over it: never a torn PNG."""
    fd, tmp = tempfile.mkstemp(prefix=".geventcheck-", suffix=".png",
                               dir=os.path.dirname(path))
    os.close(fd)
    try:
        render(result, tmp)  # type: ignore[operator]
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
