"""The unpatched side of an audit stays unpatched: it never imports gevent."""

from __future__ import annotations

import subprocess
import sys


def test_the_command_line_parent_imports_neither_gevent_nor_the_probes() -> None:
    code = (
        "import sys\n"
        "import geventcheck._cli, geventcheck._audit, geventcheck._gatecmd, "
        "geventcheck._doctor, geventcheck.runner._parent\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('gevent', 'greenlet')\n"
        "                or m in ('geventcheck.detectors._hub', 'geventcheck.runner._child',\n"
        "                         'geventcheck.detectors._globalstate'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
