"""The private runtime: Ray actors, channels and the checkpoint and recovery protocols
(docs/protocol.md). Users never import it. Its folders, from the top down (a folder imports
only the folders below it; tests/unit/test_layers.py checks it):

    control/        running a job: the driver, connecting to Ray, submission, the coordinator actor, actors and spares
    subtask/        the subtask actor and what runs inside it: clock, emitter, source reader, record policies, metrics
    checkpointing/  the checkpoint and recovery protocols: alignment, the subtask's and the coordinator's sides, recovery, rescale
    operators/      the logic of each step kind: plain steps, windows, process steps, event-time assignment
    time/           event time: watermarks and timers
    transport/      how micro-batches move: channels with backpressure, batch shapes, key groups, packing
    plan/           the physical plan, and the plain data the coordinator and the subtasks exchange
    state/          what is kept: the checkpoint store and its signed records, snapshots, manifests, changelog, tallies
"""
