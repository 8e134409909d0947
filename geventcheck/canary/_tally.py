"""What one worker saw of each task: runs, stalls and findings, in a compact summary.

The summary is what the canary pushes to Redis and what ``report --from`` reads back:
plain JSON, findings folded by place (``detectors._stalls.merge``), bounded per task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .._model import Finding, finding_to_dict
from ..detectors._stalls import merge

SCHEMA = "geventcheck/canary-v1"
# Findings kept per task: the worst places, so a summary stays small.
_KEEP_FINDINGS = 20
# Stack frames kept per finding in a summary.
_KEEP_FRAMES = 12


@dataclass
class TaskTally:
    queue: str | None = None
    runs: int = 0
    failed: int = 0
    wall_ms_total: float = 0.0
    stalls: int = 0  # stalls at or above the warning level blamed on the task
    worst_stall_ms: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    def add(self, new: list[Finding]) -> None:
        if new:
            kept = merge([*self.findings, *new])
            kept.sort(key=lambda f: (f.severity != "error", -(f.duration_ms or 0.0)))
            self.findings = kept[:_KEEP_FINDINGS]

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue, "runs": self.runs, "failed": self.failed,
            "wall_ms_total": round(self.wall_ms_total, 1), "stalls": self.stalls,
            "worst_stall_ms": round(self.worst_stall_ms, 1),
            "findings": [finding_to_dict(dataclasses.replace(
                f, stack=f.stack[:_KEEP_FRAMES])) for f in self.findings],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskTally:
        return cls(queue=data.get("queue"), runs=int(data.get("runs", 0)),
                   failed=int(data.get("failed", 0)),
                   wall_ms_total=float(data.get("wall_ms_total", 0.0)),
                   stalls=int(data.get("stalls", 0)),
                   worst_stall_ms=float(data.get("worst_stall_ms", 0.0)),
                   findings=[Finding.from_dict(f) for f in data.get("findings", [])])

    def merged_with(self, other: TaskTally) -> TaskTally:
        out = TaskTally(self.queue or other.queue, self.runs + other.runs,
                        self.failed + other.failed, self.wall_ms_total + other.wall_ms_total,
                        self.stalls + other.stalls,
                        max(self.worst_stall_ms, other.worst_stall_ms), list(self.findings))
        out.add(other.findings)
        return out
