"""What happened in a schedule, for the invariants and for the replay log."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Trace:
    """What happened, for the invariants and for the replay log."""

    commits: list[tuple[str, int, int]] = field(default_factory=list)  # (run, attempt, checkpoint) committed for
    late: list[str] = field(default_factory=list)  # records behind a watermark that should not have passed them
    idle: list[str] = field(default_factory=list)  # IDLE sent before the watermark the records had made
    held: list[str] = field(default_factory=list)  # barriers that waited for a round, not the batch (C1)
    missing_staged: list[str] = field(default_factory=list)
    sink_errors: list[str] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)
    rewinds: list[str] = field(default_factory=list)  # restores that went back to a run's origin past its own
    captured: dict[str, dict[str, Any]] = field(default_factory=dict)  # snapshot key -> the keyed state it captured
    state_mismatches: list[str] = field(default_factory=list)  # snapshots that read back other state than captured
    retention: list[str] = field(default_factory=list)  # checkpoints that count, deleted by a current retention (C7)
    choices: dict[str, int] = field(default_factory=dict)  # run -> restore choices made (R3)
    over_failed: list[str] = field(default_factory=list)  # snapshots captured over a part known failed (I3)
    unrestorable: list[str] = field(default_factory=list)  # own checkpoints refused for their keyed state (I6)
    coordinators: int = 0
    attempts: int = 0
    crashes: int = 0
    compactions: int = 0
