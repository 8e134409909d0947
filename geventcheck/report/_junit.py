"""The gate as JUnit XML: one testcase per gated task, so any CI shows which task failed."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .._gate import GatedTask, GateResult, Problem

SUITE = "geventcheck gate"
POLICY_CLASS = "geventcheck.policy"


def _evidence(problem: Problem) -> str:
    lines = [f"kind: {problem.kind}", f"message: {problem.message}"]
    f = problem.finding
    if f is not None:
        if f.where:
            lines.append(f"at: {f.where}" + (f" in {f.function}()" if f.function else ""))
        if f.native:
            lines.append(f"native: {f.native}")
        if f.duration_ms is not None:
            lines.append(f"duration: {f.duration_ms:g} ms")
        if f.fix:
            lines.append(f"fix: {f.fix}")
        lines += [f"  {frame}" for frame in f.stack]
    lines.append(f"fingerprint: {problem.fingerprint}")
    return "\n".join(lines)


def _testcase(gated: GatedTask) -> ET.Element:
    case = ET.Element("testcase", classname=f"gevent.{gated.queue}", name=gated.task.name,
                      time=f"{gated.task.stats.wall_ms / 1000:.3f}")
    for problem in gated.open:
        where = f" at {problem.where}" if problem.where else ""
        failure = ET.SubElement(case, "failure", type=problem.kind,
                                message=f"{problem.kind}{where}: {problem.message}")
        failure.text = _evidence(problem)
    if gated.accepted:
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(
            f"accepted by {a.by} ({a.reason}): {a.problem.kind}"
            + (f" at {a.problem.where}" if a.problem.where else "") for a in gated.accepted)
    return case


def render_junit(result: GateResult) -> str:
    """JUnit XML as Jenkins, GitLab and the JUnit publishing actions read it."""
    cases = [_testcase(g) for g in result.tasks]
    if result.gate_reasons:  # expired waivers, nothing gated or certified: the policy fails
        case = ET.Element("testcase", classname=POLICY_CLASS, name="policy", time="0")
        failure = ET.SubElement(case, "failure", type="policy", message=result.gate_reasons[0])
        failure.text = "\n".join(result.gate_reasons)
        cases.append(case)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    root = ET.Element("testsuites", name=SUITE, tests=str(len(cases)), failures=str(failures),
                      errors="0")
    suite = ET.SubElement(root, "testsuite", name=SUITE, tests=str(len(cases)),
                          failures=str(failures), errors="0", skipped="0")
    suite.extend(cases)
    if result.warnings:
        err = ET.SubElement(suite, "system-err")
        err.text = "\n".join(result.warnings)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
