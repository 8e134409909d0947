"""The JSON report of ``report.schema.json``, written completely or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

from .._model import Report, report_to_dict


def render_json(report: Report) -> str:
    from .._plan import make_plan

    data = report_to_dict(report)
    data["plan"] = make_plan(report).to_dict()
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def write_atomic(path: str, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename it over: never a torn report."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".geventcheck-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
