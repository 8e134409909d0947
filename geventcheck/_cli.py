"""The ``geventcheck`` command. Exit codes: 0 all go (gate open), 1 findings or nothing
certified (gate closed), 2 usage or policy, 3 internal error."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import _version
from ._audit import AuditPlan, run_audit
from ._doctor import DoctorError
from ._gatecmd import gate_options
from ._model import Report, Settings
from ._policy import PolicyError
from ._scenario import ScenarioError, load_scenario
from .patches import SHIMS
from .report import render_json, render_table, write_atomic
from .runner._parent import AuditError, AuditInternalError, Callbacks, TaskRecord
from .runner._sandbox import SandboxError
from .services import ServiceError

EXIT_USAGE = 2
EXIT_INTERNAL = 3


def _positive(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Option callback: counts, durations and thresholds must be above zero."""
    if value is not None and value <= 0:
        raise click.BadParameter(f"expected a positive number, got {value!r}")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version.__version__, prog_name="geventcheck")
def cli() -> None:
    """Is this Celery task safe to run on a gevent worker? And if not, why, and how to fix it."""


# The options of an audit, shared by `audit` and `gate` (which runs one the same way).
AUDIT_OPTIONS: tuple[Callable[[Callable[..., Any]], Callable[..., Any]], ...] = (
    click.option("-A", "--app", "app", metavar="MODULE[:ATTR]",
                 help="The Celery app, resolved as `celery -A` does (default: the scenario's)."),
    click.option("--scenario", "scenario_path", type=click.Path(dir_okay=False),
                 help="A scenario file (TOML): the app, task inputs, environment."),
    click.option("--django-settings", metavar="MODULE",
                 help="Django settings module (default: $DJANGO_SETTINGS_MODULE); "
                      "django.setup() runs after patching."),
    click.option("--workdir", type=click.Path(exists=True, file_okay=False),
                 help="Change to this folder before loading the app (as celery --workdir)."),
    click.option("--task", "globs", multiple=True, metavar="GLOB",
                 help="Only tasks whose name matches (repeatable)."),
    click.option("-c", "--concurrency", default=4, show_default=True, type=int,
                 callback=_positive,
                 help="Concurrent copies per task, as the gevent pool runs them."),
    click.option("--warn-ms", default=10.0, show_default=True, type=float, callback=_positive,
                 help="Report hub stalls longer than this."),
    click.option("--threshold-ms", default=50.0, show_default=True, type=float,
                 callback=_positive, help="Stalls longer than this make a task no-go."),
    click.option("--task-timeout", default=30.0, show_default=True, type=float,
                 callback=_positive, help="Seconds before a hung task becomes a finding."),
    click.option("--runs", default=3, show_default=True, type=int, callback=_positive,
                 help="Measured solo runs per task (after one warm-up run)."),
    click.option("--explore", default=2, show_default=True, type=click.IntRange(min=0),
                 help="Schedules to try per task, hunting an interleaving where concurrent "
                      "copies disagree (0: off; needs Hypothesis)."),
    click.option("--explore-seed", default=0, show_default=True, type=int,
                 help="Seed of the schedule search, to reproduce a finding."),
    click.option("--shuffle", type=int, metavar="SEED",
                 help="Run the tasks in a random order this seed reproduces (default: by "
                      "name)."),
    click.option("--sandbox", is_flag=True,
                 help="Run the audited process tree in a network namespace of its own, where "
                      "only the allowed endpoints are bridged in (Linux, root)."),
    click.option("--shim", "shims", multiple=True, type=click.Choice(sorted(SHIMS)),
                 help="Apply a gevent shim in the audited process first (repeatable)."),
    click.option("--allow-publish", is_flag=True,
                 help="Send the messages tasks publish (chains, chords, retries, send_task) "
                      "to the app's real broker; by default they are captured and counted."),
    click.option("-v", "--verbose", is_flag=True,
                 help="Also show info findings (warm-up stalls)."),
)


def audit_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with every audit option, in the order --help lists them."""
    for option in reversed(AUDIT_OPTIONS):
        func = option(func)
    return func


def make_audit_plan(  # noqa: PLR0917 - the audit's options, one by one
    app: str | None, scenario_path: str | None, django_settings: str | None,
    workdir: str | None, globs: tuple[str, ...], concurrency: int, warn_ms: float,
    threshold_ms: float, task_timeout: float, runs: int, explore: int, explore_seed: int,
    shims: tuple[str, ...], shuffle: int | None = None, sandbox: bool = False,
    allow_publish: bool = False, with_shims: str | None = None, shard: str | None = None,
) -> AuditPlan:
    """The audit the options ask for, the scenario merged in; UsageError when incomplete."""
    scenario = load_scenario(scenario_path) if scenario_path else None
    if scenario is not None:
        app = app or scenario.app
        django_settings = django_settings or scenario.django_settings
        workdir = workdir or scenario.workdir
    if not app:
        raise click.UsageError("missing the app: give -A/--app, or `app` in a --scenario file")
    if warn_ms > threshold_ms:
        raise click.UsageError(f"--warn-ms ({warn_ms:g}) must not exceed --threshold-ms "
                               f"({threshold_ms:g})")
    shim_plan = _with_shims(with_shims)
    shard = _shard(shard)
    settings = Settings(threshold_ms=threshold_ms, warn_ms=warn_ms, concurrency=concurrency,
                        task_timeout_s=task_timeout, runs=runs, mode="inprocess",
                        shims=tuple(shims), explore=explore if _has_hypothesis() else 0,
                        explore_seed=explore_seed, shuffle=shuffle, sandbox=sandbox,
                        allow_publish=allow_publish or bool(scenario and scenario.allow_publish),
                        shard=shard)
    return AuditPlan(app, settings, django_settings=django_settings, workdir=workdir,
                     globs=globs, scenario=scenario, with_shims=shim_plan)


def run_with_progress(plan: AuditPlan) -> tuple[Report, list[str]]:
    """Run the audit with a progress bar on stderr; UsageError when the app has no task."""
    err = Console(stderr=True)
    progress = Progress(TextColumn("[bold]auditing"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                        transient=True)
    bar: dict[str, Any] = {}

    def on_tasks(tasks: list[TaskRecord]) -> None:
        runnable = [t for t in tasks if t.runnable]
        bar["id"] = progress.add_task("loading", total=len(runnable))

    def on_start(task: TaskRecord) -> None:
        progress.update(bar["id"], description=task.name)

    def on_done(task: TaskRecord) -> None:
        progress.advance(bar["id"])

    with progress:
        report, notes = run_audit(plan, Callbacks(on_tasks, on_start, on_done))
    if not report.tasks and plan.settings.shard is None:  # a shard may hold no task
        raise click.UsageError(
            f"no tasks to audit in {plan.app!r}"
            + (f" matching {', '.join(plan.globs)}" if plan.globs else ""))
    return report, notes


@cli.command()
@audit_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the JSON report here (atomically).")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the migration plan for operations here, as Markdown.")
@click.option("--with-shims", "with_shims", metavar="auto|NAME[,NAME...]",
              help="Prove the fixes: apply the shims the drivers need (auto) or the ones named, "
                   "audit again the tasks that were no-go because of them, and report "
                   "before -> after.")
@click.option("--shard", "shard", metavar="I/N",
              help="Audit only shard I of N (by a hash of each task's name), for a CI matrix; "
                   "join the reports with `geventcheck report --merge`.")
@click.option("--mode", type=click.Choice(["inprocess", "worker"]), default="inprocess",
              show_default=True,
              help="worker: send the tasks as messages to a real `celery worker -P gevent` "
                   "started through Celery's own entry point.")
@click.option("--broker", "broker_url", metavar="URL",
              help="--mode worker: the broker to use (default: an embedded one in a temporary "
                   "folder, no server needed).")
def audit(  # noqa: PLR0917 - click passes every option as an argument
    app: str | None, scenario_path: str | None, django_settings: str | None,
    workdir: str | None, globs: tuple[str, ...],
    concurrency: int, warn_ms: float, threshold_ms: float, task_timeout: float, runs: int,
    explore: int, explore_seed: int, shuffle: int | None, sandbox: bool,
    shims: tuple[str, ...], allow_publish: bool, json_path: str | None,
    markdown_path: str | None, with_shims: str | None, shard: str | None, mode: str,
    broker_url: str | None, verbose: bool,
) -> None:
    """Run every task of a Celery app under a monkey-patched gevent worker and judge it."""
    plan = make_audit_plan(app, scenario_path, django_settings, workdir, globs, concurrency,
                           warn_ms, threshold_ms, task_timeout, runs, explore, explore_seed,
                           shims, shuffle=shuffle, sandbox=sandbox,
                           allow_publish=allow_publish, with_shims=with_shims, shard=shard)
    for flag, path in (("--json", json_path), ("--markdown", markdown_path)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise click.UsageError(f"{flag}: folder {os.path.dirname(path)!r} does not exist")
    out = Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True)
    json_path = os.path.abspath(json_path) if json_path else None
    markdown_path = os.path.abspath(markdown_path) if markdown_path else None
    if mode == "worker":
        from ._workermode import check_plan, run_worker_audit

        plan = check_plan(plan)
        report, notes = run_worker_audit(plan, broker_url)
        if not report.tasks:
            raise click.UsageError(f"no tasks to audit in {plan.app!r}")
    elif broker_url:
        raise click.UsageError("--broker needs --mode worker")
    else:
        report, notes = run_with_progress(plan)
    if json_path:
        write_atomic(json_path, render_json(report))
    if markdown_path:
        from ._plan import make_plan, render_markdown

        write_atomic(markdown_path, render_markdown(report, make_plan(report)))
    out.print(render_table(report, verbose=verbose))
    for note in notes:
        err.print(f"note: {note}", style="dim")
    if not report.tasks:  # --shard: this machine's share is empty, the report says so
        click.echo(f"geventcheck: shard {plan.settings.shard} holds none of the app's tasks",
                   err=True)
        sys.exit(0)
    if report.certified_nothing:
        click.echo(f"geventcheck: nothing was certified: none of the {len(report.tasks)} tasks "
                   "ran; give the tasks that need arguments their inputs in a scenario file "
                   '(--scenario FILE, [tasks."NAME"] calls = [{ args = [...] }])', err=True)
    sys.exit(report.exit_code)


@cli.command()
@audit_options
@gate_options
@click.pass_context
def gate(ctx: click.Context, /, **options: Any) -> None:
    """Open (exit 0) or closed (exit 1): are the tasks on the gevent queues certified or waived?

    Runs the audit (same options) or reads reports (--report), then applies the policy in
    [tool.geventcheck] of pyproject.toml (or --config): waivers, gevent queues, baseline.
    """
    from ._gatecmd import run_gate

    run_gate(ctx, options)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("-A", "--app", "app", required=True, metavar="MODULE[:ATTR]",
              help="The Celery app, as the worker's command line gives it.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the diagnosis as JSON here (atomically).")
@click.option("--live", is_flag=True,
              help="Also start the real worker for a few seconds and ask it (needs its broker).")
@click.option("--live-timeout", default=20.0, show_default=True, type=float,
              callback=_positive, help="Seconds to wait for the live worker's answer.")
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED, required=True)
def doctor(app: str, json_path: str | None, live: bool, live_timeout: float,
           worker_args: tuple[str, ...]) -> None:
    """The pool and patching a `celery -A APP worker ...` command line really gives.

    Give the worker's arguments after --, as in the deployment:
    geventcheck doctor -A proj -- worker -P gevent -c 80 -Q io
    """
    from ._doctor import diagnose, run_live
    from .report._doctor import render_diagnosis

    if json_path and not os.path.isdir(os.path.dirname(os.path.abspath(json_path))):
        raise click.UsageError(f"--json: folder {os.path.dirname(json_path)!r} does not exist")
    diagnosis = diagnose(app, list(worker_args))
    if live:
        diagnosis = run_live(diagnosis, timeout=live_timeout)
    if json_path:
        import json

        write_atomic(os.path.abspath(json_path), json.dumps(diagnosis.to_dict(), indent=2) + "\n")
    Console(width=None if sys.stdout.isatty() else 160).print(render_diagnosis(diagnosis))
    sys.exit(diagnosis.exit_code)


def _with_shims(value: str | None) -> tuple[str, ...]:
    from ._shimaudit import parse

    if value is None:
        return ()
    try:
        return parse(value)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _shard(value: str | None) -> str | None:
    """--shard I/N, normalised ("2/3"); UsageError when malformed or out of range."""
    from ._shard import parse

    if value is None:
        return None
    try:
        return str(parse(value))
    except ValueError as exc:
        raise click.UsageError(f"--shard: {exc}") from None


def _has_hypothesis() -> bool:
    import importlib.util

    return importlib.util.find_spec("hypothesis") is not None


def _register() -> None:
    from ._benchcmd import bench
    from ._reportcmd import report

    cli.add_command(report)
    cli.add_command(bench)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure is one line and a documented exit code."""
    try:
        cli.main(args=argv, prog_name="geventcheck", standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"geventcheck: error: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE)
    except (AuditError, ScenarioError, ServiceError, DoctorError, PolicyError, SandboxError,
            click.ClickException) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        click.echo(f"geventcheck: error: {message}", err=True)
        sys.exit(EXIT_USAGE)
    except AuditInternalError as exc:
        click.echo(f"geventcheck: internal error: {exc}", err=True)
        sys.exit(EXIT_INTERNAL)
    except click.exceptions.Abort:
        click.echo("geventcheck: aborted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("geventcheck: interrupted", err=True)
        sys.exit(130)
    except Exception:
        click.echo("geventcheck: internal error (please report it with this trace):", err=True)
        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)
