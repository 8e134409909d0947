#!/usr/bin/env python
"""What ``pytest --gevent-check`` costs a suite of quick cooperative tests.

    python benchmarks/bench_plugin.py [--tests 300] [--pairs 7]

Writes a suite of N tests that each do a little work and yield to the hub once,
then runs it with pytest in a subprocess, alternately without and with
``--gevent-check`` (so a busy machine hurts both alike), and prints the ratio of
the medians of the session time pytest reports ("300 passed in 1.62s": the tests,
what a bigger suite multiplies). The goal is at most 1.10; exit status 1 when it is
missed. The whole process's wall time is shown beside it: that one also pays, once
per run, gevent's patching (about 0.4 s, mostly importing gevent) and the
monitor's start (about 0.5 s, its calibration), before the session begins.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1.10

TEST = '''
def test_{n}():
    gevent.sleep(0)
    assert sum(range(200)) == 19900
'''


def run(folder: Path, checked: bool) -> tuple[float, float]:
    """(pytest's session time, the whole process's wall time)"""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
            "-p", "no:randomly", str(folder)]
    if checked:
        args.append("--gevent-check")
    began = time.perf_counter()
    proc = subprocess.run(args, cwd=folder, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if proc.returncode != 0:
        sys.exit(f"the suite failed ({'checked' if checked else 'plain'}):\n{proc.stdout}")
    session = re.search(r" in ([\d.]+)s", proc.stdout.splitlines()[-1])
    assert session, proc.stdout
    return float(session.group(1)), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=7)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-plugin-") as tmp:
        folder = Path(tmp)
        (folder / "test_quick.py").write_text(
            "import gevent\n" + "".join(TEST.format(n=n) for n in range(opts.tests)))
        run(folder, False)  # warm the file cache and the bytecode
        plain: list[tuple[float, float]] = []
        checked: list[tuple[float, float]] = []
        for pair in range(opts.pairs):
            # alternate which goes first, so neither always runs on a warmer machine
            order = (False, True) if pair % 2 == 0 else (True, False)
            for flag in order:
                (checked if flag else plain).append(run(folder, flag))
    print(f"{opts.tests} quick cooperative tests, {opts.pairs} alternating pairs")
    ratios = []
    for index, what in ((0, "session (pytest's 'in N s')"), (1, "whole process")):
        off = [r[index] for r in plain]
        on = [r[index] for r in checked]
        ratios.append(statistics.median(on) / statistics.median(off))
        print(f"  {what}:")
        print(f"    without --gevent-check: median {statistics.median(off):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in off)})")
        print(f"    with --gevent-check:    median {statistics.median(on):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in on)})")
        print(f"    ratio of medians: {ratios[-1]:.3f}")
    ratio = ratios[0]
    print(f"session ratio {ratio:.3f} (goal <= {GOAL:.2f}): {'PASS' if ratio <= GOAL else 'FAIL'}")
    sys.exit(0 if ratio <= GOAL else 1)


if __name__ == "__main__":
    main()
