"""Detectors: each module measures one kind of hazard and says it as findings.

``KINDS`` maps every finding kind a detector can emit to its module, so the
documentation test can check that each kind is documented.
"""

from . import _stalls

KINDS: dict[str, str] = {kind: "stalls" for kind in _stalls.KINDS} | {"egress": "egress"}

__all__ = ["KINDS"]
