"""Stability of the release gate: gate ExamX ten times, five of them beside CPU hogs.

    python benchmarks/gate_examx.py [--runs 10] [--loaded 5] [--hogs 2] [--json out.json]

The gate's answer (open or closed, and per gated task pass/accepted/fail with the kinds
of its open problems) must not depend on the machine's load. Each run is a full
``geventcheck gate`` of the ExamX scenario (the audit included) with a policy in a
temporary folder; quiet and loaded runs alternate, loaded ones with ``--hogs``
processes spinning ``while True: pass``. Prints every task whose answer changed.
Exit 0 when all runs agree, 1 otherwise.
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
SCENARIO = ROOT / "scenarios" / "examx" / "scenario.toml"
POLICY = f"""[tool.geventcheck]
scenario = "{SCENARIO}"
"""


def _gate(workdir: Path, index: int) -> tuple[int, dict]:
    out = workdir / f"gate-{index}.json"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GEVENTCHECK_") and k != "GITHUB_STEP_SUMMARY"}
    env["EXAMX_DATA_DIR"] = str(workdir / f"data-{index}")
    done = subprocess.run([sys.executable, "-m", "geventcheck", "gate", "--json", str(out)],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    if not out.exists():
        raise SystemExit(f"run {index}: no gate answer (exit {done.returncode}): "
                         f"{done.stderr.strip()[-500:]}")
    return done.returncode, json.loads(out.read_text())


def _answer(code: int, data: dict) -> tuple:
    tasks = tuple(sorted(
        (t["name"], t["status"], tuple(sorted({p["kind"] for p in t["open"]})))
        for t in data["tasks"]))
    return code, data["open"], tasks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--loaded", type=int, default=5)
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--json", help="write every run's answer here")
    args = parser.parse_args()
    # alternate, so a slow drift of the machine cannot pass for an effect of load
    kinds = ["loaded" if i % 2 and i // 2 < args.loaded else "quiet" for i in range(args.runs)]
    loaded_left = args.loaded - kinds.count("loaded")
    for i in range(len(kinds) - 1, -1, -1):
        if loaded_left <= 0:
            break
        if kinds[i] == "quiet":
            kinds[i], loaded_left = "loaded", loaded_left - 1
    answers: list[tuple[str, tuple]] = []
    with tempfile.TemporaryDirectory(prefix="gate-examx-") as tmp:
        workdir = Path(tmp)
        (workdir / "pyproject.toml").write_text(POLICY)
        for index, kind in enumerate(kinds):
            hogs = ([subprocess.Popen([sys.executable, "-c", "while True: pass"])
                     for _ in range(args.hogs)] if kind == "loaded" else [])
            started = time.monotonic()
            try:
                code, data = _gate(workdir, index)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            answer = _answer(code, data)
            answers.append((kind, answer))
            failing = [t[0] for t in answer[2] if t[1] == "fail"]
            print(f"run {index + 1:2d} {kind:6s} exit {code} "
                  f"{'open' if answer[1] else 'closed'}, {len(answer[2])} gated, "
                  f"{len(failing)} failing ({time.monotonic() - started:.0f} s)", flush=True)
    per_task: dict[str, set[tuple]] = collections.defaultdict(set)
    for _kind, (_code, _open, tasks) in answers:
        for name, status, open_kinds in tasks:
            per_task[name].add((status, open_kinds))
    moved = {name: seen for name, seen in per_task.items() if len(seen) > 1}
    same = len({answer for _kind, answer in answers}) == 1
    for name, seen in sorted(moved.items()):
        print(f"  changed: {name}: {sorted(seen)}")
    print(f"\n{len(answers)} gates ({kinds.count('quiet')} quiet, {kinds.count('loaded')} with "
          f"{args.hogs} hogs): {'the same answer every time' if same else 'ANSWERS DIFFER'}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"kind": k, "exit": a[0], "open": a[1], "tasks": a[2]} for k, a in answers],
            indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
