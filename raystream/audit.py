"""The exactly-once audit: do the sinks' committed records match what the sources emitted?

Turn it on with `rs.Job(..., audit=rs.Audit(source_id=..., sink_id=...))`. Every source
and sink subtask then keeps, from the start of the run, a count of its records and an
order-independent digest of their ids (the sum of 64-bit hashes, so a duplicate changes
it, unlike XOR). Both travel with the subtask's snapshots and are written into every
manifest in plain JSON, so an audit reads manifests only and unpickles nothing.

    raystream checkpoints audit ./raystream-checkpoints/billing

For a job in which every source record becomes exactly one sink record (such as
jobs/billing.py), the sources' totals equal the sinks' at every committed checkpoint
exactly when nothing was lost or duplicated. Without id functions only counts are
compared. Dead letters are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass

from raystream.config import Audit  # noqa: F401 (a job setting; re-exported with the audit)
from raystream.errors import ConfigError


@dataclass(frozen=True)
class AuditLine:
    """One committed checkpoint: the sources' totals against the sinks'."""

    run_id: str
    checkpoint_id: int
    source_records: int
    source_digest: int
    sink_records: int
    sink_digest: int

    @property
    def matches(self) -> bool:
        return (self.source_records, self.source_digest) == (self.sink_records, self.sink_digest)


def audit_checkpoints(uri: str, run_id: str | None = None) -> list[AuditLine]:
    """Audit every committed checkpoint of one run (default: the newest run) of the job
    whose checkpoint root is `uri` (`<storage>/<job name>`)."""
    # Imported here so that `import raystream` does not load the runtime.
    from raystream._runtime.state.store import CheckpointStore
    from raystream._runtime.state.tally import checkpoint_totals

    store = CheckpointStore(uri)
    run_id = run_id or store.newest_run_with_checkpoint()
    if run_id is None:
        return []
    lines, audited = [], False
    for checkpoint_id in store.manifest_ids(run_id):
        manifest = store.load_manifest(run_id, checkpoint_id)
        audited = audited or any(snap.audit for snap in manifest.snapshots)
        totals = checkpoint_totals([snap.audit for snap in manifest.snapshots])
        lines.append(AuditLine(run_id, checkpoint_id, *totals["source"], *totals["sink"]))
    if lines and not audited:
        raise ConfigError(f"run {run_id} under {uri} was not audited: its job has no rs.Audit, so nothing was "
                          "counted; give the job audit=rs.Audit(...) and run it again")
    return lines
