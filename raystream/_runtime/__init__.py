"""The private runtime: planner, Ray actors, channels and the checkpoint and recovery
protocols (docs/protocol.md). Users never import it; it depends only downward on the
public definitions (graph.py, config.py, sources.py, sinks.py, errors.py), never on
raystream.job.

    driver.py               start_job, Supervisor (restarts a dead coordinator)
    connect.py              connecting to Ray: RAY_ADDRESS with the cluster's token, or a new local Ray
    submission.py           submitting job files through the Ray Jobs API
    coordinator.py          JobCoordinator actor: attempts and recovery (R1-R5)
    actors.py               starting and killing an attempt's subtask actors; spare actors
    wiring.py               each subtask's spec, outputs and restore spec for an attempt
    checkpointer.py         the coordinator's side of a checkpoint (C1, C5-C7)
    recovery.py             choosing and reading what to restore (R3, R4), restart strategy
    rescale.py              restoring by step id: which snapshots a subtask reads, how they merge (S4)
    subtask.py              SubtaskActor: the run loop of one subtask of a chain
    subtask_checkpoints.py  the subtask's side of a checkpoint (C3, C4, C6)
    source_reader.py        the partitions one source subtask reads (S3)
    record_policies.py      dead letters and audit tallies
    alignment.py            barrier alignment (C2)
    channel.py              micro-batch channels with backpressure
    plan.py                 steps into chains and edges
    operators.py            the logic of each step kind
    checkpoint_store.py     the checkpoint tree, attempt claims and fences (F1-F4)
    snapshot.py             snapshot state and checksums
    manifest.py             the signed commit record of a checkpoint
    spec.py                 plain data between the coordinator and its subtasks
    metrics.py              metrics per step and subtask: ray.util.metrics and handle.metrics()
    quiet.py                keeping Ray's notices about what raystream handles out of the terminal
    failure.py              why an attempt or a job stopped (FailureKind)
    reports.py              metrics summed over subtasks; the job's outcome
    batch.py, keys.py       micro-batch shapes; key groups and routing
    tally.py                the audit's counts and digests
    injector.py             crash points and S3 faults for tests
    blocking.py             blocking I/O off the event loop
"""
