"""``geventcheck bench``: one tiny batch of ExamX's I/O tasks through a real prefork and a
real gevent worker on Redis; what the user reads (table, JSON, PNG) and that nothing is left
running or queued. No speed ratios here: those are the bench's own output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from .conftest import ROOT, processes_with, require_service

REDIS_URL = "redis://127.0.0.1:6379/14"
EXAMX = ROOT / "scenarios" / "examx" / "scenario.toml"
COUNT = 12


def bench(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geventcheck", "bench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240)


def bench_workers() -> list[str]:
    """Command lines of this module's bench workers still running (by their broker)."""
    return processes_with("geventcheck._benchprobe", REDIS_URL)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_service("redis")
    tmp = tmp_path_factory.mktemp("bench")
    done = bench("--scenario", str(EXAMX), "--count", str(COUNT), "--latency", "20",
                 "--pool", "prefork:2", "--pool", "gevent:20", "--mixed", "gevent:20",
                 "--broker", REDIS_URL, "--json", str(tmp / "bench.json"),
                 "--plot", str(tmp / "bench.png"))
    return {"done": done, "json": tmp / "bench.json", "png": tmp / "bench.png"}


@pytest.mark.service("redis")
def test_the_table_names_each_pool_and_the_bound_that_holds(tiny: dict[str, Any]) -> None:
    done = tiny["done"]
    assert done.returncode == 0, done.stderr
    for shown in ("prefork -c 2", "gevent -c 20", "of bound", "mixed on gevent -c 20",
                  "PSS MB"):
        assert shown in done.stdout
    assert "PASS" in done.stdout or "FAIL" in done.stdout


@pytest.mark.service("redis")
def test_the_json_follows_its_schema_and_its_figures_agree(tiny: dict[str, Any]) -> None:
    report = json.loads(tiny["json"].read_text())
    schema = json.loads((ROOT / "geventcheck" / "schemas" / "bench.schema.json").read_text())
    jsonschema.validate(report, schema)
    assert [r["label"] for r in report["runs"]] == ["prefork -c 2", "gevent -c 20"]
    for run in report["runs"]:
        assert run["completed"] == run["sent"] == COUNT
        assert run["throughput"] > 0 and run["memory_mb"] > 0 and run["cpu_s"] > 0
        assert run["latency_max_ms"] >= run["latency_p95_ms"] >= run["latency_p50_ms"] > 0
        assert run["bound"] == min(run["little_bound"], run["cpu_bound"])
        assert run["of_bound"] == pytest.approx(run["throughput"] / run["bound"])
        assert run["memory_measure"] == "PSS"  # this kernel has smaps_rollup
        assert set(run["solo"]) == set(report["tasks"])
        assert all(f["run_ms"] >= f["cpu_ms"] > 0 for f in run["solo"].values())
    prefork, gevent = report["runs"]
    assert prefork["processes"] == 3 and gevent["processes"] == 1  # main + 2 children
    assert gevent["patched"] and not prefork["patched"]
    assert prefork["throughput_x"] == 1.0
    mixed = report["mixed"]
    assert mixed["cpu_task"] == "admin_app.tasks.order_copy_tasks.update_order_copy_pdf_task"
    assert mixed["label"] == "gevent -c 20" and mixed["wave"] == 5
    for waves in (mixed["without"], mixed["with_cpu"]):
        assert waves["max_ms"] >= waves["p95_ms"] >= waves["p50_ms"] > 0
    assert {t["name"].split(" ")[0] for t in report["targets"]} >= {"throughput", "memory"}


@pytest.mark.service("redis")
def test_the_chart_is_a_png(tiny: dict[str, Any]) -> None:
    import matplotlib.image

    assert tiny["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(tiny["png"]).shape
    assert width > 600 and height > 200


@pytest.mark.service("redis")
def test_nothing_is_left_running_or_queued(tiny: dict[str, Any]) -> None:
    assert tiny["done"].returncode == 0, tiny["done"].stderr
    assert bench_workers() == []
    keys = subprocess.run(["redis-cli", "-u", REDIS_URL, "--scan", "--pattern",
                           "*geventcheck.bench.*"], capture_output=True, text=True, timeout=30,
                          check=True).stdout.split()
    assert keys == []


@pytest.mark.parametrize(("args", "message"), [
    (("--pool", "gevnet:80", "-A", "x", "--task", "t"), "--pool: 'gevnet:80' is not POOL:"),
    (("--pool", "gevent:0", "-A", "x", "--task", "t"), "--pool: 'gevent:0' is not POOL:"),
    (("-A", "x", "--task", "t", "--broker", "redis://127.0.0.1:1/0"),
     "--broker: cannot reach redis://127.0.0.1:1/0"),
    (("--task", "t"), "give the app: -A MODULE"),
    (("-A", "x", "--task", "t", "--json", "/no/such/dir/b.json"),
     "--json: folder '/no/such/dir' does not exist"),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...],
                                              message: str) -> None:
    done = bench(*args, "--broker", REDIS_URL, cwd=tmp_path) if "--broker" not in args else \
        bench(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert message in line
    assert bench_workers() == []


def test_a_scenario_without_a_bench_batch_needs_task(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(textwrap.dedent("""
        app = "proj"
        [tasks."proj.tasks.t"]
        calls = [{ args = [1] }]
        """))
    done = bench("--scenario", str(scenario), cwd=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert f"{scenario} has no [bench] table: name the batch's tasks with --task NAME" in line


@pytest.mark.service("redis")
def test_an_app_the_worker_cannot_load_is_one_line(tmp_path: Path) -> None:
    require_service("redis")
    done = bench("-A", "nosuchapp", "--task", "t", "--pool", "gevent:2", "--mixed", "none",
                 "--broker", REDIS_URL, cwd=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "the worker (starting) exited with code 2" in line
    assert "The module nosuchapp was not found" in line
    assert bench_workers() == []


def test_plot_without_matplotlib_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys

        class NoMatplotlib:
            @staticmethod
            def find_spec(name, path=None, target=None):
                if name.split(".")[0] == "matplotlib":
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, NoMatplotlib)
        """))
    env = {**os.environ, "PYTHONPATH": str(hide)}
    done = subprocess.run([sys.executable, "-m", "geventcheck", "bench", "-A", "x", "--task",
                           "t", "--broker", "redis://127.0.0.1:1/0", "--plot",
                           str(tmp_path / "b.png")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "--plot needs matplotlib: pip install 'geventcheck[plot]'" in line
