"""Soak: audit ExamX again and again, quiet and with CPU hogs, and check nothing moves.

    python benchmarks/soak_examx.py [--quiet 10] [--loaded 10] [--hogs 2] [--json out.json]

A verdict is a claim about the task, so it must not depend on the machine's load or on
the run. This runs the README's ExamX audit ``--quiet`` times on the machine as it is and
``--loaded`` times with ``--hogs`` processes spinning ``while True: pass`` beside it,
alternating, then prints every task whose verdict was not the same in all runs and every
run in which the audited process crashed. Exit 0 when all verdicts agree and nothing
crashed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEVENTCHECK = [sys.executable, "-m", "geventcheck"]


def _audit(workdir: Path, index: int) -> dict:
    report = workdir / f"report-{index}.json"
    env = {**os.environ, "EXAMX_DATA_DIR": str(workdir / f"data-{index}")}
    done = subprocess.run(
        [*GEVENTCHECK, "audit", "--scenario", "scenarios/examx/scenario.toml",
         "--json", str(report)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900)
    if not report.exists():
        raise SystemExit(f"run {index}: no report (exit {done.returncode}): "
                         f"{done.stderr.strip()[-500:]}")
    return json.loads(report.read_text())


def _hogs(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", type=int, default=10)
    parser.add_argument("--loaded", type=int, default=10)
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--json", help="write every run's verdicts here")
    args = parser.parse_args()

    # alternate, so a slow drift of the machine cannot pass for an effect of load
    plan = [k for pair in zip(["quiet"] * args.quiet, ["loaded"] * args.loaded, strict=False)
            for k in pair] + ["quiet"] * max(0, args.quiet - args.loaded) \
        + ["loaded"] * max(0, args.loaded - args.quiet)
    verdicts: dict[str, list[tuple[int, str, str]]] = collections.defaultdict(list)
    crashes: list[str] = []
    runs = []
    with tempfile.TemporaryDirectory(prefix="geventcheck-soak-") as tmp:
        for index, kind in enumerate(plan, start=1):
            hogs = _hogs(args.hogs) if kind == "loaded" else []
            started = time.perf_counter()
            try:
                report = _audit(Path(tmp), index)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            seconds = time.perf_counter() - started
            run = {"run": index, "kind": kind, "seconds": round(seconds, 1),
                   "verdicts": {t["name"]: t["verdict"] for t in report["tasks"]}}
            runs.append(run)
            for task in report["tasks"]:
                verdicts[task["name"]].append((index, kind, task["verdict"]))
                crashes += [f"run {index} ({kind}): {task['name']}: {f['message']}"
                            for f in task["findings"] if f["kind"] == "crash"]
            print(f"run {index:2d} {kind:6s} {seconds:5.1f} s  "
                  + " ".join(f"{v}={n}" for v, n in sorted(report["summary"].items())),
                  flush=True)
    moved = {name: seen for name, seen in verdicts.items() if len({v for *_, v in seen}) > 1}
    print(f"\n{len(plan)} audits ({args.quiet} quiet, {args.loaded} with {args.hogs} hogs), "
          f"{len(verdicts)} tasks: {len(moved)} verdicts moved, {len(crashes)} crashes")
    for name, seen in sorted(moved.items()):
        print(f"  {name}: " + ", ".join(f"#{i} {k} {v}" for i, k, v in seen))
    for line in crashes:
        print(f"  crash: {line}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "moved": sorted(moved),
                                               "crashes": crashes}, indent=2) + "\n")
    return 1 if moved or crashes else 0


if __name__ == "__main__":
    sys.exit(main())
