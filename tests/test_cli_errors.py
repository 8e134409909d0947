"""Bad input gets one clear line and exit code 2, never a traceback, and no report file."""

from __future__ import annotations

import pytest

from .conftest import APPS


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-A", "no_such_module"], "no module named 'no_such_module'"),
        (["-A", "broken"], "broken/tasks.py:9: SyntaxError"),
        (["-A", "notapp"], "cannot load app 'notapp'"),
        (["-A", "hazards:nothing"], "cannot load app 'hazards:nothing'"),
        (["-A", "hazards", "--task", "nope.*"], "no tasks to audit in 'hazards' matching nope.*"),
        (["-A", "hazards", "-c", "0"], "expected a positive number, got 0"),
        (["-A", "hazards", "--warn-ms", "80"], "--warn-ms (80) must not exceed --threshold-ms"),
        (["-A", "hazards", "--shim", "nonsense"], "'nonsense' is not one of"),
        (["--concurrency", "4"], "missing the app: give -A/--app, or `app` in a --scenario"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(audit, args: list[str], expected: str) -> None:
    result = audit(*args, cwd=APPS)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("geventcheck: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.report is None  # written completely or not at all


def test_json_into_missing_folder_is_exit_2(tmp_path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "geventcheck", "audit", "-A", "hazards", "--json",
         str(tmp_path / "missing" / "r.json")],
        cwd=APPS, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
