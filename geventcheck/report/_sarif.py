"""The gate as SARIF 2.1.0, so code scanning annotates the pull request at the line.

Only problems with a file go in: a result without a location cannot annotate
anything (a task that was not certified is in the JUnit and Markdown outputs).
Problems accepted by a waiver or the baseline are kept, marked as suppressed.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from .._gate import GateResult, Problem, normalise_path
from .._kinds import FINDING_KINDS
from .._policy import NOT_CERTIFIED

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
FINGERPRINT_KEY = "geventcheck/v1"

# One rule per finding kind: what it means, in one line (the README's table of findings).
RULES: dict[str, str] = {
    "blocking-call": "The task blocked the gevent hub while waiting in a native call.",
    "cpu-bound": "The task kept the CPU without yielding to the gevent hub.",
    "unsafe-driver": "The task used a database or network driver that blocks under gevent.",
    "thread-local": "The task uses a native thread-local that every greenlet shares.",
    "global-state": "The task changes process-wide state while other greenlets run.",
    "concurrency-divergence": "Concurrent copies of the task returned what a solo run never "
                              "does.",
    "db-connections": "The task's database connections would exhaust the server under gevent.",
    "unpatched-module": "A module that matters was imported before gevent patched it.",
    "egress": "The task tried to reach a host that is not faked or allowed.",
    "deadlock": "The gevent hub sat in a native wait until the task timed out.",
    "timeout": "The task was still waiting cooperatively at the task timeout.",
    "crash": "The process running the task died.",
    "task-error": "The task raised an exception.",
    "warm-up": "A stall during the warm-up run (never judged).",
    NOT_CERTIFIED: "The task was not run or could not be certified.",
}


def _rule(kind: str) -> dict[str, Any]:
    text = RULES.get(kind, kind)
    return {
        "id": kind,
        "name": "".join(part.capitalize() for part in kind.split("-")),
        "shortDescription": {"text": text},
        "fullDescription": {"text": text},
        "help": {"text": f"{text} See the README's table of findings for what to do."},
        "defaultConfiguration": {"level": "error"},
    }


def _uri(file: str, roots: tuple[str, ...]) -> str:
    """The file relative to the working directory (the checkout, for code scanning). The
    audit names files relative to the app's folder, so look for them under each root."""
    if not os.path.isabs(file) and not os.path.exists(file):
        for root in roots:
            candidate = os.path.join(root, file)
            if os.path.exists(candidate):
                return normalise_path(os.path.abspath(candidate))
    return normalise_path(file)


def _result(problem: Problem, index: dict[str, int], accepted: str | None,
            roots: tuple[str, ...]) -> dict[str, Any]:
    f = problem.finding
    assert f is not None and f.file
    text = f"{problem.task}: {problem.message}" + (f" Fix: {f.fix}" if f.fix else "")
    location: dict[str, Any] = {
        "artifactLocation": {"uri": _uri(f.file, roots), "uriBaseId": "%SRCROOT%"},
    }
    if f.line is not None and f.line >= 1:
        location["region"] = {"startLine": f.line}
    result: dict[str, Any] = {
        "ruleId": problem.kind,
        "ruleIndex": index[problem.kind],
        "level": "error",
        "message": {"text": text},
        "locations": [{"physicalLocation": location}],
        "partialFingerprints": {FINGERPRINT_KEY: problem.fingerprint},
    }
    if accepted is not None:
        result["suppressions"] = [{"kind": "external", "justification": accepted}]
    return result


def render_sarif(result: GateResult, version: str, roots: tuple[str, ...] = ()) -> str:
    """``roots``: folders the app was loaded from, where the report's file names start."""
    kinds = [k for k in FINDING_KINDS if k != "warm-up"] + [NOT_CERTIFIED]
    index = {kind: i for i, kind in enumerate(kinds)}
    results = []
    for gated in result.tasks:
        for problem in gated.open:
            if problem.finding is not None and problem.finding.file:
                results.append(_result(problem, index, None, roots))
        for acceptance in gated.accepted:
            problem = acceptance.problem
            if problem.finding is not None and problem.finding.file:
                results.append(_result(problem, index,
                                       f"accepted by {acceptance.by}: {acceptance.reason}",
                                       roots))
    root = pathlib.Path(os.getcwd()).as_uri() + "/"
    document = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "geventcheck", "version": version,
                                "rules": [_rule(k) for k in kinds]}},
            "originalUriBaseIds": {"%SRCROOT%": {"uri": root}},
            "results": results,
        }],
    }
    return json.dumps(document, indent=2) + "\n"
