"""The migration plan: queue splits, the concurrency formula, and commands that patch."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from geventcheck._model import Environment, Report, Settings, Stats, TaskReport
from geventcheck._plan import make_plan, render_markdown

from .conftest import ROOT


def _task(name: str, queue: str, verdict: str, cls: str, pool: str, wall: float,
          cpu: float) -> TaskReport:
    return TaskReport(name, queue, verdict, cls, pool, Stats(3, wall, cpu, 0.0))  # type: ignore[arg-type]


def _report(*tasks: TaskReport) -> Report:
    return Report("0", "now", "proj", Settings(), Environment("3.11", "26", True), tasks)


def test_a_queue_mixing_io_and_cpu_is_split_with_routes_to_paste() -> None:
    plan = make_plan(_report(
        _task("proj.mail", "default", "go", "io", "gevent", 200.0, 2.0),
        _task("proj.pdf", "default", "no-go", "cpu", "prefork", 300.0, 290.0),
    ))
    assert plan.routes == {"proj.pdf": "default_prefork"}
    pools = {q.queue: (q.pool, q.command) for q in plan.queues}
    assert pools["default"][0] == "gevent"
    assert pools["default_prefork"][0] == "prefork"
    assert '"proj.pdf": {"queue": "default_prefork"}' in render_markdown(
        _report(), plan)


def test_concurrency_follows_the_measured_wait_to_cpu_ratio() -> None:
    # waits 198 ms for every 2 ms of CPU: 1 + 99 = 100 copies keep one core busy
    plan = make_plan(_report(_task("proj.api", "io", "go", "io", "gevent", 200.0, 2.0)))
    assert plan.queues[0].concurrency == 100
    # clamped at both ends
    assert make_plan(_report(_task("a", "q", "go", "io", "gevent", 5000.0, 1.0))
                     ).queues[0].concurrency == 200
    assert make_plan(_report(_task("b", "q", "go", "light", "either", 3.0, 2.0))
                     ).queues[0].concurrency == 10


def test_no_go_io_tasks_are_listed_to_fix_first() -> None:
    plan = make_plan(_report(_task("proj.sync", "default", "no-go", "io", "prefork", 200, 1)))
    assert [t.name for t in plan.first] == ["proj.sync"]
    assert plan.queues[0].pool == "prefork"


def test_demo_plan_commands_are_patched_workers_per_the_doctor(tmp_path) -> None:
    report, markdown = tmp_path / "r.json", tmp_path / "plan.md"
    subprocess.run([sys.executable, "-m", "geventcheck", "audit", "--scenario",
                    "scenarios/demo/scenario.toml", "--json", str(report), "--markdown",
                    str(markdown)], cwd=ROOT, capture_output=True, timeout=120)
    plan = json.loads(report.read_text())["plan"]
    text = markdown.read_text()
    gevent = [q for q in plan["queues"] if q["pool"] == "gevent"]
    assert gevent and plan["formula"].startswith("concurrency = clamp(")
    for queue in plan["queues"]:
        assert queue["command"] in text
    for queue in gevent:
        args = shlex.split(queue["command"])  # celery -A demoapp worker ...
        out = tmp_path / "doctor.json"
        subprocess.run([sys.executable, "-m", "geventcheck", "doctor", "-A", args[2], "--json",
                        str(out), "--", *args[3:]], cwd=ROOT / "scenarios" / "demo",
                       capture_output=True, timeout=60)
        doctor = json.loads(out.read_text())
        assert (doctor["effective_pool"], doctor["patched"]) == ("gevent", True)


def test_a_queue_of_cpu_tasks_says_why_it_stays_on_prefork() -> None:
    plan = make_plan(_report(_task("proj.index", "enrich", "go", "cpu", "prefork", 80, 75)))
    assert plan.queues[0].why == "CPU-bound work: one process per core"
    assert plan.first == ()
