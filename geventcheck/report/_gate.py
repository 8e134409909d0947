"""The gate's decision as JSON (``gate --json``), for scripts that come after it."""

from __future__ import annotations

import json

from .._gate import GateResult, result_to_dict


def render_gate_json(result: GateResult) -> str:
    return json.dumps(result_to_dict(result), indent=2) + "\n"
