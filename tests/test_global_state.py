"""Process-wide state and module globals shared by concurrent copies of a task."""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import greenlet
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geventcheck._model import Finding
from geventcheck.detectors import _globalstate
from geventcheck.detectors._bytecode import fingerprint, global_writes
from geventcheck.detectors._probe import ProbeRun
from geventcheck.detectors._snapshot import Change, Same, diff, restore, take

from .conftest import APPS, AuditResult, run_audit

TASKS = "statebugs/tasks.py"


def _line_of(relpath: str, marker: str) -> int:
    lines = (APPS / relpath).read_text().splitlines()
    hits = [n for n, text in enumerate(lines, start=1) if text.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, (relpath, marker, hits)
    return hits[0]


@pytest.fixture(scope="module")
def statebugs(tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    """One audit of the whole app: every task, four copies in its probe run."""
    return run_audit("-A", "statebugs", "--runs", "1", "-c", "4", cwd=APPS,
                     tmp_path=tmp_path_factory.mktemp("statebugs"))


def _state_findings(result: AuditResult, task: str) -> list[dict[str, Any]]:
    return [f for f in result.task(f".{task}")["findings"] if f["kind"] == "global-state"]


# -- end to end, through the real command line ------------------------------------------

@pytest.mark.parametrize(("task", "marker", "switch_marker", "words", "fix"), [
    ("chdir_across_wait", "the chdir line", "the chdir wait",
     ["the working directory changed from", "'/tmp'", "after the run it was left"], "cwd="),
    ("env_across_wait", "the putenv line", None,
     ["os.environ['STATEBUGS_TOKEN'] changed from unset to a 20-character secret"], "env="),
    ("redirect_stdout_across_wait", "the redirect line", "the redirect wait",
     ["sys.stdout changed from the process's stdout to a StringIO object", "dead buffer"],
     "StringIO you pass around"),
])
def test_process_state_held_across_a_wait_is_an_error_at_the_line_that_changed_it(
        statebugs: AuditResult, task: str, marker: str, switch_marker: str | None,
        words: list[str], fix: str) -> None:
    assert statebugs.task(f".{task}")["verdict"] == "no-go"
    [finding] = _state_findings(statebugs, task)
    assert finding["severity"] == "error"
    assert (finding["file"], finding["line"]) == (TASKS, _line_of(TASKS, marker))
    assert finding["function"] == task
    for word in words:
        assert word in finding["message"], finding["message"]
    assert "secret-for-this-task" not in finding["message"]  # env values are never shown
    switch_line = _line_of(TASKS, switch_marker) if switch_marker else finding["line"] + 1
    assert f"switched away at {TASKS}:{switch_line}" in finding["message"]
    assert fix in finding["fix"]


def test_a_lost_update_of_a_module_counter_names_the_read_and_the_write(
        statebugs: AuditResult) -> None:
    [finding] = _state_findings(statebugs, "counter_across_wait")
    assert finding["severity"] == "error"
    assert finding["line"] == _line_of(TASKS, "the lost update")
    message = finding["message"]
    assert f"read at line {_line_of(TASKS, 'the counter read')}" in message
    assert "module global statebugs.tasks.COUNT" in message
    assert "another copy changed it" in message and "lost update" in message
    assert "4 copies at once" in message  # four copies bumped it, yet it grew by one
    assert "gevent.lock" in finding["fix"]


def test_a_module_cache_read_back_after_a_wait_is_confirmed(statebugs: AuditResult) -> None:
    [finding] = _state_findings(statebugs, "report_cache_across_wait")
    assert finding["severity"] == "error"
    assert finding["line"] == _line_of(TASKS, "the cache write")
    assert f"read back at line {_line_of(TASKS, 'the cache read')}" in finding["message"]
    assert "saw the other task's value" in finding["message"]


def test_a_plain_module_global_write_is_a_warning(statebugs: AuditResult) -> None:
    task = statebugs.task(".remembers_last_run")
    [finding] = _state_findings(statebugs, "remembers_last_run")
    assert finding["severity"] == "warning"
    assert finding["line"] == _line_of(TASKS, "the global write")
    assert "assigns module global statebugs.tasks.LAST_RUN" in finding["message"]
    assert task["verdict"] == "go"  # a warning alone does not fail the task


def test_seeding_the_global_random_generator_before_a_wait_is_an_error(
        statebugs: AuditResult) -> None:
    [finding] = _state_findings(statebugs, "seeds_global_random")
    assert finding["severity"] == "error"
    assert finding["line"] == _line_of(TASKS, "the seed line")
    assert "random.Random" in finding["fix"]


@pytest.mark.parametrize("task", [
    "chdir_restored_before_waiting", "absolute_paths_instead_of_chdir",
    "env_passed_to_subprocess", "print_to_own_buffer", "counter_in_a_local",
    "counter_under_a_gevent_lock", "returns_its_run_time", "own_random_generator",
    "ids_and_timestamps",
])
def test_fixed_twins_and_merely_varying_tasks_share_nothing(
        statebugs: AuditResult, task: str) -> None:
    report = statebugs.task(f".{task}")
    assert _state_findings(statebugs, task) == []
    assert report["verdict"] == "go", report["findings"]


def test_state_is_put_back_for_the_tasks_audited_after_a_buggy_one(
        statebugs: AuditResult) -> None:
    """zz_state_is_clean runs last and raises when cwd, env or sys.stdout were left changed."""
    report = statebugs.task(".zz_state_is_clean")
    assert report["verdict"] == "go", report["findings"]
    assert report["findings"] == []


# -- a proven race is an error; a near-miss stays a warning -----------------------------

RACES = "races/tasks.py"


@pytest.fixture(scope="module")
def races(tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    return run_audit("-A", "races", "--runs", "1", "-c", "4", "--explore", "0", cwd=APPS,
                     tmp_path=tmp_path_factory.mktemp("races"))


@pytest.mark.parametrize(("task", "write", "read", "wait"), [
    ("request_id_read_after_a_wait", "the request id write", "the request id read",
     "the request id wait"),
    ("user_set_by_a_helper_read_after_a_wait", "the helper call that writes",
     "the helper call that reads", "the helper wait"),
])
def test_a_global_read_back_after_another_copy_changed_it_is_an_error(
        races: AuditResult, task: str, write: str, read: str, wait: str) -> None:
    report = races.task(f".{task}")
    [finding] = _state_findings(races, task)
    assert finding["severity"] == "error"
    assert report["verdict"] == "no-go"
    assert (finding["file"], finding["line"]) == (RACES, _line_of(RACES, write))
    message = finding["message"]
    assert f"read back at line {_line_of(RACES, read)}" in message
    assert "another copy changed it from" in message
    assert f"switched out at {RACES}:{_line_of(RACES, wait)}" in message
    assert "saw the other task's value" in message


def test_helpers_that_write_and_read_a_global_are_named(races: AuditResult) -> None:
    [finding] = _state_findings(races, "user_set_by_a_helper_read_after_a_wait")
    assert "(in set_current_user())" in finding["message"]
    assert "(in current_user())" in finding["message"]


def test_a_write_read_back_that_no_other_copy_changed_stays_a_warning(
        races: AuditResult) -> None:
    """Every copy writes the same value: the pattern is there, a race was not seen."""
    [finding] = _state_findings(races, "same_mode_for_everyone")
    assert finding["severity"] == "warning"
    assert finding["line"] == _line_of(RACES, "the mode write")
    assert "may see another task's value" in finding["message"]
    assert races.task(".same_mode_for_everyone")["verdict"] == "go"


# -- the snapshot differ --------------------------------------------------------------------

def _snap(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cwd": "/srv", "env": {"HOME": "/root"}, "umask": 0o022,
        "sys.stdout": Same(sys.__stdout__), "signals": {"SIGTERM": 0},
        "logger levels": {"app": 0}, "root level": logging.WARNING,
    }
    return base | overrides


def test_the_differ_names_each_changed_variable_and_nothing_else() -> None:
    before = _snap()
    assert diff(before, _snap()) == []
    after = _snap(cwd="/tmp", env={"HOME": "/root", "TOKEN": "x"}, umask=0o077,
                  **{"sys.stdout": Same(io.StringIO())})
    keys = {c.key: c for c in diff(before, after)}
    assert set(keys) == {"cwd", "env:TOKEN", "umask", "sys.stdout"}
    assert keys["env:TOKEN"] == Change("env:TOKEN", None, "x")
    assert keys["umask"].describe() == "the umask changed from 0022 to 0077"
    assert "the process's stdout to a StringIO object" in keys["sys.stdout"].describe()


def test_the_differ_ignores_new_loggers_but_not_changed_levels_or_handlers() -> None:
    before = _snap()
    assert diff(before, _snap(**{"logger levels": {"app": 0, "new.lib": 10}})) == []
    [change] = diff(before, _snap(**{"logger levels": {"app": logging.DEBUG}}))
    assert change.describe() == "the level of logger 'app' changed from NOTSET to DEBUG"
    [change] = diff(before, _snap(signals={"SIGTERM": 1}))
    assert change.key == "signal:SIGTERM"


def test_a_secret_in_the_environment_is_never_shown() -> None:
    [change] = diff(_snap(), _snap(env={"HOME": "/root", "API_TOKEN": "hunter2"}))
    assert "hunter2" not in change.describe()
    assert "7-character secret" in change.describe()


def test_take_then_restore_puts_the_real_process_state_back(tmp_path: Path) -> None:
    before = take()
    root = logging.getLogger()
    handler = logging.NullHandler()
    stdout, timeout = sys.stdout, socket.getdefaulttimeout()
    try:
        os.chdir(tmp_path)
        os.environ["GEVENTCHECK_TEST_VAR"] = "1"
        os.umask(0o077)
        sys.stdout = io.StringIO()
        socket.setdefaulttimeout(3.5)
        root.addHandler(handler)
        root.setLevel(logging.CRITICAL)
        sys.path.append(str(tmp_path))
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        tempfile.tempdir = str(tmp_path)
        changed = diff(before, take())
    finally:
        sys.stdout = stdout  # whatever happens, pytest's own capture stays intact
        failed = restore(diff(before, take()))
    keys = {c.key for c in changed}
    assert {"cwd", "env:GEVENTCHECK_TEST_VAR", "umask", "sys.stdout", "socket timeout",
            "root handlers", "root level", "sys.path", "signal:SIGUSR2",
            "tempfile.tempdir"} <= keys
    assert failed == []
    assert diff(before, take()) == []
    assert socket.getdefaulttimeout() == timeout and handler not in root.handlers


ENV_NAMES = st.sampled_from([f"GEVENTCHECK_PROP_{c}" for c in "ABCDE"])
ENV_OPS = st.lists(st.tuples(ENV_NAMES, st.none() | st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=6)), max_size=8)


@settings(max_examples=60, deadline=None)
@given(ops=ENV_OPS, move=st.sampled_from([None, "/", "/tmp"]))
def test_the_differ_reports_exactly_the_variables_and_directory_changed(
        ops: list[tuple[str, str | None]], move: str | None) -> None:
    before = take()
    try:
        for name, value in ops:
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if move is not None:
            os.chdir(move)
        expected = {f"env:{name}" for name, _ in ops
                    if os.environ.get(name) != before["env"].get(name)}
        if move is not None and os.path.realpath(move) != before["cwd"]:
            expected.add("cwd")
        assert {c.key for c in diff(before, take())} == expected
    finally:
        restore(diff(before, take()))
    assert diff(before, take()) == []


# -- module globals found in the bytecode ---------------------------------------------------

COUNTER = 0
GUARDED = 0
CACHE: dict[str, int] = {}
ITEMS: list[int] = []
LOCK = threading.Lock()


def _wait() -> None:
    time.sleep(0)


def _bump() -> None:
    global COUNTER
    value = COUNTER  # read
    _wait()  # may switch
    COUNTER = value + 1  # write


def _cache_then_read() -> int:
    CACHE["k"] = 1  # cache write
    _wait()
    return CACHE["k"]  # cache read


def _guarded() -> None:
    global GUARDED
    with LOCK:
        value = GUARDED
        _wait()
        GUARDED = value + 1


def _append_via_helper() -> int:
    _append()
    return len(CACHE)  # only reads


def _append() -> None:
    ITEMS.append(1)  # append


def _key() -> str:
    return "k"


def _keyed_store() -> None:
    CACHE[_key()] = 1  # a call inside the write is no read-then-write


class _Lazy:
    """Like Django's settings: touching any attribute evaluates it."""

    def __getattribute__(self, name: str) -> Any:
        raise AssertionError(f"the analysis evaluated a lazy object ({name})")


LAZY = _Lazy()


def _sets_on_lazy() -> None:
    LAZY.flag = True


def _lines(*markers: str) -> list[int]:
    text = Path(__file__).read_text().splitlines()
    return [next(n for n, line in enumerate(text, 1) if line.rstrip().endswith(f"# {m}"))
            for m in markers]


def test_a_read_a_call_then_a_write_is_a_lost_update_pattern() -> None:
    [write] = global_writes(_bump, ())
    assert (write.glob.name, write.pattern) == ("COUNTER", "read-then-write")
    assert write.read is not None
    assert [write.read.line, write.call_line, write.write.line] == _lines(
        "read", "may switch", "write")


def test_a_write_a_call_then_a_read_back_is_found_on_a_container() -> None:
    [write] = global_writes(_cache_then_read, ())
    assert (write.glob.name, write.pattern, write.write.how) == ("CACHE", "write-then-read",
                                                                 "[...] =")
    assert write.read is not None
    assert [write.write.line, write.read.line] == _lines("cache write", "cache read")


def test_the_load_of_the_container_a_write_goes_through_is_not_a_read() -> None:
    [write] = global_writes(_keyed_store, ())
    assert (write.glob.name, write.pattern) == ("CACHE", None)


def test_the_analysis_never_evaluates_a_global_it_looks_at() -> None:
    [write] = global_writes(_sets_on_lazy, ())
    assert (write.glob.name, write.write.how) == ("LAZY", ".flag =")
    assert fingerprint(LAZY)[0] == "object"


def test_accesses_under_a_module_lock_are_guarded() -> None:
    assert global_writes(_guarded, ()) == []


CURRENT: str | None = None


def _set_current(value: str) -> None:
    global CURRENT
    CURRENT = value


def _current() -> str | None:
    return CURRENT


def _set_wait_get() -> str | None:
    _set_current("me")  # helper write
    _wait()
    return _current()  # helper read


def test_a_helper_write_a_call_then_a_helper_read_is_paired_in_the_caller() -> None:
    [write] = global_writes(_set_wait_get, ())
    assert (write.glob.name, write.pattern) == ("CURRENT", "write-then-read")
    assert write.code is _set_wait_get.__code__  # the window a switch is checked against
    assert write.read is not None
    assert [write.write.line, write.read.line] == _lines("helper write", "helper read")
    assert (write.write.how, write.read.how) == ("via _set_current()", "via _current()")


def test_writes_in_called_app_functions_are_found_and_reads_alone_are_not() -> None:
    [write] = global_writes(_append_via_helper, ())
    assert (write.glob.name, write.write.how, write.code.co_name) == ("ITEMS", ".append()",
                                                                      "_append")
    assert write.pattern is None and write.write.line == _lines("append")[0]
    assert global_writes(_append_via_helper, (), depth=0) == []


# -- the probe itself, driven by plain greenlets in this process ----------------------------

def _drive(copies: list[Any], task: Any) -> list[Finding]:
    """Run each copy until it switches back here, then each to its end, under the probe."""
    probe = _globalstate.Probe()
    run = ProbeRun("t", SimpleNamespace(run=task), None, (), len(copies))
    probe.begin(run)
    try:
        glets = [greenlet.greenlet(copy) for copy in copies]
        run.greenlets.update(glets)
        for glet in glets:
            glet.switch()
        for glet in glets:
            if not glet.dead:
                glet.switch()
    finally:
        findings = probe.end(run, [])
    return findings


def test_probe_reports_a_change_held_across_a_switch_and_puts_it_back(tmp_path: Path) -> None:
    start, main = os.getcwd(), greenlet.getcurrent()
    trace = greenlet.gettrace()

    def copy() -> None:
        os.chdir(tmp_path)  # held
        main.switch()
        os.environ["GEVENTCHECK_LEFT"] = "1"  # left

    findings = _drive([copy], copy)
    held, left = sorted(findings, key=lambda f: f.line or 0)
    assert (held.severity, held.line) == ("error", _lines("held")[0])
    assert "the working directory changed" in held.message
    assert (left.severity, left.line) == ("warning", _lines("left")[0])
    assert "os.environ['GEVENTCHECK_LEFT'] changed from unset to '1'" in left.message
    assert os.getcwd() == start and "GEVENTCHECK_LEFT" not in os.environ
    assert greenlet.gettrace() is trace


def _set_timeout() -> None:
    socket.setdefaulttimeout(7.0)  # timeout


def _set_level() -> None:
    logging.getLogger("geventcheck.test").setLevel(logging.DEBUG)  # level


def _set_handler() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # handler


def _set_umask() -> None:
    os.umask(0o077)  # umask


@pytest.mark.parametrize(("change", "marker", "words"), [
    (_set_timeout, "timeout", "socket.getdefaulttimeout() changed from None (no timeout) to 7.0"),
    (_set_level, "level", "the level of logger 'geventcheck.test' changed from NOTSET to DEBUG"),
    (_set_handler, "handler", "the SIGUSR2 handler changed"),
    (_set_umask, "umask", "the umask changed from"),
])
def test_probe_names_the_line_of_changes_python_raises_no_audit_event_for(
        change: Any, marker: str, words: str) -> None:
    logging.getLogger("geventcheck.test")  # exists before the run: its level is watched
    main = greenlet.getcurrent()
    before = take()

    def copy() -> None:
        change()
        main.switch()

    findings = _drive([copy], copy)
    [finding] = findings
    assert (finding.severity, finding.line) == ("error", _lines(marker)[0]), finding.message
    assert words in finding.message
    assert diff(before, take()) == []


def test_probe_is_silent_when_a_change_is_undone_before_any_switch(tmp_path: Path) -> None:
    main = greenlet.getcurrent()

    def copy() -> None:
        old = os.getcwd()
        os.chdir(tmp_path)
        os.chdir(old)
        main.switch()

    findings = _drive([copy, copy], copy)
    assert findings == []


def test_probe_chains_to_the_trace_function_it_found() -> None:
    seen: list[str] = []
    main = greenlet.getcurrent()

    def hub_monitor(event: str, args: Any) -> None:
        seen.append(event)

    def copy() -> None:
        installed.append(greenlet.gettrace())
        main.switch()

    installed: list[Any] = []
    previous = greenlet.settrace(hub_monitor)
    try:
        _drive([copy], copy)
        assert installed[0] is not hub_monitor  # the probe's trace was on during the run
        assert "switch" in seen  # and called the one it found on every switch
        assert greenlet.gettrace() is hub_monitor  # which is back now
    finally:
        greenlet.settrace(previous)


def test_probe_leaves_no_trace_when_another_probe_chained_to_it_and_ended_last() -> None:
    """Probes end in the order they began, so a later probe's trace may sit on top of ours."""
    main = greenlet.getcurrent()
    before = greenlet.gettrace()
    probe = _globalstate.Probe()
    run = ProbeRun("t", SimpleNamespace(run=_wait), None, (), 1)
    probe.begin(run)
    ours = greenlet.gettrace()

    def later_probe(event: str, args: Any) -> None:
        ours(event, args)  # chains to ours

    later = greenlet.settrace(later_probe)
    glet = greenlet.greenlet(main.switch)
    run.greenlets.add(glet)
    glet.switch()
    assert probe.end(run, []) == []
    greenlet.settrace(later)  # the later probe ends: ours is back on top, as a pass-through
    glet.switch()  # the next switch takes it out of the chain
    assert greenlet.gettrace() is before
    probe.begin(run)  # and the next run installs it afresh, once
    assert greenlet.gettrace() is ours
    probe.end(run, [])
    assert greenlet.gettrace() is before
