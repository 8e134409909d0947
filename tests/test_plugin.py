"""The pytest plugin, on a sample app's own suite, always in a pytest subprocess: gevent's
patching must never reach this test run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from .conftest import APPS, require_service

pytest_plugins = ["pytester"]

APP = APPS / "pluginapp"
TASKS = APP / "pluginapp" / "tasks.py"
SUITE = APP / "tests" / "test_pluginapp.py"


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.fixture
def app(pytester: pytest.Pytester) -> pytest.Pytester:
    """A copy of the sample app and its suite, as a user's checkout."""
    shutil.copytree(APP, pytester.path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (pytester.path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nfilterwarnings = ["error"]\n')
    return pytester


def section(output: str, test: str) -> str:
    """The failure section of one test."""
    match = re.search(rf"_{{3,}} {test} _{{3,}}\n(.*?)(?=\n_{{3,}} |\n={{3,}} )", output, re.S)
    assert match, output
    return match.group(1)


def test_check_fails_the_tests_that_block_the_hub(app: pytest.Pytester) -> None:
    result = app.runpytest_subprocess("--gevent-check", "-k", "not psycopg2 and not hangs")
    result.assert_outcomes(passed=4, failed=3, xfailed=1, deselected=2)
    out = result.stdout.str()
    # patched before the conftest file and the app's modules were imported
    assert "pluginapp conftest: socket patched at import: True" in out
    assert "gevent patched the process in import of geventcheck.pytest_plugin" in out
    native = section(out, "test_native_sleep")
    assert "blocking-call" in native
    assert f"pluginapp/tasks.py:{line_of(TASKS, '# the native sleep')}" in native
    assert f"test_pluginapp.py:{line_of(SUITE, 'assert native_sleep(200) == 200')}" in native
    assert "fix: run the native call in the hub's threadpool" in native
    spin = section(out, "test_cpu_spin")
    assert "cpu-bound" in spin
    loop = line_of(TASKS, "# the CPU loop")
    assert re.search(rf"pluginapp/tasks\.py:({loop}|{loop + 1})\b", spin), spin
    gil = section(out, "test_native_code_keeping_the_gil")
    assert "blocking-call" in gil and "kept the GIL" in gil
    # the line itself when the monitor saw it once the GIL came back, else the test's
    assert (f"pluginapp/tasks.py:{line_of(TASKS, '# the GIL-holding wait')}" in gil
            or f"test_pluginapp.py:{line_of(SUITE, 'def test_native_code_keeping')}" in gil)
    assert "test_cooperative_sleep" not in out.split("short test summary")[1]
    assert "test_tolerated_native_sleep" not in out.split("short test summary")[1]
    summary = out.split("= geventcheck =")[1]
    assert "tests checked: 8" in summary
    assert re.search(r"findings by kind: blocking-call \d+, cpu-bound 1", summary)
    assert "worst stalls:" in summary and "test_cpu_spin" in summary


def test_psycopg2_without_psycogreen_fails_with_the_driver_named(app: pytest.Pytester) -> None:
    require_service("postgres")
    result = app.runpytest_subprocess("--gevent-check", "-k", "psycopg2")
    result.assert_outcomes(failed=1, deselected=9)
    failure = section(result.stdout.str(), "test_psycopg2_without_psycogreen")
    assert "unsafe-driver: psycopg2 blocks the hub" in failure
    assert f"pluginapp/tasks.py:{line_of(TASKS, '# the driver call')}" in failure
    assert "127.0.0.1:5432" in failure and "geventcheck.patches.psycopg2" in failure


def test_markers_work_without_the_flag_and_unsafe_is_strict(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marked="""
        import ctypes
        import gevent
        import pytest

        LIBC = ctypes.CDLL(None)

        @pytest.mark.gevent_safe
        def test_blocks():
            LIBC.usleep(200_000)

        @pytest.mark.gevent_safe(threshold_ms=50)
        def test_cooperates():
            gevent.sleep(0.2)

        @pytest.mark.gevent_safe(threshold_ms=1000)
        def test_under_its_own_threshold():
            LIBC.usleep(200_000)

        @pytest.mark.gevent_unsafe(reason="fixed since")
        def test_no_longer_blocks():
            gevent.sleep(0.01)

        def test_not_checked():
            LIBC.usleep(200_000)
    """)
    result = pytester.runpytest_subprocess("-rA")
    result.assert_outcomes(passed=3, failed=2)
    out = result.stdout.str()
    assert "blocking-call" in section(out, "test_blocks")
    assert "marked gevent_unsafe('fixed since') but no longer blocks" in out


@pytest.mark.parametrize("marker", [
    "gevent_safe(treshold_ms=100)", "gevent_unsafe(reason='x', ticket=1)",
    "gevent_safe(allow=['blocking'])",
])
def test_a_bad_marker_argument_is_a_usage_error(pytester: pytest.Pytester, marker: str) -> None:
    pytester.makepyfile(test_bad=f"""
        import pytest

        @pytest.mark.{marker}
        def test_it():
            pass
    """)
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "test_bad.py::test_it" in result.stderr.str()


def test_settings_resolve_cli_then_env_then_pyproject_then_ini(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_sleep="""
        import ctypes

        def test_native():
            ctypes.CDLL(None).usleep(200_000)
    """)
    pytester.makeini("[pytest]\ngevent_threshold_ms = 2000\n")
    assert pytester.runpytest_subprocess("--gevent-check").ret == 0  # the ini: 2000
    pytester.makepyprojecttoml("[tool.geventcheck]\nthreshold_ms = 50\n")
    assert pytester.runpytest_subprocess("--gevent-check").ret == 1  # pyproject wins over it
    pytester.makepyprojecttoml("[tool.geventcheck]\nthreshold_ms = 2000\n")
    assert pytester.runpytest_subprocess("--gevent-check").ret == 0
    monkeypatch.setenv("GEVENTCHECK_THRESHOLD_MS", "50")
    assert pytester.runpytest_subprocess("--gevent-check").ret == 1  # env wins over it
    result = pytester.runpytest_subprocess("--gevent-check", "--gevent-threshold-ms", "2000")
    assert result.ret == 0  # the command line wins over both
    monkeypatch.setenv("GEVENTCHECK_THRESHOLD_MS", "fast")
    result = pytester.runpytest_subprocess("--gevent-check")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "$GEVENTCHECK_THRESHOLD_MS: expected a positive number, got 'fast'" in \
        result.stderr.str()


def test_a_library_imported_before_patching_is_named(app: pytest.Pytester) -> None:
    (app.path / "early_plugin.py").write_text("import redis  # a plugin that loads a driver\n")
    result = app.runpytest_subprocess("-p", "early_plugin", "--gevent-check", "-k", "cooperative")
    result.assert_outcomes(passed=1, deselected=9)
    out = result.stdout.str()
    # redis imports ssl too; both named, in the header and again in the summary
    assert out.count("WARNING imported before gevent patched the process: ssl, redis.") == 2
    assert "pytest -p geventcheck.pytest_plugin --gevent-check" in out


def test_the_flag_in_addopts_patches_before_the_conftest_files(
        app: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_ADDOPTS", "--gevent-check")
    result = app.runpytest_subprocess("-k", "cooperative or native_sleep and not tolerated")
    result.assert_outcomes(passed=1, failed=1, deselected=8)
    out = result.stdout.str()
    assert "gevent patched the process in pytest_load_initial_conftests" in out
    assert "pluginapp conftest: socket patched at import: True" in out


def test_pytest_timeout_still_ends_a_test_that_blocks_the_hub_for_good(
        app: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEVENT_HANG", "1")
    result = app.runpytest_subprocess("--gevent-check", "--timeout", "3", "-k", "hangs")
    result.assert_outcomes(failed=1, deselected=9)
    out = result.stdout.str()
    assert "Timeout (>3.0s)" in out
    # the blocking stack, down to the native call
    assert f"tasks.py\", line {line_of(TASKS, '# the native sleep')}, in native_sleep" in out
    assert "blocking-call: blocked the hub" in out


def test_pytest_timeouts_thread_method_is_named_as_unable_to_end_a_blocked_hub(
        app: pytest.Pytester) -> None:
    result = app.runpytest_subprocess("--gevent-check", "--timeout-method", "thread",
                                      "-k", "cooperative")
    result.assert_outcomes(passed=1, deselected=9)
    assert "use --timeout-method=signal" in result.stdout.str()


def test_pytest_xdist_workers_check_and_the_controller_sums_up(app: pytest.Pytester) -> None:
    result = app.runpytest_subprocess("--gevent-check", "-n", "2", "-k",
                                      "not psycopg2 and not hangs")
    result.assert_outcomes(passed=4, failed=3, xfailed=1)
    out = result.stdout.str()
    assert "cpu-bound" in section(out, "test_cpu_spin")
    assert "tests checked: 8" in out.split("= geventcheck =")[1]


def test_recorded_calls_let_the_audit_run_every_task_the_suite_called(
        app: pytest.Pytester) -> None:
    scenario = app.path / "scenarios" / "recorded.toml"
    args = ["--gevent-record", str(scenario), "-k", "not hangs"]
    app.runpytest_subprocess(*args).assert_outcomes(passed=8, xfailed=1, deselected=1,
                                                    skipped=0 if _postgres() else 1)
    # a second run, in two pytest-xdist workers writing the same file, merges: nothing twice
    app.runpytest_subprocess(*args, "-n", "2").assert_outcomes(
        passed=8, xfailed=1, skipped=0 if _postgres() else 1)
    text = scenario.read_text()
    data = tomllib.loads(text)
    calls = {name.rsplit(".", 1)[1]: table["calls"] for name, table in data["tasks"].items()}
    assert calls["add"] == [{"args": [2, 3], "kwargs": {}}, {"args": [1, 1], "kwargs": {}}]
    assert {"args": ["grace"], "kwargs": {"punctuation": "?"}} in calls["greet"]
    assert calls["total"] == [{"args": [[1, 2, 3]], "kwargs": {}}]
    assert "pluginapp.tasks.total (apply, " in text and "args[0]=set {4, 5}" in text
    expected = {"add", "greet", "total", "native_sleep", "spin", "gil_sleep"}
    assert expected <= set(calls)
    report_path = app.path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "geventcheck", "audit", "--scenario", str(scenario), "-c", "2",
         "--runs", "1", "--explore", "0", "--json", str(report_path)],
        cwd=app.path / "scenarios", capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # some of them block: no-go
    report = json.loads(report_path.read_text())
    verdicts = {t["name"].rsplit(".", 1)[1]: t["verdict"] for t in report["tasks"]}
    assert {name: verdicts[name] for name in calls} == {
        name: ("go" if name in ("add", "greet", "total") else "no-go") for name in calls}


def test_gevent_audit_fixture_gives_the_clis_verdict(app: pytest.Pytester) -> None:
    app.makepyfile(test_audit=textwrap.dedent("""
        from pluginapp.tasks import add, native_sleep

        def test_audit(gevent_audit):
            blocking = gevent_audit(native_sleep, args=[150], concurrency=2)
            assert blocking.verdict == "no-go"
            assert "blocking-call" in blocking.kinds
            assert gevent_audit(add, args=[1, 2]).verdict == "go"
    """))
    result = app.runpytest_subprocess("test_audit.py")
    result.assert_outcomes(passed=1)


def _postgres() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        return False
    return True
