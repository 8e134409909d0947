"""Scenario services end to end: real clients against the fakes, through the real CLI."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from .conftest import APPS, AuditResult, require_service

SCENARIO = APPS / "svcapp" / "scenario.toml"


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    from .conftest import run_audit

    require_service("postgres")
    return run_audit(
        "--scenario", str(SCENARIO), "--runs", "1", "-c", "3",
        "--task", "*raw_socket", "--task", "*send_receipt", "--task", "*psycopg*",
        tmp_path=tmp_path_factory.mktemp("svc"),
    )


def test_smtplib_against_the_mail_fake_is_go(svc: AuditResult) -> None:
    task = svc.task(".send_receipt")
    assert task["verdict"] == "go", task["findings"]
    assert task["services"]["mail"] >= 5  # warm-up + 1 solo + 3 concurrent messages


def test_psycopg3_through_the_latency_proxy_is_go(svc: AuditResult) -> None:
    task = svc.task(".count_orders_psycopg3")
    assert task["verdict"] == "go", task["findings"]
    assert task["services"]["pg"] >= 5


def test_psycopg2_through_the_proxy_is_no_go_naming_the_service(svc: AuditResult) -> None:
    task = svc.task(".count_orders_psycopg2")
    assert task["verdict"] == "no-go"
    [finding] = [f for f in task["findings"] if f["kind"] == "blocking-call"
                 and f["severity"] == "error"]
    assert finding["service"] == "pg"
    assert "(service 'pg')" in finding["message"]
    assert "unsafe-driver" in {f["kind"] for f in task["findings"]}


def test_raw_socket_client_is_no_go_naming_the_service(svc: AuditResult) -> None:
    task = svc.task(".ask_llm_raw_socket")
    assert task["verdict"] == "no-go"
    [finding] = [f for f in task["findings"] if f["kind"] == "blocking-call"]
    assert finding["service"] == "plainapi"
    # the call as written, inside the unpatched _socket module
    assert finding["native"].startswith("sock.recv (_socket)"), finding["native"]
    assert "_socket" in finding["fix"]
    assert "the blocking wait" in (APPS / "svcapp" / "tasks.py").read_text().splitlines()[
        finding["line"] - 1]


def _scenario(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f'app = "hazards"\nworkdir = "{APPS}"\n' + textwrap.dedent(body))
    return path


def test_a_taken_port_is_one_line_and_exit_2(audit, tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = _scenario(tmp_path, f"""
            [[services.smtp]]
            name = "mail"
            port = {port}
            """)
        scratch = tmp_path / "tmp"
        scratch.mkdir()
        result = audit("--scenario", str(path), "--task", "*cooperative*", cwd=tmp_path,
                       env={"TMPDIR": str(scratch)})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"service 'mail': port {port} is already in use" in line
    assert list(scratch.iterdir()) == []  # no temp files left behind


def test_a_bad_route_status_names_the_line(audit, tmp_path) -> None:
    path = _scenario(tmp_path, """
        [[services.http]]
        name = "api"

        [[services.http.routes]]
        path = "/x"
        status = 999
        """)
    result = audit("--scenario", str(path), cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"geventcheck: error: {path}:7: ")
    assert "999" in line


def test_unconfigured_host_is_egress_and_nothing_leaves_the_namespace(tmp_path) -> None:
    """The whole audit runs in a fresh network namespace (only its own loopback), so a
    broken guard could not send a packet anywhere; the guard must still refuse first."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        message = "needs unshare and ip (util-linux, iproute2) to make a network namespace"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    report = tmp_path / "r.json"
    audit = (f"ip link set lo up && {sys.executable} -m geventcheck audit --scenario {SCENARIO}"
             f" --runs 1 -c 2 --task '*phone_home' --task '*.ask_llm' --json {report}")
    proc = subprocess.run(["unshare", "--net", "sh", "-c", audit], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode not in (0, 1) and "Operation not permitted" in proc.stderr:
        if os.environ.get("CI") == "true":
            pytest.fail(proc.stderr)
        pytest.skip(f"cannot make a network namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    tasks = {t["name"]: t for t in json.loads(report.read_text())["tasks"]}
    # a host name mapped to the fake: the real client reaches it over HTTPS
    assert tasks["svcapp.tasks.ask_llm"]["verdict"] == "go"
    assert tasks["svcapp.tasks.ask_llm"]["services"]["openai"] >= 4
    # a host nobody configured: refused by the guard, before any lookup was sent
    home = tasks["svcapp.tasks.phone_home"]
    # not a gevent problem: not certified, with the host to fake, and no prefork advice
    assert home["verdict"] == "error" and home["not_certified"] is True
    assert "telemetry.example.com:443" in home["reason"]
    assert home["recommended_pool"] != "prefork"
    [egress] = [f for f in home["findings"] if f["kind"] == "egress"]
    assert egress["endpoint"] == "telemetry.example.com:443"
    assert (egress["file"], egress["function"]) == ("svcapp/tasks.py", "phone_home")
    assert "refused before anything was sent" in egress["message"]
