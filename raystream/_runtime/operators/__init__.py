"""The logic of each step kind: what every operator is (base), plain steps and the sink
step (plain), event-time windows and joins (windows), `process` steps with timers
(process), event-time assignment (event_time)."""
