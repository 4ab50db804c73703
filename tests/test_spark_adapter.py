"""Spark tier: the shared adapter (spark_jobs/common.py) reads stage outputs natively with the
same records as the Python reader, keeps an explicit partition count, writes each partition's
part files on the executors (statistics from the tasks' summaries, the same as
:class:`etl.core.stats.StageStats`), and writes byte-identical outputs in two JVMs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_batch_stats_equal_stage_stats():
    """The write tasks count their records from the columns (no Document built): same numbers as StageStats."""
    from etl.core.document import rows_to_batch
    from spark_jobs.common import RECORD_SCHEMA, batch_stats

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
    batch = rows_to_batch(rows, RECORD_SCHEMA)
    assert batch_stats(batch).to_dict(["read", "quality"]) == expected
    halves = batch_stats(batch.slice(0, 3)).merge(batch_stats(batch.slice(3)))  # per task, merged on the driver
    assert halves.to_dict(["read", "quality"]) == expected
    assert expected["kept_by_lang"]["und"] == {"docs": 2, "chars": 9} and expected["chars_in"] == 20 + 2 + 9 + 7 + 3 + 7


def test_write_stage_output_writes_parts_on_the_executors(spark, tmp_path):
    """Each partition's kept and rejected rows become one pyarrow-written part file each (none
    for an empty side, one empty file for an empty folder), with no temporaries left; the
    statistics and the counter come from the tasks' summaries."""
    import pyarrow.parquet as pq

    from augment.pipeline import AugmentStats
    from etl.core.document import DOC_SCHEMA, REJECTED_SCHEMA
    from spark_jobs.common import RECORD_SCHEMA, write_stage_output

    docs = _docs("d", 40)
    for doc in docs[::7]:
        doc.drop("too_short", "quality")
    frame = spark.createDataFrame([tuple(d.to_row()[n] for n in RECORD_SCHEMA.names) for d in docs],
                                  ", ".join(f"{n} string" for n in RECORD_SCHEMA.names)).repartition(3, "id")
    report = write_stage_output(frame, f"file://{tmp_path / 'out'}", ["quality"], extra_stats={"extra": 1}, counter=AugmentStats)
    out = tmp_path / "out"
    assert report["num_kept"] == 34 and report["num_rejected"] == 6 and report["extra"] == 1
    assert report["augment"] == {"num_originals": 40, "by_method": {}}  # the stage counter, counted by the write tasks
    assert json.loads((out / "stats.json").read_text()) == {k: v for k, v in report.items() if k != "elapsed_s"}
    assert sorted(p.name for p in out.iterdir()) == [".jinglian-output", "kept", "metrics.json", "rejected", "stats.json", "timing.json"]
    for folder, schema, ids in (("kept", DOC_SCHEMA, {d.id for d in docs if not d.dropped}), ("rejected", REJECTED_SCHEMA, {d.id for d in docs if d.dropped})):
        files = sorted((out / folder).iterdir())
        assert all(re.fullmatch(r"part-0000[0-2]-c000\.zstd\.parquet", f.name) for f in files), files
        tables = [pq.read_table(f) for f in files]
        assert all(t.schema.equals(schema) and t.num_rows for t in tables)
        assert {i for t in tables for i in t.column("id").to_pylist()} == ids
        for table in tables:  # sorted within each part
            assert table.column("id").to_pylist() == sorted(table.column("id").to_pylist())
        assert pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression == "ZSTD"

    kept_only = frame.filter("drop_reason IS NULL")
    report = write_stage_output(kept_only, str(out), ["quality"])
    [empty] = (out / "rejected").iterdir()
    assert empty.name == "part-00000-c000.zstd.parquet" and pq.read_table(empty).num_rows == 0
    assert pq.read_schema(empty).equals(REJECTED_SCHEMA) and report["num_rejected"] == 0
    assert not (out / "_temporary").exists()


def test_split_outputs_are_written_in_one_pass(spark, tmp_path):
    """``split=(kept, rejected)``: both frames in one job; the rejected parts are numbered after the kept partitions."""
    from spark_jobs.common import RECORD_SCHEMA, write_stage_output

    docs = _docs("d", 12)
    for doc in docs[:4]:
        doc.drop("near_duplicate", "dedup")
    frame = spark.createDataFrame([tuple(d.to_row()[n] for n in RECORD_SCHEMA.names) for d in docs],
                                  ", ".join(f"{n} string" for n in RECORD_SCHEMA.names))
    split = (frame.filter("drop_reason IS NULL").repartition(2), frame.filter("drop_reason IS NOT NULL").repartition(1))
    report = write_stage_output(None, str(tmp_path / "out"), ["dedup"], split=split)
    assert report["num_kept"] == 8 and report["dropped_by_step"] == {"dedup": {"near_duplicate": 4}}
    assert sorted(p.name for p in (tmp_path / "out" / "rejected").iterdir()) == ["part-00002-c000.zstd.parquet"]
    assert sorted(p.name for p in (tmp_path / "out" / "kept").iterdir()) == ["part-00000-c000.zstd.parquet", "part-00001-c000.zstd.parquet"]


def _spark_submit(args, cwd):
    env = {**os.environ, "JINGLIAN_SPARK_LOG_LEVEL": "ERROR"}
    cmd = [str(Path(sys.executable).with_name("spark-submit")), "--master", "local[2]", "--conf", "spark.ui.enabled=false", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_clean_job_output_is_byte_identical_across_jvms(tmp_path, data_dir):
    """Two spark-submit runs (two JVMs, two sets of Python workers) of the clean job write the
    same bytes in kept/, rejected/ and stats.json (#14: DVC reruns leave dvc.lock unchanged)."""
    root = Path(__file__).resolve().parent.parent
    inputs = [str(data_dir / n) for n in ("general_en.jsonl", "html_pages.jsonl", "dialogues.jsonl", "expert.jsonl")]
    for name in ("a", "b"):
        _spark_submit(["spark_jobs/clean.py", "--input", *inputs, "--output", str(tmp_path / name)], root)

    def files(out):
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "timing.json"}

    first, second = files(tmp_path / "a"), files(tmp_path / "b")
    assert any(name.startswith("kept/part-") for name in first) and any(name.startswith("rejected/part-") for name in first)
    assert "stats.json" in first and sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


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


def test_session_conf_sets_only_what_the_session_does_not_and_restores(spark):
    """A stage's Spark settings (``Stage.spark_conf``) hold inside the block; a key the session
    sets already (``--conf``, ``spark.conf.set``) is left as it is; on exit the keys set are unset."""
    from spark_jobs.common import session_conf

    ours, yours = "spark.sql.adaptive.enabled", "spark.sql.adaptive.coalescePartitions.enabled"
    assert ours not in spark.conf.getAll and spark.conf.get(ours) == "true"
    spark.conf.set(yours, "true")
    try:
        with session_conf(spark, {ours: "false", yours: "false"}) as applied:
            assert applied == {ours: "false"}
            assert spark.conf.get(ours) == "false" and spark.conf.get(yours) == "true"
        assert ours not in spark.conf.getAll and spark.conf.get(ours) == "true" and spark.conf.get(yours) == "true"
        with pytest.raises(RuntimeError), session_conf(spark, {ours: "false"}):
            raise RuntimeError("a failed stage")
        assert ours not in spark.conf.getAll
    finally:
        spark.conf.unset(yours)


def test_the_read_check_counts_live_records_and_repeated_ids_in_one_job(spark, tmp_path):
    """``read_documents_df(counts=...)``: ``num_live`` equals ``live_records(df).count()`` with
    repeated ids, lines rejected by the reader (which claim no id) and a stage output read
    natively; an input of nothing but unreadable files still raises NothingRead."""
    from etl.io.records import NothingRead
    from spark_jobs.common import live_records, read_check, read_documents_df

    raw = tmp_path / "raw"
    raw.mkdir()
    lines = [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}, {"id": "a", "text": "a later copy"}, "{not json",
             {"id": "c", "text": "  "}, {"id": "b", "text": "again"}, {"id": "a", "text": "and again"}, {"id": "d", "text": "four"}]
    (raw / "x.jsonl").write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines), encoding="utf-8")
    (raw / "y.jsonl").write_text(json.dumps({"id": "c", "text": "c claims its id here"}) + "\n", encoding="utf-8")
    for partitions in (1, 3):
        counts: dict[str, int] = {}
        df = read_documents_df(spark, [str(raw)], ReaderConfig(), partitions=partitions, counts=counts)
        assert counts == {"num_live": live_records(df).count()} == {"num_live": 4}  # a, b, d, and c from y.jsonl
        assert sorted(r["id"] for r in df.filter("dup_first IS NOT NULL").collect()) == ["a", "a", "b"]
    stage = _stage_output(tmp_path / "clean", _docs("d", 12))
    counts = {}
    read_documents_df(spark, [str(stage)], ReaderConfig(), counts=counts)
    assert counts == {"num_live": 12}
    records = spark.createDataFrame([("f:0", "unreadable_file", 0)], "id string, drop_reason string, file_index long")
    with pytest.raises(NothingRead):
        read_check(records, 1, ["in"])
    assert read_check(records, 2, ["in"]) == (0, 0)  # another file was read (as empty): not an error


def test_driver_made_rows_get_a_task_each_and_coalesce_groups_neighbours(spark):
    """``one_row_per_task``: row i alone in partition i, made without a Python worker; a later
    ``coalesce(k)`` keeps neighbouring rows together, as ``parallelize`` did (a shuffle's
    partitions are grouped by locality at random, which reordered the clean stage's part files)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from spark_jobs.common import one_row_per_task

    schema = pa.schema([("file_index", pa.int64()), ("name", pa.string())])
    rows = [(i, f"f{i}") for i in range(13)]
    frame = one_row_per_task(spark, rows, schema)
    assert frame.columns == ["file_index", "name"] and frame.rdd.getNumPartitions() == 13
    placed = frame.select("file_index", F.spark_partition_id().alias("p")).collect()
    assert sorted((r["file_index"], r["p"]) for r in placed) == [(i, i) for i in range(13)]
    grouped = frame.coalesce(3).select("file_index", F.spark_partition_id().alias("p")).collect()
    assert [r["p"] for r in sorted(grouped, key=lambda r: r["file_index"])] == [0] * 4 + [1] * 4 + [2] * 5
