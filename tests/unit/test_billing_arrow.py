"""jobs/billing_arrow.py's generator makes, a batch at a time, the events of jobs/billing.py."""
import runpy
from pathlib import Path

import numpy as np
import pyarrow as pa

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def test_the_batch_generator_makes_the_per_record_events():
    ns = runpy.run_path(str(JOBS / "billing_arrow.py"), run_name="__raystream_job__")
    ids = np.concatenate([np.arange(0, 3000), np.arange(10**7, 10**7 + 1000)])  # late reports among them
    batch = ns["usage_batch"](pa.RecordBatch.from_arrays([pa.array(ids)], names=["value"]))
    assert batch.to_pylist() == [ns["usage_event"](int(i)) for i in ids]
    assert sum(1 for i in ids if ns["usage_time"](int(i)) < ns["START"] + i * 0.5) == 4  # 999, 1999, 2999, +1 above
