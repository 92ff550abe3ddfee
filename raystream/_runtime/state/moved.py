"""Where the modules and classes of snapshots written before the package was arranged in
folders (raystream 0.1.0 up to the restructure) live now, so that their checkpoints and
savepoints restore: a pickle names each class by its module, and `decode` looks the old
names up here (only after the snapshot's checksum and the manifest's signature held)."""
from __future__ import annotations

#: A module that moved whole, or kept most of what it held: its old name -> its new one.
MODULES: dict[str, str] = {
    "raystream._compaction_manifests": "raystream.connectors.files.compaction_manifests",
    "raystream._file_names": "raystream.connectors.files.names",
    "raystream._part_files": "raystream.connectors.files.parts",
    "raystream._postgres_session": "raystream.connectors.postgres.session",
    "raystream._postgres_tables": "raystream.connectors.postgres.tables",
    "raystream._postgres_writer": "raystream.connectors.postgres.writer",
    "raystream._runtime.actors": "raystream._runtime.control.actors",
    "raystream._runtime.alignment": "raystream._runtime.checkpointing.alignment",
    "raystream._runtime.assembly": "raystream._runtime.subtask.assembly",
    "raystream._runtime.batch": "raystream._runtime.transport.batch",
    "raystream._runtime.blocking": "raystream._runtime.transport.blocking",
    "raystream._runtime.changelog": "raystream._runtime.state.changelog",
    "raystream._runtime.channel": "raystream._runtime.transport.channel",
    "raystream._runtime.checkpoint_store": "raystream._runtime.state.store",
    "raystream._runtime.checkpointer": "raystream._runtime.checkpointing.coordinator_side",
    "raystream._runtime.clock": "raystream._runtime.subtask.clock",
    "raystream._runtime.connect": "raystream._runtime.control.connect",
    "raystream._runtime.coordinator": "raystream._runtime.control.coordinator",
    "raystream._runtime.driver": "raystream._runtime.control.driver",
    "raystream._runtime.emitter": "raystream._runtime.subtask.emitter",
    "raystream._runtime.failure": "raystream._runtime.plan.failure",
    "raystream._runtime.injector": "raystream.testing.injector",
    "raystream._runtime.keys": "raystream._runtime.transport.keys",
    "raystream._runtime.locate": "raystream._runtime.checkpointing.locate",
    "raystream._runtime.manifest": "raystream._runtime.state.manifest",
    "raystream._runtime.metrics": "raystream._runtime.control.metrics",
    "raystream._runtime.operators": "raystream._runtime.operators.plain",
    "raystream._runtime.plan": "raystream._runtime.plan.physical",
    "raystream._runtime.quiet": "raystream._runtime.control.quiet",
    "raystream._runtime.record_policies": "raystream._runtime.subtask.record_policies",
    "raystream._runtime.recovery": "raystream._runtime.checkpointing.recovery",
    "raystream._runtime.reports": "raystream._runtime.control.reports",
    "raystream._runtime.rescale": "raystream._runtime.checkpointing.rescale",
    "raystream._runtime.signing": "raystream._runtime.state.signing",
    "raystream._runtime.snapshot": "raystream._runtime.state.snapshot",
    "raystream._runtime.source_reader": "raystream._runtime.subtask.source_reader",
    "raystream._runtime.spec": "raystream._runtime.plan.specs",
    "raystream._runtime.submission": "raystream._runtime.control.submission",
    "raystream._runtime.subtask": "raystream._runtime.subtask.actor",
    "raystream._runtime.subtask_checkpoints": "raystream._runtime.checkpointing.subtask_side",
    "raystream._runtime.tally": "raystream._runtime.state.tally",
    "raystream._runtime.timers": "raystream._runtime.operators.process",
    "raystream._runtime.upload": "raystream._runtime.control.upload",
    "raystream._runtime.watermarks": "raystream._runtime.time.watermarks",
    "raystream._runtime.windowing": "raystream._runtime.operators.windows",
    "raystream._runtime.wire": "raystream._runtime.transport.packing",
    "raystream._runtime.wiring": "raystream._runtime.control.wiring",
    "raystream.compaction": "raystream.connectors.files.compaction",
    "raystream.faults": "raystream.testing.faults",
    "raystream.file_sink": "raystream.connectors.files.sink",
    "raystream.kafka": "raystream.connectors.kafka",
    "raystream.nexmark": "raystream.connectors.nexmark",
    "raystream.postgres": "raystream.connectors.postgres.sink",
}

#: What moved elsewhere than the rest of its module, or was renamed:
#: "old.module:Name[.member]" -> "new.module[:NewName[.member]]". (CheckpointStore's
#: save_progress, read_progress and compact_progress became methods of ProgressRecords, and
#: SubtaskActor._source_offsets SourceReader.snapshot, with another `self`: nothing maps them.)
NAMES: dict[str, str] = {
    "raystream._runtime.subtask_checkpoints:compact_in_ray": "raystream._runtime.checkpointing.subtask_side:merge_in_ray",
    "raystream._runtime.changelog:StateChangelog.compacted": "raystream._runtime.state.changelog:StateChangelog.merged",
    "raystream._runtime.checkpoint_store:CheckpointStore.base": "raystream._runtime.state.store:CheckpointStore.origin",
    "raystream._runtime.checkpoint_store:CheckpointStore.base_ref": "raystream._runtime.state.store:CheckpointStore.origin_ref",
    "raystream._runtime.checkpoint_store:CheckpointStore.progress_key": "raystream._runtime.state.progress:progress_key",
    "raystream._runtime.checkpoint_store:CheckpointStore.record_base": "raystream._runtime.state.store:CheckpointStore.record_origin",
    "raystream._runtime.checkpoint_store:_is_count": "raystream._runtime.state.records:is_count",
    "raystream._runtime.checkpoint_store:_legacy_restore": "raystream._runtime.state.fence",
    "raystream._runtime.subtask_checkpoints:SubtaskCheckpoints._compact": "raystream._runtime.checkpointing.subtask_side:SubtaskCheckpoints._merge",
    "raystream._runtime.changelog:compact": "raystream._runtime.state.changelog:merge",
    "raystream._runtime.changelog:compact_chain": "raystream._runtime.state.changelog:merge_parts",
    "raystream._runtime.metrics:SubtaskExporter": "raystream._runtime.subtask.metrics",
    "raystream._runtime.operators:KeyedOp": "raystream._runtime.operators.base",
    "raystream._runtime.operators:Operator": "raystream._runtime.operators.base",
    "raystream._runtime.operators:RecordFailure": "raystream._runtime.plan.failure",
    "raystream._runtime.operators:_concat": "raystream._runtime.operators.base",
    "raystream._runtime.operators:run_chain": "raystream._runtime.operators.base",
    "raystream._runtime.operators:truncated_repr": "raystream._runtime.plan.failure",
    "raystream._runtime.timers:TimerQueue": "raystream._runtime.time.timers",
    "raystream._runtime.timers:now_ms": "raystream._runtime.time.timers",
    "raystream._runtime.watermarks:AssignTimeOp": "raystream._runtime.operators.event_time",
    "raystream.audit:Audit": "raystream.config",
    "raystream.file_sink:_json_default": "raystream.connectors.files.rows:json_default",
    "raystream.connectors.files.sink:_json_default": "raystream.connectors.files.rows:json_default",  # 0.2.0
    # FileSink's writers, in their own modules since 0.6.1 (FileTxn and RolledTxn: still
    # named by connectors/files/sink.py, which 0.1's public API had them in)
    "raystream.file_sink:_RollingWriter": "raystream.connectors.files.rolling_writer:RollingWriter",
    "raystream.file_sink:_FileWriter": "raystream.connectors.files.staged_writer:FileWriter",
    "raystream.file_sink:_json_line": "raystream.connectors.files.commits",
    "raystream.file_sink:_names": "raystream.connectors.files.commits:run_names",
    "raystream.file_sink:_promote": "raystream.connectors.files.commits:promote",
    "raystream.file_sink:_remove_dead_temps": "raystream.connectors.files.commits:remove_dead_temps",
    "raystream.connectors.files.sink:_RollingWriter": "raystream.connectors.files.rolling_writer:RollingWriter",
    "raystream.connectors.files.sink:_FileWriter": "raystream.connectors.files.staged_writer:FileWriter",
    "raystream.connectors.files.sink:_json_line": "raystream.connectors.files.commits",
    "raystream.connectors.files.sink:_names": "raystream.connectors.files.commits:run_names",
    "raystream.connectors.files.sink:_promote": "raystream.connectors.files.commits:promote",
    "raystream.connectors.files.sink:_remove_dead_temps": "raystream.connectors.files.commits:remove_dead_temps",
    # Nexmark's private names, from when it was one module (as raystream.nexmark, then as
    # raystream.connectors.nexmark until it became a package of one module per purpose)
    "raystream.nexmark:_NexmarkPartition": "raystream.connectors.nexmark.source",
    "raystream.nexmark:_Random": "raystream.connectors.nexmark.records",
    "raystream.nexmark:_last_auction": "raystream.connectors.nexmark.records",
    "raystream.nexmark:_last_person": "raystream.connectors.nexmark.records",
    "raystream.nexmark:_mix": "raystream.connectors.nexmark.records",
    "raystream.nexmark:_next_auction": "raystream.connectors.nexmark.records",
    "raystream.nexmark:_next_person": "raystream.connectors.nexmark.records",
    "raystream.nexmark:_price": "raystream.connectors.nexmark.records",
    "raystream.connectors.nexmark:_NexmarkPartition": "raystream.connectors.nexmark.source",
    "raystream.connectors.nexmark:_Random": "raystream.connectors.nexmark.records",
    "raystream.connectors.nexmark:_last_auction": "raystream.connectors.nexmark.records",
    "raystream.connectors.nexmark:_last_person": "raystream.connectors.nexmark.records",
    "raystream.connectors.nexmark:_mix": "raystream.connectors.nexmark.records",
    "raystream.connectors.nexmark:_next_auction": "raystream.connectors.nexmark.records",
    "raystream.connectors.nexmark:_next_person": "raystream.connectors.nexmark.records",
    "raystream.bench.workloads:_ChangedStateWriter": "raystream.bench.synthetic",
    "raystream.bench.workloads:_KeyLoadPartition": "raystream.bench.synthetic",
    "raystream.bench.workloads:_MeasureWriter": "raystream.bench.synthetic",
    "raystream.bench.workloads:_job_file": "raystream.bench.job_files",
    "raystream.bench.workloads:_records_in": "raystream.bench.modes:records_in",
    "raystream.bench.workloads:_records_out": "raystream.bench.modes:records_out",
    "raystream.connectors.nexmark:_price": "raystream.connectors.nexmark.records",
    "raystream.sources:FileSource": "raystream.connectors.files.source",
    "raystream.sources:Source": "raystream.source_api",
    "raystream.sources:SourcePartition": "raystream.source_api",
    "raystream.sources:_LinePartition": "raystream.connectors.files.source",
    "raystream.sources:_Pacer": "raystream.source_api:Pacer",
    "raystream.sources:_ParquetPartition": "raystream.connectors.files.source",
    "raystream.sources:_check_rate": "raystream.source_api:check_rate",
}


def now(module: str, name: str) -> tuple[str, str]:
    """Where `module.name` of an earlier snapshot lives now (itself when it did not move).
    `name` may be dotted (a method, `AssignTimeOp.process`): its first part moved."""
    found = NAMES.get(f"{module}:{name}")
    if found is not None:
        new_module, _, new_name = found.partition(":")
        return new_module, new_name or name
    first, dot, rest = name.partition(".")
    found = NAMES.get(f"{module}:{first}")
    if found is not None:
        new_module, _, new_first = found.partition(":")
        return new_module, (new_first or first) + dot + rest
    return MODULES.get(module, module), name
