"""Detectors: each module measures one kind of hazard and says it as findings.

``KINDS`` maps every finding kind a detector can emit to its module, so the
documentation test can check that each kind is documented.
"""

from collections.abc import Callable

from . import _dbconnections, _divergence, _globalstate, _stalls, _threadlocals
from ._probe import Probe, ProbeRun

KINDS: dict[str, str] = {kind: "stalls" for kind in _stalls.KINDS} | {"egress": "egress"}
KINDS |= {kind: "divergence" for kind in _divergence.Probe.kinds}
KINDS |= {kind: "globalstate" for kind in _globalstate.Probe.kinds}
KINDS |= {kind: "threadlocals" for kind in _threadlocals.Probe.kinds}
KINDS |= {kind: "dbconnections" for kind in _dbconnections.Probe.kinds}

# Factories of the probes that watch each task's probe run (see _probe.py).
PROBES: list[Callable[[], Probe]] = [
    _divergence.Probe,
    _globalstate.Probe,
    _threadlocals.Probe,
    _dbconnections.Probe,
]

__all__ = ["KINDS", "PROBES", "Probe", "ProbeRun"]
