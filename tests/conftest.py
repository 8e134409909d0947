"""Shared helpers: run the real CLI in a subprocess, and require real local services."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
SCHEMA = ROOT / "geventcheck" / "schemas" / "report.schema.json"
# The sample apps' own suites (tests/apps/pluginapp/tests) run only inside the plugin's tests,
# in a pytest subprocess of their own.
collect_ignore = ["apps"]

# How to start each service on this kind of machine, for the skip message.
SERVICES = {
    "postgres": (
        "127.0.0.1", 5432,
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    ),
    "mariadb": (
        "127.0.0.1", 3306,
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    ),
    "redis": (
        "127.0.0.1", 6379,
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
    ),
    "rabbitmq": ("127.0.0.1", 5672, "rabbitmq-server -detached"),
}


def require_service(name: str) -> None:
    """Skip locally (saying how to start it), fail under CI=true: CI never skips a service."""
    host, port, start = SERVICES[name]
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        message = f"{name} is not listening on {host}:{port}; start it with: {start}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def processes_with(*words: str, env_mark: bytes | None = None) -> list[str]:
    """``pid: command line`` of every running process whose command line holds all the
    words (and whose environment holds ``env_mark``, when given): what a test left behind."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                       if env_mark is not None else [])
        except OSError:
            continue
        if all(word in cmdline for word in words) and (env_mark is None or env_mark in environ):
            found.append(f"{pid}: {cmdline}")
    return found


@dataclass
class AuditResult:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any] | None

    def task(self, suffix: str) -> dict[str, Any]:
        assert self.report is not None, self.stderr
        matches = [t for t in self.report["tasks"] if t["name"].endswith(suffix)]
        assert len(matches) == 1, [t["name"] for t in self.report["tasks"]]
        return matches[0]

    def kinds(self, suffix: str) -> set[str]:
        return {f["kind"] for f in self.task(suffix)["findings"]}


def run_audit(
    *args: str, cwd: Path = APPS, tmp_path: Path, env: dict[str, str] | None = None,
    timeout: float = 300,
) -> AuditResult:
    """The real command line, as a user runs it; the JSON report parsed when written."""
    report_path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "geventcheck", "audit", *args, "--json", str(report_path)]
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return AuditResult(proc.returncode, proc.stdout, proc.stderr, report)


@pytest.fixture
def audit(tmp_path: Path) -> Any:
    def _run(*args: str, **kwargs: Any) -> AuditResult:
        return run_audit(*args, tmp_path=tmp_path, **kwargs)

    return _run
