"""`python -m raystream.bench.windows`: both layouts it compares emit the same rows."""
from __future__ import annotations

from raystream.bench import windows


def test_the_invoice_step_emits_the_same_rows_window_major_and_per_key():
    made = windows.invoice_batches(2_000, 10)
    emitted = windows.run_invoice(made, True)
    assert emitted == windows.run_invoice(made, False)
    assert emitted > 10_000  # about one row per (customer, hour) of the 20,000 rows, and updates
    result = windows.measure_invoice(500, 3, 1)
    assert result["window_major_rows_per_s"] > 0 and result["per_key_rows_per_s"] > 0
