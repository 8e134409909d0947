"""The gate as a pull-request summary (GitHub's step summary, a merge-request note)."""

from __future__ import annotations

import datetime

from .._gate import GateResult, Problem

_STATUS = {"pass": "go", "accepted": "accepted", "fail": "**fails**"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _problem(problem: Problem) -> str:
    f = problem.finding
    where = f" `{problem.where}`" if problem.where else ""
    line = f"- **{problem.kind}**{where}: {_cell(problem.message)}"
    if f is not None and f.fix:
        line += f"  \n  fix: {_cell(f.fix)}"
    return line


def render_markdown(result: GateResult, today: datetime.date | None = None) -> str:
    today = today or datetime.date.today()
    head = "open" if result.is_open else "closed"
    mark = "✅" if result.is_open else "❌"
    queues = ("gevent queue(s) " + ", ".join(f"`{q}`" for q in result.queues)
              if result.queues is not None else "all queues (no gevent_queues in the policy)")
    lines = [f"## {mark} geventcheck gate: {head}", "",
             f"Gated: {len(result.tasks)} task(s) on {queues}"
             + (f"; {len(result.not_gated)} task(s) on other queues not gated."
                if result.not_gated else "."), ""]
    if result.reasons:
        lines += [f"- {_cell(r)}" for r in result.reasons] + [""]
    lines += ["| task | queue | verdict | gate | top problem |", "|---|---|---|---|---|"]
    for g in result.tasks:
        top = g.open[0] if g.open else (g.accepted[0].problem if g.accepted else None)
        what = f"{top.kind}" + (f" at `{top.where}`" if top and top.where else "") if top else ""
        lines.append(f"| `{g.task.name}` | `{g.queue}` | {g.task.verdict} | "
                     f"{_STATUS[g.status]} | {_cell(what)} |")
    failing = [g for g in result.tasks if g.open]
    if failing:
        lines += ["", "### Problems to fix"]
        for g in failing:
            lines += ["", f"#### `{g.task.name}`", *(_problem(p) for p in g.open)]
    accepted = [(g, a) for g in result.tasks for a in g.accepted]
    if accepted:
        lines += ["", "### Accepted", ""]
        lines += [f"- `{g.task.name}` {a.problem.kind}: {a.by} ({_cell(a.reason)})"
                  for g, a in accepted]
    if result.warnings:
        lines += ["", "### Warnings", "", *(f"- {_cell(w)}" for w in result.warnings)]
    if result.stale_baseline:
        lines += ["", f"{result.stale_baseline} baseline entr(y/ies) matched nothing: fixed, "
                      "refresh the baseline with `--update-baseline`."]
    return "\n".join(lines) + "\n"


def render_text(result: GateResult) -> str:
    """The terminal's last words: the answer, why, and what to fix."""
    lines = []
    for g in result.tasks:
        for p in g.open:
            where = f"  {p.where}" if p.where else ""
            lines.append(f"FAIL {g.task.name}: {p.kind}{where}\n     {p.message}"
                         + (f"\n     fix: {p.finding.fix}" if p.finding and p.finding.fix
                            else ""))
        lines += [f"ok   {g.task.name}: {a.problem.kind} accepted by {a.by} ({a.reason})"
                  for a in g.accepted]
    lines += [f"warning: {w}" for w in result.warnings]
    lines += [f"closed: {r}" for r in result.reasons]
    queues = ", ".join(result.queues) if result.queues is not None else "all queues"
    summary = (f"gate {'OPEN' if result.is_open else 'CLOSED'}: {len(result.tasks)} task(s) "
               f"gated ({queues}), "
               f"{sum(g.status == 'fail' for g in result.tasks)} failing, "
               f"{sum(g.status == 'accepted' for g in result.tasks)} accepted")
    return "\n".join([*lines, summary]) + "\n"
