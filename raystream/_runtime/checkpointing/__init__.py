"""The checkpoint and recovery protocols (docs/protocol.md): barrier alignment (C2), the
subtask's side (C3, C4, C6), the coordinator's side (C1, C5-C7), recovery (R3, R4),
restoring by step id (B4), naming a checkpoint by URI (locate)."""
