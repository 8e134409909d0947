"""The finding kinds are declared once; the schemas, the README and the code must agree."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from geventcheck._kinds import FINDING_KINDS, RESERVED_KINDS

from .conftest import ROOT, SCHEMA

SHARED_SCHEMA = ROOT.parent / "shared" / "report.schema.json"


def _schema_kinds(path: Path) -> list[str]:
    schema = json.loads(path.read_text())
    kinds: list[str] = schema["$defs"]["finding"]["properties"]["kind"]["enum"]
    return kinds


def test_the_shipped_schema_enum_is_the_declared_list() -> None:
    assert _schema_kinds(SCHEMA) == list(FINDING_KINDS)


def test_the_shared_contract_enum_is_the_declared_list() -> None:
    if not SHARED_SCHEMA.exists():
        pytest.skip(f"no shared contract at {SHARED_SCHEMA} (a clone outside the workspace)")
    assert _schema_kinds(SHARED_SCHEMA) == list(FINDING_KINDS)


def test_the_readme_table_of_findings_is_the_declared_list() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| kind | means |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([a-z-]+)` \|", table, flags=re.MULTILINE)
    assert sorted(rows) == sorted(FINDING_KINDS)
    assert len(rows) == len(set(rows)), "a kind appears twice in the README's table"


def _emitted_kinds() -> dict[str, str]:
    """Every kind the package passes to ``Finding(...)``, with the file that does it.

    The doctor has findings of its own kind (its own report), so it is left out.
    """
    found: dict[str, str] = {}
    for path in sorted((ROOT / "geventcheck").rglob("*.py")):
        if path.name in ("_doctor.py", "_liveprobe.py"):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        constants = {
            target.id: node.value.value
            for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name != "Finding":
                continue
            first = node.args[0]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.setdefault(first.value, where)
            elif isinstance(first, ast.Name) and first.id in constants:
                found.setdefault(constants[first.id], where)
            elif isinstance(first, ast.Name) and first.id == "kind":
                continue  # chosen at run time from a detector's KINDS, checked below
            else:
                raise AssertionError(f"{where}: a finding kind the test cannot read; pass a "
                                     "literal or a module constant")
    return found


def test_the_code_emits_exactly_the_declared_kinds() -> None:
    from geventcheck.detectors import KINDS

    emitted = _emitted_kinds()
    undeclared = {k: w for k, w in emitted.items() if k not in FINDING_KINDS}
    assert not undeclared, f"kinds the code emits but _kinds.py does not declare: {undeclared}"
    assert set(KINDS) <= set(FINDING_KINDS)
    never = set(FINDING_KINDS) - set(emitted) - set(KINDS)
    assert never == set(RESERVED_KINDS), "declared kinds no code emits must be marked reserved"
