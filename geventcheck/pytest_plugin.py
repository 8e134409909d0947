"""geventcheck's pytest plugin: the app's own test suite tells which code blocks the gevent hub.

``pytest --gevent-check`` patches the process with gevent when this module is
imported (pytest imports ``pytest11`` plugins before any conftest file or test
module), or at the latest in ``pytest_load_initial_conftests``, and runs every
test under the hub monitor; ``@pytest.mark.gevent_safe`` checks one test without
the flag. ``pytest --gevent-record PATH`` writes the Celery task calls the suite
makes into a scenario file the audit reads. Nothing here imports the app's
libraries before patching: imports beyond ``os``/``sys``/``pytest`` stay local.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._model import Finding
    from .detectors._hub import HubMonitor

__all__ = ["AuditResult"]

CHECK_FLAG = "--gevent-check"
# Libraries that, imported before patching, keep unpatched references or pick a blocking
# wait for good. pytest itself imports socket, select and the like before any plugin:
# gevent patches those modules in place, so they are only named in the header.
MATTERS_BEFORE_PATCH = (
    "ssl", "django.db", "psycopg", "psycopg2", "MySQLdb", "pymysql", "redis", "requests",
    "urllib3", "grpc", "cassandra", "kombu", "celery",
)
STDLIB_BEFORE_PATCH = ("socket", "select", "selectors", "queue", "subprocess", "threading")
UNSAFE_KINDS = ("blocking-call", "cpu-bound", "unsafe-driver")

HELP_CHECK = ("patch the process with gevent before conftest files and test modules are "
              "imported, and fail every test that blocks the gevent hub")
HELP_THRESHOLD = "a test fails when it blocks the hub longer than this many ms (default 50)"
HELP_WARN = "stalls shorter than this many ms are not reported (default 10)"
HELP_RECORD = ("record the Celery task calls the suite makes into this scenario file "
               "(written or merged) for `geventcheck audit --scenario`")
HELP_RECORD_CALLS = "distinct calls kept per task in the recorded scenario (default 3)"
HELP_SAFE = ("gevent_safe(threshold_ms=None, allow=()): check this test for hub stalls, also "
             "without --gevent-check; allow lists finding kinds to tolerate")
HELP_UNSAFE = ("gevent_unsafe(reason): a known hub-blocking test: expected to fail "
               "geventcheck's check (strict: it fails once the test has become safe)")


@dataclass(frozen=True)
class _Setting:
    """One setting and its four sources, in the order they win."""

    key: str  # [tool.geventcheck] key, GEVENTCHECK_<KEY>
    option: str  # command-line option
    ini: str  # pytest ini key
    help: str
    default: float
    integer: bool = False


SETTINGS = (
    _Setting("threshold_ms", "--gevent-threshold-ms", "gevent_threshold_ms", HELP_THRESHOLD,
             50.0),
    _Setting("warn_ms", "--gevent-warn-ms", "gevent_warn_ms", HELP_WARN, 10.0),
    _Setting("record_calls", "--gevent-record-calls", "gevent_record_calls",
             HELP_RECORD_CALLS, 3, integer=True),
)


def _positive(value: object, source: str, integer: bool) -> float:
    try:
        number = int(str(value)) if integer else float(str(value))
    except ValueError:
        number = -1
    if not number > 0 or number != number:  # noqa: PLR0124 - NaN is not a threshold
        kind = "a positive integer" if integer else "a positive number"
        raise pytest.UsageError(f"{source}: expected {kind}, got {value!r}")
    return number


def _pyproject_table(rootpath: str) -> tuple[dict[str, Any], str | None]:
    from ._policy import find_pyproject

    path = find_pyproject(rootpath)
    if path is None:
        return {}, None
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise pytest.UsageError(f"{path}: cannot read [tool.geventcheck]: {exc}") from exc
    table = data.get("tool", {}).get("geventcheck", {})
    return (table if isinstance(table, dict) else {}), path


def resolve_settings(config: pytest.Config) -> dict[str, float]:
    """Command line, then GEVENTCHECK_* environment, then [tool.geventcheck], then the pytest
    ini, then the default: each value checked and, when bad, named with where it came from."""
    from ._policy import env_name

    table, path = _pyproject_table(str(config.rootpath))
    resolved: dict[str, float] = {}
    for s in SETTINGS:
        cli = config.getoption(s.option.lstrip("-").replace("-", "_"))
        env = os.environ.get(env_name(s.key))
        ini = config.getini(s.ini)
        if cli is not None:
            value, source = cli, s.option
        elif env:
            value, source = env, f"${env_name(s.key)}"
        elif s.key in table:
            value, source = table[s.key], f"{path}: [tool.geventcheck] {s.key}"
        elif ini:
            value, source = ini, f"ini option {s.ini}"
        else:
            value, source = s.default, "default"
        resolved[s.key] = _positive(value, source, s.integer)
    return resolved


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("geventcheck", "gevent safety (geventcheck)")
    group.addoption(CHECK_FLAG, action="store_true", default=False, help=HELP_CHECK)
    group.addoption("--gevent-record", metavar="PATH", default=None, help=HELP_RECORD)
    for s in SETTINGS:
        group.addoption(s.option, dest=s.option.lstrip("-").replace("-", "_"), default=None,
                        metavar="N", help=s.help)
        parser.addini(s.ini, s.help, default="")


# -- patching, as early as a plugin can --------------------------------------------------
@dataclass
class _Patched:
    hook: str
    before: tuple[str, ...]
    stdlib: tuple[str, ...]


_PATCHED: _Patched | None = None


def _patch(hook: str) -> None:
    """Patch once; remember which modules that matter were already imported."""
    global _PATCHED
    if _PATCHED is not None:
        return
    before = tuple(m for m in MATTERS_BEFORE_PATCH if m in sys.modules)
    stdlib = tuple(m for m in STDLIB_BEFORE_PATCH if m in sys.modules)
    import warnings

    from gevent import monkey

    with warnings.catch_warnings(record=True) as caught:
        # gevent's own warning (ssl imported first) is said in the header and the summary,
        # with what to do; under -W error it would end the run before any test
        warnings.simplefilter("always", monkey.MonkeyPatchWarning)
        if not monkey.is_module_patched("socket"):
            # A pytest-xdist worker talks to the controller from execnet's own OS thread,
            # through threading primitives created after this point: those stay native.
            monkey.patch_all(thread=not os.environ.get("PYTEST_XDIST_WORKER"))
    for warning in caught:
        if not issubclass(warning.category, monkey.MonkeyPatchWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    _PATCHED = _Patched(hook, before, stdlib)


def _wants_check(args: Iterable[str]) -> bool:
    return any(a == CHECK_FLAG for a in args)


def _may_distribute(args: Iterable[str]) -> bool:
    """pytest-xdist options: this process may be the controller, which runs no test and
    must stay unpatched (execnet's threads talk to the workers)."""
    return any(a.startswith(("-n", "--numprocesses", "--dist", "-d", "--tx")) for a in args)


def _is_controller(config: pytest.Config | None, namespace: Any = None) -> bool:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return False
    ns = namespace if namespace is not None else config.option if config else None
    procs = getattr(ns, "numprocesses", None)
    return bool(procs) or getattr(ns, "dist", "no") != "no" or bool(getattr(ns, "tx", None))


if _wants_check(sys.argv[1:]) and not _may_distribute(sys.argv[1:]):
    _patch("import of geventcheck.pytest_plugin (pytest11 entry point)")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser,
                                  args: list[str]) -> None:
    """The latest moment before conftest files: for ``pytest.main([...])`` and addopts."""
    namespace = early_config.known_args_namespace
    if (_wants_check(args) or getattr(namespace, "gevent_check", False)) and \
            not _is_controller(None, namespace):
        _patch("pytest_load_initial_conftests")


def _early_advice(before: tuple[str, ...]) -> str:
    return (f"imported before gevent patched the process: {', '.join(before)}. They may keep "
            "blocking sockets or a blocking wait function. Something loaded them before "
            "geventcheck's plugin: a plugin given with -p, a sitecustomize or .pth file. "
            "Load geventcheck first (pytest -p geventcheck.pytest_plugin --gevent-check ...) "
            "or remove that early import")


# -- the check ---------------------------------------------------------------------------
@dataclass
class _State:
    settings: dict[str, float]
    check_all: bool
    monitor: HubMonitor | None = None
    checked: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    worst: list[tuple[float, str, str]] = field(default_factory=list)


_STATE_KEY = pytest.StashKey["_State"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", HELP_SAFE)
    config.addinivalue_line("markers", HELP_UNSAFE)
    settings = resolve_settings(config)
    check_all = bool(config.getoption("gevent_check")) and not _is_controller(config)
    state = config.stash[_STATE_KEY] = _State(settings, check_all)
    if check_all:
        _patch("pytest_configure")  # a plugin registered late (pytester in-process, -p)
        # started here, once: its calibration is no test's time
        state.monitor = _new_monitor(min(settings["warn_ms"], settings["threshold_ms"]) / 1000)
    if config.getoption("gevent_record"):
        from ._recorder import Recorder

        recorder = Recorder(config.getoption("gevent_record"), int(settings["record_calls"]))
        recorder.install()
        config.stash[_RECORDER_KEY] = recorder


def _safe_args(threshold_ms: float | None = None, allow: Iterable[str] = ()) -> tuple[
        float | None, tuple[str, ...]]:
    return threshold_ms, tuple(allow)


def _unsafe_args(reason: str = "") -> str:
    return reason


def _marker_options(item: pytest.Item) -> tuple[float | None, tuple[str, ...], str | None]:
    """The markers' arguments, checked by calling a function with their signature: an unknown
    keyword is a TypeError, turned into a usage error that names the test."""
    threshold: float | None = None
    allow: tuple[str, ...] = ()
    reason: str | None = None
    try:
        if (safe := item.get_closest_marker("gevent_safe")) is not None:
            threshold, allow = _safe_args(*safe.args, **safe.kwargs)
            if threshold is not None:
                _positive(threshold, f"{item.nodeid}: gevent_safe(threshold_ms=...)", False)
            unknown: list[str] = sorted(set(allow) - set(UNSAFE_KINDS))
            if unknown:
                raise TypeError(f"gevent_safe(allow=...) got unknown kinds {unknown}; "
                                f"known: {', '.join(UNSAFE_KINDS)}")
        if (unsafe := item.get_closest_marker("gevent_unsafe")) is not None:
            reason = _unsafe_args(*unsafe.args, **unsafe.kwargs)
    except TypeError as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from exc
    return threshold, allow, reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        _marker_options(item)


def _new_monitor(warn_s: float) -> HubMonitor:
    import greenlet

    from .detectors._hub import HubMonitor

    monitor = HubMonitor(warn_s)
    monitor.start()
    monitor.ignore(greenlet.getcurrent())  # pytest's own work between tests
    return monitor


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    state: _State | None = item.config.stash.get(_STATE_KEY, None)
    if state is None:
        return (yield)
    threshold, allow, reason = _marker_options(item)
    marked = threshold is not None or bool(allow) or reason is not None or \
        item.get_closest_marker("gevent_safe") is not None
    if not (state.check_all or marked):
        return (yield)
    import gevent
    import greenlet

    warn_s = min(state.settings["warn_ms"], threshold or state.settings["threshold_ms"]) / 1000
    # without --gevent-check, a marked test gets a monitor of its own
    own = state.monitor is None
    monitor = _new_monitor(warn_s) if state.monitor is None else state.monitor
    main = greenlet.getcurrent()
    gevent.sleep(0)  # ends pytest's own stretch: what follows is the test's
    monitor.take_stalls()
    monitor._ignored.discard(main)
    monitor.phase = "test"
    threshold_ms = threshold or state.settings["threshold_ms"]
    try:
        result = yield
    finally:
        gevent.sleep(0)  # ends the test's stretch, so the trace times it
        stalls = monitor.take_stalls()
        monitor.ignore(main)
        monitor.phase = "idle"
        if own:
            monitor.stop()
        failing = _judge(item, stalls, threshold_ms / 1000, warn_s, allow)
        if failing and sys.exc_info()[0] is not None:
            # the test failed anyway (a timeout, an assertion): the stalls go beside it
            item.add_report_section("call", "geventcheck",
                                    _failure_text(item, failing, threshold_ms))
    if reason is not None:
        if failing:
            pytest.xfail(f"gevent_unsafe: {reason}")
        pytest.fail(f"{item.nodeid} is marked gevent_unsafe({reason!r}) but no longer blocks "
                    "the gevent hub: remove the marker", pytrace=False)
    if failing:
        pytest.fail(_failure_text(item, failing, threshold_ms), pytrace=False)
    return result


def _judge(item: pytest.Item, stalls: list[Any], threshold_s: float,
           warn_s: float, allow: tuple[str, ...]) -> list[Finding]:
    from .detectors import _drivers
    from .detectors._stalls import merge, stall_findings

    blocking = frozenset(d.name for d in _drivers.inventory(1) if d.status == "blocking")
    findings = merge(stall_findings(stalls, threshold_s=threshold_s, warn_s=warn_s,
                                    blocking_drivers=blocking))
    failing = [f for f in findings if f.severity == "error" and f.kind in UNSAFE_KINDS
               and f.kind not in allow]
    item.user_properties.append(("geventcheck", json.dumps({
        "findings": [[f.kind, f.duration_ms or 0.0, f.where] for f in failing]})))
    return failing


def _failure_text(item: pytest.Item, failing: list[Finding], threshold_ms: float) -> str:
    test_file = str(item.path)
    lines = [f"geventcheck: this test blocks the gevent hub (threshold {threshold_ms:g} ms):"]
    for f in failing:
        lines.append(f"  {f.kind}: {f.message}")
        if f.where:
            lines.append(f"    at {f.where}")
        else:
            path, line0, name = item.location
            lines.append(f"    at {path}:{(line0 or 0) + 1} in {name}, the test (native code "
                         "kept the GIL, so the line inside it is unknown)")
        called = next((s for s in f.stack if s.startswith(test_file) or
                       os.path.relpath(test_file) in s), None)
        if called and f.file and not test_file.endswith(f.file):
            lines.append(f"    called from {called}")
        if f.native:
            lines.append(f"    native call: {f.native}")
        if f.fix:
            lines.append(f"    fix: {f.fix}")
    lines.append("  (tolerate it with @pytest.mark.gevent_safe(allow=[kind]) or "
                 "@pytest.mark.gevent_unsafe(reason=...))")
    return "\n".join(lines)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count on the side that prints: the controller under pytest-xdist gets the properties."""
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name != "geventcheck":
            continue
        state = _CONTROLLER_STATE[0]
        if state is None:
            return
        state.checked += 1
        for kind, duration, where in json.loads(str(value))["findings"]:
            state.kinds[kind] += 1
            state.worst.append((duration, kind, f"{report.nodeid} ({where})"))


_CONTROLLER_STATE: list[_State | None] = [None]


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _CONTROLLER_STATE[0] = session.config.stash.get(_STATE_KEY, None)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if _PATCHED is None:
        return []
    lines = [f"geventcheck: gevent patched the process in {_PATCHED.hook}"]
    if os.environ.get("PYTEST_XDIST_WORKER"):
        lines.append("geventcheck: pytest-xdist worker: threading left unpatched for execnet")
    if _PATCHED.stdlib:
        lines.append(f"geventcheck: imported by pytest before, patched in place: "
                     f"{', '.join(_PATCHED.stdlib)}")
    if _PATCHED.before:
        lines.append(f"geventcheck: WARNING {_early_advice(_PATCHED.before)}")
    if config.getoption("timeout_method", None) == "thread" and \
            not os.environ.get("PYTEST_XDIST_WORKER"):
        lines.append("geventcheck: WARNING pytest-timeout's thread method runs its timer in a "
                     "greenlet once threading is patched: a test that blocks the hub will not "
                     "time out; use --timeout-method=signal")
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    state = _CONTROLLER_STATE[0]
    if state is None or not (state.check_all or state.checked or
                             config.getoption("gevent_check")):
        return
    tr = terminalreporter
    tr.section("geventcheck")
    tr.line(f"tests checked: {state.checked}")
    if state.kinds:
        tr.line("findings by kind: " + ", ".join(f"{k} {n}" for k, n in
                                                 sorted(state.kinds.items())))
        tr.line("worst stalls:")
        for duration, kind, where in sorted(state.worst, reverse=True)[:5]:
            tr.line(f"  {duration:8.1f} ms  {kind:14}  {where}")
    else:
        tr.line("no test blocked the gevent hub")
    if _PATCHED is not None and _PATCHED.before:
        tr.line(f"WARNING {_early_advice(_PATCHED.before)}")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE_KEY, None)
    if state is not None and state.monitor is not None:
        state.monitor.stop()
        state.monitor = None
    recorder = config.stash.get(_RECORDER_KEY, None)
    if recorder is not None:
        recorder.uninstall()


# -- recording task calls ----------------------------------------------------------------
_RECORDER_KEY = pytest.StashKey[Any]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    recorder = session.config.stash.get(_RECORDER_KEY, None)
    if recorder is not None:
        recorder.write()


# -- auditing a task from a test ---------------------------------------------------------
@dataclass(frozen=True)
class AuditResult:
    """What ``geventcheck audit`` says of one task: its verdict, reason and findings."""

    task: str
    verdict: str
    reason: str | None
    findings: list[dict[str, Any]]
    report: dict[str, Any]

    @property
    def kinds(self) -> set[str]:
        return {f["kind"] for f in self.findings}


@pytest.fixture
def gevent_audit(request: pytest.FixtureRequest, tmp_path: Any) -> Callable[..., AuditResult]:
    """Audit one Celery task with these inputs, as the CLI does, in a process of its own."""
    state: _State | None = request.config.stash.get(_STATE_KEY, None)
    settings = state.settings if state else {s.key: s.default for s in SETTINGS}

    def audit(task: Any, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
              concurrency: int = 4, timeout: float = 300.0) -> AuditResult:
        from ._recorder import app_path, dump_scenario

        spec, folder = app_path(task.app)
        scenario = tmp_path / f"audit-{task.name}.toml"
        scenario.write_text(dump_scenario(
            {"app": spec, "paths": [folder] if folder else [],
             "tasks": {task.name: {"calls": [{"args": list(args), "kwargs": kwargs or {}}]}}}))
        out = tmp_path / f"audit-{task.name}.json"
        import subprocess

        proc = subprocess.run(
            [sys.executable, "-m", "geventcheck", "audit", "--scenario", str(scenario),
             "--task", task.name, "-c", str(concurrency), "--json", str(out),
             "--threshold-ms", f"{settings['threshold_ms']:g}",
             "--warn-ms", f"{settings['warn_ms']:g}"],
            capture_output=True, text=True, timeout=timeout, check=False)
        if not out.exists():
            pytest.fail(f"geventcheck audit of {task.name} gave no report (exit "
                        f"{proc.returncode}): {proc.stderr.strip()}", pytrace=False)
        report = json.loads(out.read_text())
        entry = next(t for t in report["tasks"] if t["name"] == task.name)
        return AuditResult(task.name, entry["verdict"], entry.get("reason"),
                           entry["findings"], report)

    return audit
