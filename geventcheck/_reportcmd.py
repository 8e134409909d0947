"""``geventcheck report --merge A.json B.json ...``: one report from the shards of an audit.

Registered on the ``geventcheck`` group by ``_cli``. The merged report is written and
printed as an audit's is, with the summary and the plan computed from the merged tasks,
so ``geventcheck gate --report merged.json`` gates it like any report.
"""

from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console

MESSAGES = {
    "what": "say what to do: geventcheck report --merge A.json B.json ... [--json OUT]",
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
@click.option("-v", "--verbose", is_flag=True, help="Also show info findings.")
def report(merge: bool, paths: tuple[str, ...], json_path: str | None,
           markdown_path: str | None, verbose: bool) -> None:
    """Merge the JSON reports of a sharded audit into one: table, JSON, Markdown plan.

    Exit 0 when every task that ran is go, 1 otherwise, as `audit`.
    """
    from ._merge import merge_files
    from ._plan import make_plan, render_markdown
    from .report import render_json, render_table, write_atomic

    if not merge:
        raise click.UsageError(MESSAGES["what"])
    for flag, path in (("--json", json_path), ("--markdown", markdown_path)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise click.UsageError(MESSAGES["no_folder"].format(
                flag=flag, folder=os.path.dirname(path)))
    merged = merge_files(list(paths))
    result = merged.report
    if not result.tasks:
        raise click.UsageError(MESSAGES["empty"])
    if json_path:
        data = json.loads(render_json(result))
        # extra to the schema: where the merged report came from
        data["merged"] = {"reports": list(merged.sources), "shards": merged.shards,
                          "notes": list(merged.notes)}
        write_atomic(os.path.abspath(json_path), json.dumps(data, indent=2) + "\n")
    if markdown_path:
        write_atomic(os.path.abspath(markdown_path), render_markdown(result, make_plan(result)))
    Console(width=None if sys.stdout.isatty() else 160).print(
        render_table(result, verbose=verbose))
    for note in merged.notes:
        click.echo(f"note: {note}", err=True)
    sys.exit(result.exit_code)
