"""Where users already are: `celery -A proj geventcheck ...` and `manage.py geventcheck`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import APPS


def _run(args: list[str], cwd, env: dict[str, str] | None = None):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_celery_subcommand_audits_the_app_given_to_celery(tmp_path) -> None:
    report = tmp_path / "r.json"
    proc = _run([sys.executable, "-m", "celery", "-A", "hazards", "geventcheck", "audit",
                 "--task", "*cooperative_sleep", "--runs", "1", "--json", str(report)], APPS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["app"] == "hazards"
    assert [t["name"] for t in data["tasks"]] == ["hazards.tasks.cooperative_sleep"]


def test_celery_subcommand_runs_the_doctor(tmp_path) -> None:
    out = tmp_path / "d.json"
    proc = _run([sys.executable, "-m", "celery", "-A", "poolcfg", "geventcheck", "doctor",
                 "--json", str(out), "--", "worker"], APPS, {"POOLCFG_POOL": "gevent"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert (data["effective_pool"], data["patched"]) == ("gevent", False)


def test_django_management_command_uses_the_project_settings(tmp_path) -> None:
    report = tmp_path / "r.json"
    proc = _run([sys.executable, "manage.py", "geventcheck", "audit", "--runs", "1",
                 "--json", str(report)], APPS / "shopsite")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["app"] == "shopsite.celery_app"
    assert data["environment"]["django"]
    [task] = data["tasks"]
    assert (task["name"], task["verdict"]) == ("shopsite.celery_app.notify", "go")
