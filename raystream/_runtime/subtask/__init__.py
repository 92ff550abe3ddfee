"""The subtask actor (actor) and what runs inside it: its clock, emitter, source reader,
record policies (dead letters), metrics, and the assembly of its chain."""
