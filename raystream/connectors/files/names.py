"""FileSink's file names and the fields they carry, shared by the sink and compaction.

`part-<step>@<subtask>@<run>@<checkpoint>@<attempt>@<token>-<seq>.<fmt>` is a file
committed with a checkpoint, `part-<step>@<subtask>@<run>@direct@...` one written
directly (at-least-once); hidden (`_`) names stage data before it is committed. A
Parquet part that rolled (FileSink's default) ends in `-rolled.parquet`: a retained
checkpoint may commit it again after the one its name carries, so compaction leaves it.
"""
from __future__ import annotations

#: Separates the fields of FileSink names; step ids and run ids never contain it, so a
#: prefix of (step, subtask, run) matches that writer's files and no other's.
SEP = "@"


def committed_checkpoint(name: str) -> int | None:
    """The checkpoint id in a committed FileSink file name (None for at-least-once files)."""
    fields = name.split(SEP)
    return int(fields[3]) if name.startswith("part-") and len(fields) > 5 and fields[3].isdigit() else None


def written_by(name: str, field_index: int) -> int:
    fields = name.split(SEP)
    return int(fields[field_index]) if len(fields) > field_index and fields[field_index].isdigit() else 0


def writer_fields(step_id: str, subtask: int, run_id: str, attempt: int) -> tuple[str, str]:
    """A writer's name prefix `<step>@<subtask>@<run>@` and attempt field `<attempt>@`."""
    return SEP.join((step_id, f"{subtask:04d}", run_id or "run")) + SEP, f"{attempt:06d}{SEP}"


def taken_over(name: str, run_id: str, subtask: int, parallelism: int) -> bool:
    """Whether the writer of FileSink file `name` (staged or committed) belongs to run
    `run_id` and to an old subtask j that subtask `subtask` of `parallelism` takes over
    (j % parallelism == subtask, as sink transactions move on a rescale: docs/protocol.md B4)."""
    fields = name.split(SEP)
    return len(fields) > 3 and fields[2] == (run_id or "run") and fields[1].isdigit() \
        and int(fields[1]) % parallelism == subtask


#: The end of a rolled Parquet part's name (and of a copy of another run's open part).
ROLLED_PARQUET = "-rolled.parquet"


def rolled_part(name: str) -> bool:
    """Whether `name` is a rolled Parquet part: a retained checkpoint whose number is past
    its `<checkpoint>` field (the first checkpoint of its rows) may commit it again from
    its segments, which are gone once it is committed, so it is never compacted."""
    return name.endswith(ROLLED_PARQUET)
