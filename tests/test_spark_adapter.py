"""Spark tier: the shared adapter (spark_jobs/common.py) reads stage outputs natively with the
same records as the Python reader, keeps an explicit partition count, and computes the
same statistics as :class:`etl.core.stats.StageStats` with Spark SQL."""
from __future__ import annotations

import pytest

from etl.core.document import Document
from etl.core.stats import StageStats
from etl.io.records import ReaderConfig, list_input_files, write_parquet

pytestmark = pytest.mark.spark


def _rows(df):
    return sorted(tuple(r) for r in df.select("id", "text", "source", "domain", "lang", "meta", "drop_reason", "drop_step", "dup_first").collect())


def _stage_output(root, docs, name="part-0.parquet"):
    (root / "kept").mkdir(parents=True, exist_ok=True)
    write_parquet(docs, root / "kept" / name)
    (root / "stats.json").write_text("{}")
    return root


def _docs(prefix, n):
    return [Document(id=f"{prefix}{i}", text=f"文本 {i} text", source="s", domain="general" if i % 2 else "expert",
                     lang="zh" if i % 3 else "", meta={"src_file": "raw.jsonl", "src_line": i + 1, "score": i / 3}) for i in range(n)]


def test_stage_output_is_read_natively_with_the_python_readers_records(spark, tmp_path):
    from spark_jobs.common import _read_with_python, read_documents_df, read_stage_parquet

    stage = _stage_output(tmp_path / "clean", _docs("d", 12))
    files = list_input_files([stage])
    assert read_stage_parquet(spark, files) is not None
    native = read_documents_df(spark, [str(stage)], ReaderConfig())
    python = _read_with_python(spark, files, ReaderConfig(), 3)
    assert _rows(native) == _rows(python)
    assert {r["meta"] for r in native.collect()} >= {'{"score":0.0,"src_file":"raw.jsonl","src_line":1}'}  # provenance kept
    assert native.rdd.getNumPartitions() == 2 * spark.sparkContext.defaultParallelism
    assert read_documents_df(spark, [str(stage)], ReaderConfig(), partitions=3).rdd.getNumPartitions() == 3


def test_repeated_ids_or_odd_rows_fall_back_to_the_python_reader(spark, tmp_path):
    from spark_jobs.common import read_documents_df, read_stage_parquet

    first = _stage_output(tmp_path / "a", _docs("d", 4))
    second = _stage_output(tmp_path / "b", _docs("d", 2))  # concatenated outputs: d0, d1 twice
    assert read_stage_parquet(spark, list_input_files([first, second])) is None
    rows = {(r["meta"], r["dup_first"]) for r in read_documents_df(spark, [str(first), str(second)], ReaderConfig()).collect() if r["dup_first"]}
    assert len(rows) == 2 and {d for _, d in rows} == {"raw.jsonl:1", "raw.jsonl:2"}
    blank = _stage_output(tmp_path / "c", [Document(id="x", text=" \u3000\n", meta={"src_file": "f", "src_line": 1})])
    assert read_stage_parquet(spark, list_input_files([blank])) is None
    [row] = read_documents_df(spark, [str(blank)], ReaderConfig()).collect()
    assert row["drop_reason"] == "no_text"
    raw = tmp_path / "raw.parquet"  # raw Parquet without provenance: the reader adds it
    write_parquet([Document(id="y", text="hello")], raw)
    assert read_stage_parquet(spark, list_input_files([raw])) is None


def test_sql_stats_equal_stage_stats(spark):
    from spark_jobs.common import RECORD_SCHEMA, compute_stats

    docs = [
        Document(id="a", text="hello 😀", lang="en", domain="general", meta={"chars_in": 20}),
        Document(id="b", text="你好", lang="", domain="medical"),
        Document(id="c", text="x" * 7, lang="zh", domain="", meta={"chars_in": 9.7}),
        Document(id="d", text="dropped", domain="medical").drop("too_short", "quality", detail=1),
        Document(id="e", text="", domain="expert", meta={"chars_in": 3}).drop("no_text", "read"),
        Document(id="f", text="no step", domain="general", meta={"drop_reason": "odd"}),  # drop without a step: '?'
    ]
    rows = [d.to_row() for d in docs]
    rows[2]["lang"] = None  # a null language counts as 'und' like an empty one
    expected = StageStats().add_all(Document.from_row(r) for r in rows).to_dict(["read", "quality"])
    df = spark.createDataFrame([tuple(r[n] for n in RECORD_SCHEMA.names) for r in rows], ", ".join(f"{n} string" for n in RECORD_SCHEMA.names))
    assert compute_stats(df).to_dict(["read", "quality"]) == expected
    assert expected["kept_by_lang"]["und"] == {"docs": 2, "chars": 9} and expected["chars_in"] == 20 + 2 + 9 + 7 + 3 + 7


def test_partitions_follow_input_size_and_each_file_is_its_own_read_task(spark, tmp_path):
    """Large inputs get one partition per 64 MB (cache blocks stay small); raw files are read
    one task per file, so no core gets several files while another idles."""
    import json

    from pyspark.sql import functions as F

    from spark_jobs.common import PARTITION_INPUT_BYTES, _read_with_python, default_partitions, file_listing

    cores = spark.sparkContext.defaultParallelism
    assert default_partitions(spark) == 2 * cores
    assert default_partitions(spark, 10 * PARTITION_INPUT_BYTES + 1) == max(2 * cores, 11)
    for f in range(5):
        with open(tmp_path / f"part-{f}.jsonl", "w", encoding="utf-8") as handle:
            for i in range(3):
                handle.write(json.dumps({"id": f"{f}-{i}", "text": f"text {f} {i}"}) + "\n")
    files = list_input_files([tmp_path])
    per_task = file_listing(spark, files).groupBy(F.spark_partition_id().alias("task")).agg(F.collect_list("name").alias("names")).collect()
    assert sorted(len(r["names"]) for r in per_task) == [1] * 5
    records = _read_with_python(spark, files, ReaderConfig(), 3)
    assert records.rdd.getNumPartitions() == 3 and records.count() == 15


def test_a_large_jsonl_file_is_read_by_many_line_aligned_ranges(spark, tmp_path):
    """``read.split_bytes`` splits one JSON Lines file into many read tasks with exactly the
    records, ids, line numbers, rejections and duplicate-id marks of one task per file."""
    from test_io import _ragged_jsonl

    from spark_jobs.common import file_listing, read_documents_df

    (tmp_path / "in").mkdir()
    path = _ragged_jsonl(tmp_path / "in" / "big.jsonl")
    (tmp_path / "in" / "small.jsonl").write_text('{"id": "b", "text": "repeated id in a later file"}\n')
    tiny = ReaderConfig(split_bytes=200)
    assert file_listing(spark, list_input_files([path]), tiny).rdd.getNumPartitions() == -(-path.stat().st_size // 200)
    split = read_documents_df(spark, [str(tmp_path / "in")], tiny, partitions=3)
    whole = read_documents_df(spark, [str(tmp_path / "in")], ReaderConfig(), partitions=3)
    assert _rows(split) == _rows(whole)
    assert sum(r[6] == "invalid_json" for r in _rows(split)) == 1 and sum(r[8] is not None for r in _rows(split)) == 2
