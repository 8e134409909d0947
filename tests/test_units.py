"""The pure parts: judging stalls, classifying tasks, reading /proc, writing reports."""

from __future__ import annotations

import json
import os
import socket
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geventcheck._judge import classify, recommend
from geventcheck._model import Finding
from geventcheck.detectors import _native
from geventcheck.detectors._hub import Evidence, FrameInfo, Sample, Stall
from geventcheck.detectors._stalls import merge, stall_findings
from geventcheck.report import write_atomic

APP_DIR = Path(__file__).parent / "apps" / "unitsrc"
APP_FILE = str(APP_DIR / "proj_tasks.py")
APP_ROOTS = (str(APP_DIR) + os.sep,)
LIB_FILE = os.path.join(sysconfig.get_paths()["purelib"], "psycopg2", "extras.py")


def _stall(duration: float, cpu: float, syscalls: list[str], *, phase: str = "solo",
           endpoint: str | None = None, gil_free: bool | None = None, gil_wait: bool = False,
           line: int = 42, **extra: object) -> Stall:
    stack = (FrameInfo(LIB_FILE, 10, "execute"), FrameInfo(APP_FILE, line, "sync_orders"))
    evidence = Evidence(
        samples=[Sample(_native.SyscallSample(s, 7), stack, gil_free, gil_wait=gil_wait)
                 for s in syscalls],
        peers={7: endpoint},
    )
    return Stall(duration, cpu, phase, evidence, **extra)  # type: ignore[arg-type]


def _native_sample(name: str, stack: tuple[FrameInfo, ...]) -> Sample:
    return Sample(_native.SyscallSample(name, 7), stack)


def test_stall_is_blamed_where_most_samples_were_taken() -> None:
    lookup = (FrameInfo(APP_FILE, 30, "sync_orders"),)
    query = (FrameInfo(APP_FILE, 42, "sync_orders"),)
    evidence = Evidence(
        samples=[Sample(_native.SyscallSample("recvfrom", 5), lookup)] * 3
        + [Sample(_native.SyscallSample("poll", 7), query)] * 20,
        peers={5: "127.0.0.1:6379", 7: "127.0.0.1:5432"},
    )
    [f] = stall_findings([Stall(0.23, 0.0, "solo", evidence)], threshold_s=0.05,
                         app_roots=APP_ROOTS)
    assert (f.line, f.endpoint) == (42, "127.0.0.1:5432")
    assert f.native == "cursor.execute waiting in poll()"


def test_waiting_stall_is_a_blocking_call_at_the_app_line() -> None:
    [f] = stall_findings([_stall(0.2, 0.001, ["poll"] * 5, endpoint="127.0.0.1:5432")],
                         threshold_s=0.05, app_roots=APP_ROOTS)
    assert (f.kind, f.severity, f.line, f.function) == ("blocking-call", "error", 42, "sync_orders")
    assert f.native == "cursor.execute waiting in poll()"
    assert f.endpoint == "127.0.0.1:5432" and "127.0.0.1:5432" in f.message
    assert f.duration_ms == 200.0


def test_short_stall_is_a_warning_not_an_error() -> None:
    [f] = stall_findings([_stall(0.02, 0.0, ["clock_nanosleep"])], threshold_s=0.05,
                         app_roots=APP_ROOTS)
    assert f.severity == "warning"


def test_python_loop_names_no_native_call_but_gil_releasing_code_does() -> None:
    # a Python loop stops while the watcher holds the GIL (a futex on the GIL itself);
    # native code without the GIL runs on
    [loop] = stall_findings([_stall(0.1, 0.099, ["futex"] * 9, gil_free=False, gil_wait=True,
                                    line=50)],
                            threshold_s=0.05, app_roots=APP_ROOTS)
    [kdf] = stall_findings([_stall(0.1, 0.099, ["running"] * 9, gil_free=True, line=46)],
                           threshold_s=0.05, app_roots=APP_ROOTS)
    assert loop.kind == kdf.kind == "cpu-bound"
    assert loop.native is None and "threadpool" not in (loop.fix or "")
    assert "native lock" not in loop.message and "gevent.lock" not in (loop.fix or "")
    assert kdf.native == "hashlib.pbkdf2_hmac" and "threadpool" in (kdf.fix or "")


def test_a_thread_off_the_cpu_in_no_syscall_is_the_machine_not_the_task() -> None:
    # preempted by the OS or the hypervisor: little CPU though every look found it
    # "running"; judged by its CPU time, it did 1 ms of work
    assert stall_findings([_stall(0.03, 0.001, ["running"] * 5)], threshold_s=0.05,
                          warn_s=0.01) == []
    assert stall_findings([_stall(0.03, 0.001, [], queued_s=0.029)], threshold_s=0.05,
                          warn_s=0.01) == []


def test_warm_up_stalls_are_info_and_never_judged() -> None:
    [f] = stall_findings([_stall(0.3, 0.0, ["poll"], phase="warm-up")], threshold_s=0.05)
    assert (f.kind, f.severity) == ("warm-up", "info")


def test_blocking_driver_on_the_stack_adds_unsafe_driver() -> None:
    import psycopg2

    stack = (
        FrameInfo(os.path.join(os.path.dirname(psycopg2.__file__), "extras.py"), 1, "execute"),
        FrameInfo(APP_FILE, 42, "sync_orders"),
    )
    stall = Stall(0.2, 0.0, "solo", Evidence(samples=[_native_sample("poll", stack)]))
    kinds = [f.kind for f in stall_findings([stall], threshold_s=0.05,
                                            blocking_drivers=frozenset({"psycopg2"}))]
    assert kinds == ["blocking-call", "unsafe-driver"]
    cooperative = stall_findings([stall], threshold_s=0.05, blocking_drivers=frozenset())
    assert [f.kind for f in cooperative] == ["blocking-call"]


@given(st.lists(st.tuples(st.sampled_from(["blocking-call", "cpu-bound"]),
                          st.integers(1, 3), st.floats(1, 500)), min_size=1, max_size=30))
def test_merge_keeps_the_count_and_the_worst(items: list[tuple[str, int, float]]) -> None:
    findings = [Finding(kind, "warning" if ms < 50 else "error", "m", file="a.py", line=line,
                        function="f", duration_ms=ms) for kind, line, ms in items]
    merged = merge(findings)
    assert sum(f.count for f in merged) == len(findings)
    for f in merged:
        same = [g for g in findings if g.kind == f.kind
                and (f.kind == "cpu-bound" or g.line == f.line)]
        assert f.duration_ms == max(g.duration_ms or 0 for g in same)
        assert (f.severity == "error") == any(g.severity == "error" for g in same)


@pytest.mark.parametrize(
    ("wall", "cpu", "block", "expected"),
    [(5, 4, 0, "light"), (200, 190, 180, "cpu"), (200, 10, 0, "io"), (200, 100, 0, "mixed"),
     (15, 1, 12, "io")],
)
def test_classify(wall: float, cpu: float, block: float, expected: str) -> None:
    assert classify(wall, cpu, block, warn_ms=10, runs=3) == expected


def test_recommend_keeps_no_go_io_tasks_on_prefork_until_fixed() -> None:
    blocking = [Finding("blocking-call", "error", "m")]
    assert recommend("io", []) == "gevent"
    assert recommend("io", blocking) == "prefork"
    assert recommend("cpu", []) == "prefork"
    assert recommend("light", []) == "either"


def test_decode_proc_net_addresses() -> None:
    assert _native._decode_address("0100007F:1538") == "127.0.0.1:5432"
    assert _native._decode_address("00000000000000000000000001000000:0CEA") == "[::1]:3306"


def test_peer_of_a_connected_socket_is_read_from_proc() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    try:
        assert _native.peer_of_fd(client.fileno()) == f"127.0.0.1:{server.getsockname()[1]}"
        assert _native.peer_of_fd(os.open(os.devnull, os.O_RDONLY)) is None
    finally:
        client.close()
        server.close()


def test_parse_syscall_names_the_call_and_its_fd() -> None:
    sample = _native.parse_syscall(["45", "0x7", "0x0", "0x0", "0x0", "0x0", "0x0", "0x0", "0x0"])
    if _native._SYSCALLS.get(45) == "recvfrom":
        assert (sample.name, sample.fd) == ("recvfrom", 7)
    assert _native.parse_syscall(["running"]).name == "running"


def test_write_atomic_leaves_the_old_report_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_atomic(str(target), json.dumps({"ok": 1}))

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        write_atomic(str(target), Boom())  # type: ignore[arg-type]
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_every_finding_kind_a_detector_emits_is_documented() -> None:
    from geventcheck._kinds import FINDING_KINDS
    from geventcheck.detectors import KINDS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for kind in KINDS:
        assert kind in FINDING_KINDS, f"{kind} is not a kind of report.schema.json"
        assert f"| `{kind}` |" in readme, f"the README's findings table lacks {kind}"


def test_public_api_is_sorted_and_loads_the_audit_only_when_asked() -> None:
    import subprocess
    import sys

    code = ("import sys, geventcheck; assert 'geventcheck._audit' not in sys.modules; "
            "assert 'gevent' not in sys.modules; "
            "assert sorted(geventcheck.__all__) == geventcheck.__all__; "
            "[getattr(geventcheck, n) for n in geventcheck.__all__]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_relative_paths_survive_a_task_that_removed_the_working_directory(tmp_path) -> None:
    from geventcheck._paths import relative

    gone = tmp_path / "gone"
    gone.mkdir()
    here = os.getcwd()
    os.chdir(gone)
    gone.rmdir()
    try:
        assert relative("/srv/app/tasks.py") == "/srv/app/tasks.py"
    finally:
        os.chdir(here)
