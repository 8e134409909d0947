"""``geventcheck report``: one report from the shards of an audit (``--merge A.json ...``)
or from the canaries of a deployment's workers (``--from redis://...``).

Registered on the ``geventcheck`` group by ``_cli``. The report is written and printed
as an audit's is, with the summary and the plan computed from its tasks, so
``geventcheck gate --report merged.json`` gates it like any report.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.console import Console

MESSAGES = {
    "what": "say what to do: geventcheck report --merge A.json B.json ... [--json OUT] or "
            "geventcheck report --from redis://HOST:PORT/DB [--deployment NAME]",
    "both": "--merge and --from do not go together",
    "paths_from": "--from reads Redis; it takes no report files",
    "deployment_needed": "--from: several deployments in {url}: {names}; name one with "
                         "--deployment",
    "no_deployment": "--from: no canary summaries in {url}{named}",
    "no_folder": "{flag}: folder {folder!r} does not exist",
    "empty": "the merged reports hold no task",
}


@click.command("report")
@click.option("--merge", "merge", is_flag=True,
              help="Join the reports of `audit --shard I/N` (one per shard) into one report.")
@click.argument("paths", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the merged JSON report here (atomically).")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False),
              help="Write the migration plan of the merged report here, as Markdown.")
@click.option("--from", "source", metavar="URL",
              help="Add up the canary summaries of a deployment's workers in Redis "
                   "(redis://host:port/db, as GEVENTCHECK_CANARY_REDIS).")
@click.option("--deployment", metavar="NAME",
              help="With --from: the deployment (GEVENTCHECK_CANARY_DEPLOYMENT); needed "
                   "when Redis holds several.")
@click.option("-v", "--verbose", is_flag=True, help="Also show info findings.")
def report(  # noqa: PLR0917 - click passes every option as an argument
        merge: bool, paths: tuple[str, ...], json_path: str | None,
        markdown_path: str | None, source: str | None, deployment: str | None,
        verbose: bool) -> None:
    """One report from the JSON reports of a sharded audit (--merge), or from the canaries
    of a deployment's gevent workers (--from redis://...): table, JSON, Markdown plan.

    Exit 0 when every task that ran is go, 1 otherwise, as `audit`.
    """
    from ._plan import make_plan, render_markdown
    from .report import render_json, render_table, write_atomic

    if merge and source:
        raise click.UsageError(MESSAGES["both"])
    if not merge and not source:
        raise click.UsageError(MESSAGES["what"])
    if source and paths:
        raise click.UsageError(MESSAGES["paths_from"])
    for flag, path in (("--json", json_path), ("--markdown", markdown_path)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise click.UsageError(MESSAGES["no_folder"].format(
                flag=flag, folder=os.path.dirname(path)))
    extra: dict[str, Any]
    if source:
        result, extra, notes = _from_canaries(source, deployment)
    else:
        from ._merge import merge_files

        merged = merge_files(list(paths))
        result, notes = merged.report, list(merged.notes)
        # extra to the schema: where the merged report came from
        extra = {"merged": {"reports": list(merged.sources), "shards": merged.shards,
                            "notes": list(merged.notes)}}
    if not result.tasks:
        raise click.UsageError(MESSAGES["empty"])
    if json_path:
        data = json.loads(render_json(result))
        data.update(extra)
        write_atomic(os.path.abspath(json_path), json.dumps(data, indent=2) + "\n")
    if markdown_path:
        write_atomic(os.path.abspath(markdown_path), render_markdown(result, make_plan(result)))
    Console(width=None if sys.stdout.isatty() else 160).print(
        render_table(result, verbose=verbose))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    sys.exit(result.exit_code)


def _from_canaries(source: str, deployment: str | None) -> tuple[Any, dict[str, Any],
                                                                   list[str]]:
    """The report of every canaried worker of one deployment, read from Redis."""
    from .canary import _report, _store

    url, named = _store.split_url(source)
    deployment = deployment or named
    try:
        if deployment is None:
            found = _store.deployments(url)
            if len(found) > 1:
                raise click.UsageError(MESSAGES["deployment_needed"].format(
                    url=url, names=", ".join(found)))
            deployment = found[0] if found else None
        summaries = _store.read(url, deployment) if deployment else []
    except _store.StoreError as exc:
        raise click.UsageError(f"--from: {exc}") from None
    if not summaries:
        raise click.UsageError(MESSAGES["no_deployment"].format(
            url=url, named=f" for deployment {deployment!r}" if deployment else ""))
    built = _report.build(summaries)
    section = {"deployment": deployment, **built.section()}
    notes = [f"{len(built.workers)} worker(s) of deployment {deployment!r}, "
             f"{section['since']} to {section['until']}", *built.notes]
    return built.report, {"canary": section}, notes
