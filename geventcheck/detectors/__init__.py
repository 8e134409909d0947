"""Detectors: each module measures one kind of hazard and says it as findings.

``KINDS`` maps every finding kind a detector can emit to its module, so the
documentation test can check that each kind is documented; ``PROBES`` lists the
factories of the probes that watch each task's probe run (see ``_probe.py``).

Both are built on first use: the unpatched parent imports pure helpers from this
package (merging findings, reading backend settings) and must not load gevent or
the probes with them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KINDS", "PROBES", "Probe", "ProbeRun"]


def __getattr__(name: str) -> Any:
    if name in ("Probe", "ProbeRun"):
        from . import _probe

        return getattr(_probe, name)
    if name == "KINDS":
        from . import _dbconnections, _divergence, _globalstate, _stalls, _threadlocals

        kinds: dict[str, str] = {kind: "stalls" for kind in _stalls.KINDS} | {"egress": "egress"}
        kinds |= {kind: "divergence" for kind in _divergence.Probe.kinds}
        kinds |= {kind: "globalstate" for kind in _globalstate.Probe.kinds}
        kinds |= {kind: "threadlocals" for kind in _threadlocals.Probe.kinds}
        kinds |= {kind: "dbconnections" for kind in _dbconnections.Probe.kinds}
        return kinds
    if name == "PROBES":
        from . import _dbconnections, _divergence, _globalstate, _threadlocals

        return [_divergence.Probe, _globalstate.Probe, _threadlocals.Probe,
                _dbconnections.Probe]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
