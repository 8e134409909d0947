"""The doctor's answer as terminal text: the facts first, then each trap with its fix."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from .._doctor import Diagnosis

_STYLE = {"error": "red", "warning": "yellow", "info": "dim"}


def render_diagnosis(d: Diagnosis) -> RenderableType:
    head = Text()
    head.append(f"celery -A {d.app} {' '.join(d.argv)}\n", style="bold")
    head.append("  pool:        ")
    head.append(d.effective_pool, style="bold")
    head.append("\n  patched:     ")
    head.append("yes" if d.patched else "NO",
                style="green" if d.patched else ("bold red" if d.effective_pool == "gevent"
                                                  else "dim"))
    head.append(f"\n  concurrency: {d.concurrency if d.concurrency is not None else 'default'}")
    head.append(f"\n  prefetch:    {d.prefetch if d.prefetch is not None else 'default'}")
    head.append(f"\n  queues:      {', '.join(d.queues)}")
    parts: list[RenderableType] = [head]
    if d.live is not None:
        live = Text("\n  live worker: ", style="bold")
        live.append(", ".join(f"{k}={v}" for k, v in d.live.items()))
        parts.append(live)
    for f in d.findings:
        text = Text("\n")
        text.append(f"{f.severity:<7} {f.kind}", style=_STYLE[f.severity])
        if f.where:
            text.append(f"  {f.where}", style="cyan")
        text.append(f"\n        {f.message}")
        if f.fix:
            text.append("\n        fix: ", style="bold")
            text.append(f.fix)
        parts.append(text)
    if not d.findings:
        parts.append(Text("\nno traps found for this command line", style="green"))
    return Group(*parts)
