"""A columnar job on a real local Ray (Parquet record batches -> where -> select -> key_by
columns -> aggregate -> FileSink) gives what pyarrow computes over the whole input, and
a per-record keyed step on the same keyed stream sees the same keys."""
import collections
import runpy
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import raystream as rs
from raystream import aggregates as agg
from raystream.sinks import CollectSink, FileSink, read_files
from raystream.sources import FileSource

FILES, ROWS = 3, 6000


@pytest.fixture(scope="module")
def bids(tmp_path_factory) -> tuple[str, pa.Table]:
    """Bids in Parquet files: null prices and null sellers included."""
    directory = tmp_path_factory.mktemp("bids")
    tables = []
    for f in range(FILES):
        i = pa.array(range(f * ROWS, (f + 1) * ROWS))
        table = pa.table({
            "category": pc.cast(pc.bit_wise_and(i, 7), pa.string()),
            "seller": pa.array([None if j % 13 == 0 else f"s{j % 29}" for j in i.to_pylist()]),
            "price": pa.array([None if j % 17 == 0 else (j * 7919) % 400 for j in i.to_pylist()]),
        })
        pq.write_table(table, directory / f"bids-{f}.parquet")
        tables.append(table)
    return str(directory / "*.parquet"), pa.concat_tables(tables)


def expected(table: pa.Table) -> dict[tuple, dict]:
    kept = table.filter(pc.field("price") > 100)
    kept = kept.append_column("eur", pc.multiply(kept.column("price"), 0.908))
    grouped = kept.group_by(["category", "seller"]).aggregate(
        [([], "count_all"), ("eur", "sum"), ("price", "max"), ("price", "mean")])
    return {(r["category"], r["seller"]): {"n": r["count_all"], "eur": r["eur_sum"], "top": r["price_max"],
                                           "avg": r["price_mean"]} for r in grouped.to_pylist()}


def test_a_columnar_job_equals_pyarrow_over_the_whole_input(bids, tmp_path):
    pattern, table = bids
    job = rs.Job("columnar", parallelism=2, runtime=rs.RuntimeConfig(arrow_batch_size=1000),
                 checkpoint=rs.CheckpointConfig(interval=0.5))
    keyed = (job.source("bids", FileSource(pattern, format="parquet"))
             .where("pricey", pc.field("price") > 100)
             .select("euros", {"category": "category", "seller": "seller", "price": "price",
                               "eur": pc.field("price") * 0.908})
             .key_by("by_pair", ("category", "seller")))
    (keyed.aggregate("stats", n=agg.count(), eur=agg.sum("eur"), top=agg.max("price"), avg=agg.mean("price"))
     .sink("out", FileSink(str(tmp_path / "out"), format="parquet")))
    # the per-record path on the same stream: (key, row) records, the key a tuple with None for a null
    keyed.stateful_map("per_record", lambda n, row: ((n or 0) + 1, (n or 0) + 1)).sink("counts", CollectSink(keep="last"))
    result = job.run()
    assert result.state == "finished"

    want = expected(table)
    rows = read_files(str(tmp_path / "out"), format="parquet")
    by_key = collections.defaultdict(list)
    for row in rows:
        by_key[(row["category"], row["seller"])].append(row)
    assert set(by_key) == set(want)
    for key, updates in by_key.items():
        counts = [r["n"] for r in updates]
        assert len(set(counts)) == len(counts)  # one row per key and batch, never twice
        final = max(updates, key=lambda r: r["n"])
        assert (final["n"], final["top"]) == (want[key]["n"], want[key]["top"]), key
        assert final["eur"] == pytest.approx(want[key]["eur"]) and final["avg"] == pytest.approx(want[key]["avg"])
    assert dict(result.outputs["counts"]) == {k: v["n"] for k, v in want.items()}
    kept = sum(v["n"] for v in want.values())
    assert result.steps["pricey"].records_in == FILES * ROWS and result.steps["stats"].records_in == kept
    assert result.steps["stats"].records_out == len(rows)


@pytest.mark.extended  # its seven actors start in 8-10 s on two cores, past the default suite's budget
def test_billing_over_arrow_reads_a_columnar_sequence_with_a_watermark_per_partition(tmp_path):
    """jobs/billing_arrow.py's source is a SequenceSource(columnar=True) made into usage
    columns where it is read, its event time a column: every customer's last total is the
    sum of exactly its events, and each hour's last invoice that of its on-time events."""
    ns = runpy.run_path(str(Path(__file__).resolve().parents[2] / "jobs" / "billing_arrow.py"),
                        run_name="__raystream_job__")
    out, events = str(tmp_path / "billing"), 20_000
    job = ns["build"](out, events, rate=None).with_options(
        runtime=rs.RuntimeConfig(arrow_batch_size=1_500), checkpoint=rs.CheckpointConfig(interval=0.3))
    result = job.run()
    assert result.state == "finished"
    verdict = ns["verify"](out, events)
    assert verdict.ok and verdict.customers == ns["CUSTOMERS"] and verdict.invoices > 0, verdict
