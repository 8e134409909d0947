"""The canary's reasoning without a worker: how a loop stall is cut between tasks and
blamed, how settings are read, and how summaries of several workers add up."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from geventcheck.canary import _config, _report, _store, install
from geventcheck.canary._digest import UNATTRIBUTED, Digester
from geventcheck.canary._tally import SCHEMA, TaskTally
from geventcheck.canary._watch import Look, LoopStall
from geventcheck.detectors._native import SyscallSample
from geventcheck.detectors._stacks import FrameInfo

APP_FILE = "/srv/shop/tasks.py"


def look(at: float, line: int, function: str, syscall: str = "clock_nanosleep") -> Look:
    return Look(at, SyscallSample(syscall), (FrameInfo(APP_FILE, line, function),))


def digester() -> Digester:
    d = Digester(("/srv/shop/",), threshold_s=0.05, warn_s=0.01)
    d.codes.by_code.update({(APP_FILE, "charge"): "shop.charge", (APP_FILE, "mail"): "shop.mail"})
    return d


def test_two_tasks_blocking_in_one_iteration_are_two_stalls_not_one() -> None:
    d = digester()
    d.edges.append((0.9, 0.0, "shop.charge", True))
    d.edges.append((1.12, 0.001, "shop.charge", False))  # charge ends 120 ms into the iteration
    d.edges.append((1.121, 0.001, "shop.mail", True))
    stall = LoopStall(1.0, 0.245, 0.002, 0.0,
                      looks=[look(1.05, 10, "charge"), look(1.2, 20, "mail")])
    found = d.digest(stall)
    assert [(x.task, round(x.duration_s, 3)) for x in found] == [
        ("shop.charge", 0.12), ("shop.mail", 0.124)]
    assert [(f.kind, f.line) for x in found for f in x.findings] == [
        ("blocking-call", 10), ("blocking-call", 20)]


def test_a_stall_no_look_saw_is_blamed_on_the_task_that_ended_in_it_or_on_none() -> None:
    d = digester()
    d.edges.append((1.1, 0.0, "shop.mail", False))
    [piece, rest] = d.digest(LoopStall(1.0, 0.2, 0.001, 0.0))
    assert piece.task == "shop.mail"  # its end closes the piece it ran in
    assert rest.task == UNATTRIBUTED  # nothing says whose the rest was
    assert all(f.line is None for f in piece.findings)  # the line is not guessed


def test_cpu_work_on_a_busy_machine_is_judged_by_its_cpu_time() -> None:
    d = digester()
    # 260 ms of wall, of which 130 ms waiting for a CPU, 125 ms on it: the looks found
    # the thread waiting for the GIL the sampler held
    stall = LoopStall(1.0, 0.26, 0.125, 0.0,
                      looks=[Look(1.1, SyscallSample("futex"),
                                  (FrameInfo(APP_FILE, 30, "charge"),), gil_wait=True)],
                      queue_marks=((1.0, 5.0), (1.26, 5.13)))
    [digested] = d.digest(stall)
    [finding] = digested.findings
    assert (finding.kind, finding.severity) == ("cpu-bound", "error")
    assert finding.duration_ms == 125.0 and "130.0 ms waiting for a CPU" in finding.message


def test_a_stall_the_sampler_was_kept_out_of_is_native_code_holding_the_gil() -> None:
    stall = LoopStall(1.0, 0.12, 0.001, 0.0, blind_spans=((1.005, 1.119),))
    d = digester()
    d.edges.append((1.119, 0.001, "shop.charge", False))
    [piece] = d.digest(stall)  # the 1 ms after the task ended is below the warning level
    assert piece.task == "shop.charge"
    assert "kept the GIL" in piece.findings[0].message


def test_the_canary_s_own_flush_is_not_blamed_on_anyone() -> None:
    import geventcheck.canary._step as step

    own = FrameInfo(step.__file__, 180, "flush")
    stall = LoopStall(1.0, 0.03, 0.03, 0.0,
                      looks=[Look(1.01, SyscallSample("running"), (own,))])
    [digested] = digester().digest(stall)
    assert digested.own


@pytest.mark.parametrize(("env", "message"), [
    ({"GEVENTCHECK_CANARY_THRESHOLD_MS": "fast"},
     "GEVENTCHECK_CANARY_THRESHOLD_MS='fast' is not a number"),
    ({"GEVENTCHECK_CANARY_PORT": "http"}, "GEVENTCHECK_CANARY_PORT='http' is not a port number"),
    ({"GEVENTCHECK_CANARY_WARN_MS": "80"}, "warn_ms (80) must not exceed threshold_ms (50)"),
    ({"GEVENTCHECK_CANARY_REDIS": "localhost:6379"},
     "redis must be a redis:// URL, not 'localhost:6379'"),
])
def test_a_bad_setting_is_one_log_line_and_the_worker_runs_without_the_canary(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        env: dict[str, str], message: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from celery import Celery

    app = Celery("badconfig")
    with caplog.at_level(logging.ERROR, logger="geventcheck.canary"):
        assert install(app) is False
    assert [r.getMessage() for r in caplog.records] == [
        f"geventcheck canary: {message}; the canary is off"]
    assert "CanaryStep" not in {s.__name__ for s in app.steps["worker"]}


def test_settings_come_from_the_environment_then_from_install() -> None:
    config = _config.from_env({"GEVENTCHECK_CANARY_THRESHOLD_MS": "100",
                               "GEVENTCHECK_CANARY_PORT": "0"}, redis="redis://r:6379/2")
    assert (config.threshold_ms, config.port, config.redis) == (100.0, None, "redis://r:6379/2")
    with pytest.raises(_config.ConfigError, match="unknown canary setting 'treshold_ms'"):
        _config.from_env({}, treshold_ms=10)


def summary(worker: str, tasks: dict[str, TaskTally], **extra: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, "worker": worker, "started": 100.0, "updated": 200.0,
            "threshold_ms": 50.0, "warn_ms": 10.0, "python": "3.11.7", "gevent": "26",
            "celery": "5.7", "patched": True, "concurrency": 80, "app": "shop",
            "tasks": {n: t.to_dict() for n, t in tasks.items()}, **extra}


def test_replicas_add_up_and_a_task_no_worker_ran_is_not_certified() -> None:
    from geventcheck._model import Finding

    block = Finding("blocking-call", "error", "blocked the hub for 120 ms", file="shop/t.py",
                    line=10, duration_ms=120.0)
    a = summary("a:1", {"shop.charge": TaskTally(runs=5, wall_ms_total=50.0,
                                                 findings=[block]),
                        "shop.mail": TaskTally(runs=7), "shop.nightly": TaskTally()})
    b = summary("b:2", {"shop.charge": TaskTally(runs=3, findings=[block]),
                        "shop.mail": TaskTally(runs=2), "shop.nightly": TaskTally()})
    built = _report.build([a, b, {"schema": "other", "worker": "c:3"}])
    tasks = {t.name: t for t in built.report.tasks}
    assert (tasks["shop.charge"].verdict, tasks["shop.charge"].stats.runs) == ("no-go", 8)
    assert tasks["shop.charge"].findings[0].count == 2
    assert (tasks["shop.mail"].verdict, tasks["shop.mail"].stats.runs) == ("go", 9)
    assert tasks["shop.nightly"].verdict == "skipped"
    assert tasks["shop.nightly"].not_certified
    assert built.workers == ("a:1", "b:2")
    assert built.notes == ("c:3: summary in an unknown format, left out",)


def test_the_deployment_can_ride_in_the_url() -> None:
    assert _store.split_url("redis://h:6379/3?deployment=shop-prod") == (
        "redis://h:6379/3", "shop-prod")
    assert _store.split_url("redis://h:6379/3") == ("redis://h:6379/3", None)


def test_one_file_named_relatively_and_absolutely_is_one_place(tmp_path: Any,
                                                               monkeypatch: Any) -> None:
    # PYTHONPATH=../app imports name the file "../app/..."; other imports name it in full
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    d = Digester((str(tmp_path / "app") + "/",), threshold_s=0.05, warn_s=0.01)
    relative = FrameInfo("../app/shop/tasks.py", 7, "charge")
    absolute = FrameInfo(str(tmp_path / "app" / "shop" / "tasks.py"), 7, "charge")
    files = set()
    for frame in (relative, absolute):
        stall = LoopStall(1.0, 0.1, 0.001, 0.0,
                          looks=[Look(1.05, SyscallSample("clock_nanosleep"), (frame,))])
        [digested] = d.digest(stall)
        files |= {f.file for f in digested.findings}
    assert files == {str(tmp_path / "app" / "shop" / "tasks.py")}
