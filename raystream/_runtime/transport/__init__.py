"""How micro-batches move between subtasks: channels with backpressure (channel), batch
shapes (batch), key groups and routing (keys), how batches are pickled for Ray (packing),
blocking I/O off the event loop (blocking)."""
