"""A sharded audit of ExamX, merged, must give the verdicts of the whole audit.

    python benchmarks/shard_examx.py [--shards 3] [--json out.json]

Runs ``geventcheck audit --scenario scenarios/examx/scenario.toml`` once whole and once
per shard (``--shard I/N``), as a CI matrix would, then ``geventcheck report --merge``,
``geventcheck gate --report`` on the merged report, and compares, task by task: verdict,
classification, pool and the kinds of the error findings. Prints each shard's share and
time and every task whose answer differs. About 4 minutes on 2 shared cores (each audit
is about a minute). Exit 0 when merged and whole agree, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "scenarios/examx/scenario.toml"


def _run(args: list[str], workdir: Path, tag: str) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEVENTCHECK_")}
    env["EXAMX_DATA_DIR"] = str(workdir / f"data-{tag}")  # no shared demo database
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "geventcheck", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{tag}: exit {done.returncode}: {done.stderr.strip()[-800:]}")
    return done.returncode, time.perf_counter() - started


def _answers(report: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {t["name"]: (t["verdict"], t["classification"], t["recommended_pool"],
                        tuple(sorted({f["kind"] for f in t["findings"]
                                      if f["severity"] == "error"})))
            for t in report["tasks"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--json", help="write both answers and the timings here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shard-examx-") as tmp:
        work = Path(tmp)
        whole_path = work / "whole.json"
        code, seconds = _run(["audit", "--scenario", SCENARIO, "--json", str(whole_path)],
                             work, "whole")
        print(f"whole audit: exit {code}, {seconds:.0f} s")
        timings = {"whole": seconds}
        shard_paths = []
        for i in range(1, args.shards + 1):
            path = work / f"shard-{i}.json"
            code, seconds = _run(["audit", "--scenario", SCENARIO, "--shard",
                                  f"{i}/{args.shards}", "--json", str(path)], work, f"s{i}")
            share = len(json.loads(path.read_text())["tasks"])
            print(f"shard {i}/{args.shards}: {share} tasks, exit {code}, {seconds:.0f} s")
            timings[f"{i}/{args.shards}"] = seconds
            shard_paths.append(str(path))
        merged_path = work / "merged.json"
        merge_code, _ = _run(["report", "--merge", *shard_paths, "--json", str(merged_path),
                              "--markdown", str(work / "plan.md")], work, "merge")
        gates = []
        for name, path in (("whole", whole_path), ("merged", merged_path)):
            decision = work / f"gate-{name}.json"
            gate_code, _ = _run(["gate", "--report", str(path), "--json", str(decision)],
                                work, f"gate-{name}")
            data = json.loads(decision.read_text())
            gates.append((gate_code, sorted((t["name"], t["status"]) for t in data["tasks"])))
        whole = _answers(json.loads(whole_path.read_text()))
        merged = _answers(json.loads(merged_path.read_text()))
    differ = sorted(n for n in set(whole) | set(merged) if whole.get(n) != merged.get(n))
    for name in differ:
        print(f"DIFFERS {name}: whole {whole.get(name)} merged {merged.get(name)}")
    same_gate = gates[0] == gates[1]
    print(f"{len(whole)} tasks; merged report exit {merge_code}; "
          f"{'PASS' if not differ else 'FAIL'}: merged verdicts equal the whole audit's; "
          f"{'PASS' if same_gate else 'FAIL'}: the gate answers the same on both")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"timings_s": timings, "whole": whole, "merged": merged, "differ": differ},
            indent=2) + "\n")
    return 0 if not differ and same_gate else 1


if __name__ == "__main__":
    sys.exit(main())
