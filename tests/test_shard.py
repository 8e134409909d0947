"""``audit --shard I/N`` and ``report --merge``, through the real command line: three shards
of a small app, merged, judge every task as the whole audit does, and the gate takes the
merged report. The ExamX comparison is ``benchmarks/shard_examx.py`` (about 4 minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geventcheck._shard import shard_of

from .conftest import APPS, SCHEMA, AuditResult, run_audit

FAST = ("-A", "shardapp", "--runs", "2", "-c", "2", "--explore", "0")
NO_GO = {"shardapp.tasks.native_block", "shardapp.tasks.cpu_burn"}


def geventcheck(*args: str, cwd: Path = APPS,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geventcheck", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def names(report: dict[str, Any]) -> set[str]:
    return {t["name"] for t in report["tasks"]}


def verdicts(report: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """What a verdict is: go/no-go, kind of work, pool, and the kinds of its errors."""
    return {t["name"]: (t["verdict"], t["classification"], t["recommended_pool"],
                        sorted({f["kind"] for f in t["findings"] if f["severity"] == "error"}))
            for t in report["tasks"]}


@pytest.fixture(scope="module")
def audits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AuditResult]:
    """The whole audit and its three shards, each a separate run of the command."""
    out = {"whole": run_audit(*FAST, tmp_path=tmp_path_factory.mktemp("whole"))}
    for i in (1, 2, 3):
        out[f"{i}/3"] = run_audit(*FAST, "--shard", f"{i}/3",
                                  tmp_path=tmp_path_factory.mktemp(f"shard{i}"))
    for key, result in out.items():
        assert result.report is not None, (key, result.stderr)
    return out


@pytest.fixture(scope="module")
def shard_files(audits: dict[str, AuditResult],
                tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("shards")
    paths = []
    for i in (1, 2, 3):
        path = folder / f"shard-{i}.json"
        path.write_text(json.dumps(audits[f"{i}/3"].report))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def merged(shard_files: list[Path],
           tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str],
                                                              dict[str, Any], Path]:
    folder = tmp_path_factory.mktemp("merged")
    out, plan = folder / "merged.json", folder / "plan.md"
    done = geventcheck("report", "--merge", *map(str, shard_files), "--json", str(out),
                       "--markdown", str(plan))
    assert out.exists(), done.stderr
    return done, json.loads(out.read_text()), plan


def test_every_task_is_in_exactly_one_shard(audits: dict[str, AuditResult]) -> None:
    shards = [names(audits[f"{i}/3"].report or {}) for i in (1, 2, 3)]
    assert set.union(*shards) == names(audits["whole"].report or {})
    assert sum(len(s) for s in shards) == len(names(audits["whole"].report or {}))
    assert all(shards), "eleven tasks in three shards: none should be empty"
    for i in (1, 2, 3):
        assert audits[f"{i}/3"].report["settings"]["shard"] == f"{i}/3"  # type: ignore[index]


def test_merged_shards_give_the_verdicts_of_the_whole_audit(
        audits: dict[str, AuditResult], merged: Any) -> None:
    done, report, _plan = merged
    whole = audits["whole"].report or {}
    assert verdicts(report) == verdicts(whole)
    assert {n for n, v in verdicts(report).items() if v[0] == "no-go"} == NO_GO
    assert report["summary"] == whole["summary"]
    assert done.returncode == audits["whole"].returncode == 1, done.stderr
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert "shard" not in report["settings"]
    assert report["merged"]["shards"] == 3
    assert report["environment"]["patched"] is True


def test_the_merged_plan_is_the_whole_audits_plan(audits: dict[str, AuditResult],
                                                  merged: Any) -> None:
    _done, report, plan = merged
    whole = audits["whole"].report or {}

    def queues(data: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
        return [(q["queue"], q["pool"], q["tasks"]) for q in data["plan"]["queues"]]

    assert queues(report) == queues(whole)
    assert report["plan"]["fix_first"] == whole["plan"]["fix_first"]
    text = plan.read_text()
    assert "shardapp.tasks.native_block" in text and "## Fix first" in text


def test_the_gate_takes_the_merged_report(audits: dict[str, AuditResult], merged: Any,
                                          tmp_path: Path) -> None:
    _done, report, _plan = merged
    answers = []
    for name, data in (("merged", report), ("whole", audits["whole"].report)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        decision = tmp_path / f"{name}-gate.json"
        done = geventcheck("gate", "--report", str(path), "--json", str(decision),
                           cwd=tmp_path)
        assert done.returncode == 1, done.stderr  # closed: two no-go, one not run
        gated = json.loads(decision.read_text())
        answers.append(sorted((t["name"], t["status"]) for t in gated["tasks"]))
    assert answers[0] == answers[1]


def test_the_split_does_not_depend_on_hash_seed_or_order(audits: dict[str, AuditResult],
                                                         tmp_path: Path) -> None:
    again = run_audit(*FAST, "--shard", "2/3", "--shuffle", "7", tmp_path=tmp_path,
                      env={"PYTHONHASHSEED": "12345"})
    assert again.report is not None, again.stderr
    assert names(again.report) == names(audits["2/3"].report or {})


def test_a_shard_with_no_task_writes_an_empty_report(tmp_path: Path) -> None:
    tasks = ["cpu_burn", "light_a", "light_b", "native_block", "needs_args",
             *(f"wait_{c}" for c in "abcdef")]
    owned = {shard_of(f"shardapp.tasks.{t}", 40) for t in tasks}
    empty = min(set(range(1, 41)) - owned)
    result = run_audit(*FAST, "--shard", f"{empty}/40", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.report is not None and result.report["tasks"] == []
    assert f"shard {empty}/40 holds none" in result.stderr


@pytest.mark.parametrize("value", ["4/3", "0/3", "1/0", "two/3", "1"])
def test_a_shard_out_of_range_is_one_line_and_exit_2(value: str) -> None:
    done = geventcheck("audit", *FAST, "--shard", value)
    assert done.returncode == 2
    assert done.stderr.startswith("geventcheck: error: --shard: ")
    assert done.stderr.count("\n") == 1


def _edited(path: Path, folder: Path, name: str, **settings: Any) -> Path:
    data = json.loads(path.read_text())
    data["settings"].update(settings)
    out = folder / name
    out.write_text(json.dumps(data))
    return out


def test_reports_that_are_not_one_sharded_audit_are_refused(shard_files: list[Path],
                                                            tmp_path: Path) -> None:
    one, two, three = map(str, shard_files)
    other = str(_edited(shard_files[2], tmp_path, "other.json", threshold_ms=80.0))
    four = str(_edited(shard_files[2], tmp_path, "four.json", shard="3/4"))
    whole = str(_edited(shard_files[2], tmp_path, "whole.json", shard=None))
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    (tmp_path / "torn.json").write_text('{"schema": "geventc')
    cases = {
        (one, two, other): "other.json: audited with other settings than shard-1.json "
                           "(threshold_ms 80.0 vs 50.0)",
        (one, two, two): "shard 2/3 given twice",
        (one, three): "shard(s) 2/3 of 3 missing",
        (one, two, four): "four.json: shard 3 of 4, shard-1.json is of 3",
        (one, whole): "is a whole audit",
        (one, two, three, str(tmp_path / "notes.json")): "not a geventcheck report",
        (one, str(tmp_path / "torn.json")): "not a JSON report",
        (one, str(tmp_path / "absent.json")): "cannot read the report",
        (): "give the reports to merge",
    }
    for paths, message in cases.items():
        done = geventcheck("report", "--merge", *paths, "--json", str(tmp_path / "out.json"),
                           cwd=tmp_path)
        assert done.returncode == 2, (paths, done.stderr)
        assert done.stderr.startswith("geventcheck: error: "), done.stderr
        assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert not (tmp_path / "out.json").exists()


def test_overlapping_whole_reports_are_refused(audits: dict[str, AuditResult],
                                              tmp_path: Path) -> None:
    path = tmp_path / "whole.json"
    path.write_text(json.dumps(audits["whole"].report))
    done = geventcheck("report", "--merge", str(path), str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "these reports overlap" in done.stderr and done.stderr.count("\n") == 1


def test_report_without_merge_says_what_to_do(tmp_path: Path) -> None:
    done = geventcheck("report", cwd=tmp_path)
    assert done.returncode == 2 and "report --merge" in done.stderr


NAMES = st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=40, unique=True)


@given(NAMES, st.text(min_size=1, max_size=30), st.integers(1, 12))
def test_adding_a_task_moves_no_other(tasks: list[str], new: str, count: int) -> None:
    before = {t: shard_of(t, count) for t in tasks}
    after = {t: shard_of(t, count) for t in [*tasks, new]}
    assert all(after[t] == before[t] for t in tasks)


@given(NAMES, st.integers(1, 12))
def test_one_more_shard_only_takes_tasks(tasks: list[str], count: int) -> None:
    for t in tasks:
        moved_to = shard_of(t, count + 1)
        assert moved_to in (shard_of(t, count), count + 1)
