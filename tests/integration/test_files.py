"""FileSource -> job -> FileSink round trips, locally and on S3 (moto server on 127.0.0.1)."""
import csv
import io
import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raystream as rs
from raystream.sinks import FileSink, read_files
from raystream.sources import FileSource

ROWS = [{"id": i, "name": f"user-{i}", "cents": i * 7 % 1000} for i in range(2500)]


def encode(fmt: str, rows: list[dict]) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if fmt == "text":
        return "".join(f"{r['id']},{r['name']},{r['cents']}\n" for r in rows).encode()
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["id", "name", "cents"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().encode()
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=700)
    return buf.getvalue()


def normalize(fmt: str):
    """Each format's records back to the row dicts."""
    if fmt == "text":
        return lambda line: dict(zip(("id", "name", "cents"), line.split(","))) | {
            "id": int(line.split(",")[0]), "cents": int(line.split(",")[2])}
    if fmt == "csv":
        return lambda r: {"id": int(r["id"]), "name": r["name"], "cents": int(r["cents"])}
    return lambda r: r


def round_trip(in_uri: str, out_uri: str, fmt: str, sink_fmt: str) -> list[dict]:
    job = rs.Job(f"rt-{fmt}", parallelism=2)
    stream = job.source("in", FileSource(in_uri, format=fmt))
    if fmt == "parquet":  # Arrow end to end: a vectorized step, no Python records
        stream = stream.map_batches("same", lambda b: b)
    else:
        stream = stream.map("norm", normalize(fmt))
    stream.sink("out", FileSink(out_uri, format=sink_fmt, rows_per_file=1000))
    result = job.run()
    assert result.records_in("out") == len(ROWS)
    return read_files(out_uri, format=sink_fmt)


@pytest.mark.parametrize("fmt, sink_fmt", [("text", "jsonl"), ("jsonl", "jsonl"), ("csv", "parquet"),
                                           ("parquet", "parquet")])
def test_local_round_trip(tmp_path, fmt, sink_fmt):
    (tmp_path / "in").mkdir()
    for i in range(2):  # two files, two partitions
        (tmp_path / "in" / f"part{i}.{fmt}").write_bytes(encode(fmt, ROWS[i::2]))
    out = round_trip(str(tmp_path / "in" / f"*.{fmt}"), str(tmp_path / "out"), fmt, sink_fmt)
    assert sorted(out, key=lambda r: r["id"]) == ROWS


@pytest.mark.parametrize("fmt, sink_fmt", [("text", "jsonl"), ("jsonl", "parquet"), ("csv", "jsonl"),
                                           ("parquet", "parquet")])
def test_s3_round_trip(s3_bucket, fmt, sink_fmt):
    s3 = boto3.client("s3")
    for i in range(2):
        s3.put_object(Bucket=s3_bucket, Key=f"in/part{i}.{fmt}", Body=encode(fmt, ROWS[i::2]))
    out = round_trip(f"s3://{s3_bucket}/in/*.{fmt}", f"s3://{s3_bucket}/out", fmt, sink_fmt)
    assert sorted(out, key=lambda r: r["id"]) == ROWS
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="out/")["Contents"]]
    assert len(keys) >= 2 and all(k.split("/")[-1].startswith("part-out@") for k in keys)


def test_missing_s3_input_is_an_error_before_start(s3_bucket):
    job = rs.Job("missing")
    job.source("in", FileSource(f"s3://{s3_bucket}/nothing/*.txt")).sink("out", FileSink(f"s3://{s3_bucket}/o"))
    with pytest.raises(rs.SourceError, match="no file matching"):
        job.run()


def test_a_reader_of_sink_output_skips_staged_files_on_s3(s3_bucket):
    """FileSource("out/*") over a FileSink directory reads committed files only."""
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="out/part-out@0000@r@000000000001@000001@t-000000.jsonl", Body=b'{"id": 1}\n')
    s3.put_object(Bucket=s3_bucket, Key="out/_pending-out@0000@r@000002@t-000001.jsonl", Body=b'{"id": 2}\n')
    s3.put_object(Bucket=s3_bucket, Key="out/.part.tmp", Body=b'{"id": 3}\n')
    source = FileSource(f"s3://{s3_bucket}/out/*", format="jsonl")
    assert [k.rsplit("/", 1)[1] for k in source.list_partitions()] == [
        "part-out@0000@r@000000000001@000001@t-000000.jsonl"]
    assert read_files(f"s3://{s3_bucket}/out") == [{"id": 1}]
