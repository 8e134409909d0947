"""``geventcheck gate``: resolve the settings, get a report, decide, write the CI files.

The click command is registered in ``_cli`` with the audit's own options; this
module adds the gate's options and does the work, so that the gate runs the
audit exactly as ``geventcheck audit`` does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from . import _version
from ._gate import GateResult, evaluate, merge_reports, read_baseline, read_report, render_baseline
from ._model import Report
from ._policy import Policy, Setting, find_pyproject, load_policy, resolve
from .patches import SHIMS

MESSAGES = {
    "report_and_audit": "--report reads an audit that already ran: {options} would not change "
                        "it (give them to the audit that wrote the report)",
    "update_needs_path": "--update-baseline needs a baseline file: give --baseline FILE or "
                         "`baseline` in the policy",
    "no_folder": "{flag}: folder {folder!r} does not exist",
    "warn_above": "{warn_source} ({warn:g}) must not exceed {threshold_source} ({threshold:g})",
    "shim": "{source}: unknown shim {name!r} (known: {known})",
    "baseline_written": "baseline: {count} accepted problem(s) written to {path}",
}

# audit option (click parameter name) -> (policy key, flag for messages)
_AUDIT_KEYS: dict[str, tuple[str, str]] = {
    "app": ("app", "--app"),
    "scenario_path": ("scenario", "--scenario"),
    "django_settings": ("django_settings", "--django-settings"),
    "workdir": ("workdir", "--workdir"),
    "globs": ("tasks", "--task"),
    "concurrency": ("concurrency", "--concurrency"),
    "warn_ms": ("warn_ms", "--warn-ms"),
    "threshold_ms": ("threshold_ms", "--threshold-ms"),
    "task_timeout": ("task_timeout", "--task-timeout"),
    "runs": ("runs", "--runs"),
    "explore": ("explore", "--explore"),
    "explore_seed": ("explore_seed", "--explore-seed"),
    "shims": ("shims", "--shim"),
}

_OUTPUTS = (("--junit-xml", "junit_path"), ("--sarif", "sarif_path"),
            ("--markdown", "markdown_path"), ("--json", "json_path"))

_GATE_OPTIONS: tuple[Callable[[Callable[..., Any]], Callable[..., Any]], ...] = (
    click.option("--config", "config_path", type=click.Path(dir_okay=False),
                 help="The policy file (default: [tool.geventcheck] of the first pyproject.toml "
                      "from here upwards)."),
    click.option("--report", "report_paths", multiple=True, type=click.Path(dir_okay=False),
                 help="Gate this audit report (from `audit --json`) instead of auditing; "
                      "repeat to merge several."),
    click.option("--gevent-queue", "gevent_queues", multiple=True, metavar="QUEUE",
                 help="Gate only the tasks routed to this queue (repeatable; default: the "
                      "policy's gevent_queues, else every task)."),
    click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False),
                 help="Accept the problems recorded in this file; only new ones close the gate."),
    click.option("--update-baseline", is_flag=True,
                 help="Record today's problems (those no waiver covers) in the baseline file."),
    click.option("--junit-xml", "junit_path", type=click.Path(dir_okay=False),
                 help="Write JUnit XML here: one testcase per gated task."),
    click.option("--sarif", "sarif_path", type=click.Path(dir_okay=False),
                 help="Write SARIF 2.1.0 here, for code scanning annotations."),
    click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False),
                 help="Write a pull-request summary here (also appended to "
                      "$GITHUB_STEP_SUMMARY when set)."),
    click.option("--json", "json_path", type=click.Path(dir_okay=False),
                 help="Write the gate's decision as JSON here."),
)


def gate_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate the gate command with its own options (the audit's come from ``_cli``)."""
    for option in reversed(_GATE_OPTIONS):
        func = option(func)
    return func


def _from_cli(ctx: click.Context, name: str, flag: str, value: Any) -> Setting | None:
    """The option's value when the user typed it; None when click filled in a default."""
    if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
        return Setting(value, flag)
    return None


def _policy(config_path: str | None) -> Policy:
    if config_path:
        return load_policy(config_path, explicit=True)
    found = find_pyproject(os.getcwd())
    return load_policy(found, explicit=False) if found else Policy()


def _resolve_audit(ctx: click.Context, options: dict[str, Any],
                   policy: Policy) -> dict[str, Setting]:
    resolved = {}
    for name, (key, flag) in _AUDIT_KEYS.items():
        value = options[name]
        cli = _from_cli(ctx, name, flag, list(value) if isinstance(value, tuple) else value)
        default = value if not isinstance(value, tuple) else ()
        resolved[name] = resolve(key, cli, policy, default)
    for shim in resolved["shims"].value:
        if shim not in SHIMS:
            raise click.UsageError(MESSAGES["shim"].format(
                source=resolved["shims"].source, name=shim, known=", ".join(sorted(SHIMS))))
    warn, threshold = resolved["warn_ms"], resolved["threshold_ms"]
    if warn.value > threshold.value:
        raise click.UsageError(MESSAGES["warn_above"].format(
            warn_source=warn.source, warn=warn.value, threshold_source=threshold.source,
            threshold=threshold.value))
    if resolved["workdir"].value is None and resolved["scenario_path"].value is None \
            and policy.path is not None:
        # a module name in the policy is importable from the project's root
        resolved["workdir"] = Setting(policy.base, "policy")
    return resolved


def _audit(ctx: click.Context, options: dict[str, Any],
           policy: Policy) -> tuple[Report, str | None]:
    """The report of an audit run as the options, environment and policy ask, and the
    folder the app was loaded from."""
    from ._cli import make_audit_plan, run_with_progress
    from .report import render_table

    values = {name: s.value for name, s in _resolve_audit(ctx, options, policy).items()}
    values["globs"] = tuple(values["globs"])
    values["shims"] = tuple(values["shims"])
    # options with no policy key: straight from the command line
    values.update({name: options[name] for name in ("shuffle", "sandbox", "allow_publish")
                   if name in options})
    plan = make_audit_plan(**values)
    report, notes = run_with_progress(plan)
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 160).print(
        render_table(report, verbose=bool(options["verbose"])))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    return report, plan.workdir


def _write_outputs(result: GateResult, options: dict[str, Any], roots: tuple[str, ...]) -> None:
    from .report import write_atomic
    from .report._gate import render_gate_json
    from .report._junit import render_junit
    from .report._markdown import render_markdown
    from .report._sarif import render_sarif

    renderers: dict[str, Callable[[], str]] = {
        "junit_path": lambda: render_junit(result),
        "sarif_path": lambda: render_sarif(result, _version.__version__, roots),
        "markdown_path": lambda: render_markdown(result),
        "json_path": lambda: render_gate_json(result),
    }
    for _flag, name in _OUTPUTS:
        if options[name]:
            write_atomic(os.path.abspath(options[name]), renderers[name]())
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:  # GitHub shows this file on the run's page; other steps append to it too
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(render_markdown(result))


def run_gate(ctx: click.Context, options: dict[str, Any]) -> None:
    """Exit 0 when the gate is open, 1 when closed; usage and policy errors raise."""
    from .report._markdown import render_text

    policy = _policy(options["config_path"])
    for flag, name in _OUTPUTS:
        path = options[name]
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise click.UsageError(MESSAGES["no_folder"].format(flag=flag,
                                                                folder=os.path.dirname(path)))
    queues = resolve("gevent_queues",
                     _from_cli(ctx, "gevent_queues", "--gevent-queue",
                               list(options["gevent_queues"])), policy, None)
    baseline_path = resolve("baseline", _from_cli(ctx, "baseline_path", "--baseline",
                                                  options["baseline_path"]), policy, None).value
    if options["update_baseline"] and not baseline_path:
        raise click.UsageError(MESSAGES["update_needs_path"])
    if options["report_paths"]:
        typed = [flag for name, (_key, flag) in _AUDIT_KEYS.items()
                 if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
        if typed:
            raise click.UsageError(MESSAGES["report_and_audit"].format(options=", ".join(typed)))
        report = merge_reports([read_report(p) for p in options["report_paths"]])
        workdir = resolve("workdir", _from_cli(ctx, "workdir", "--workdir", options["workdir"]),
                          policy, None).value
    else:
        report, workdir = _audit(ctx, options, policy)
    gate_queues = tuple(queues.value) if queues.value is not None else None
    baseline = set() if options["update_baseline"] else (
        read_baseline(baseline_path) if baseline_path else set())
    result = evaluate(report, waivers=policy.waivers, queues=gate_queues, baseline=baseline)
    if options["update_baseline"]:
        from .report import write_atomic

        text = render_baseline(result)
        write_atomic(os.path.abspath(baseline_path), text)
        result = evaluate(report, waivers=policy.waivers, queues=gate_queues,
                          baseline=read_baseline(baseline_path))
        click.echo(MESSAGES["baseline_written"].format(
            count=text.count('"fingerprint"'), path=baseline_path), err=True)
    roots = tuple(r for r in (workdir, policy.base if policy.path else None) if r)
    _write_outputs(result, options, roots)
    click.echo(render_text(result), nl=False)
    sys.exit(result.exit_code)
