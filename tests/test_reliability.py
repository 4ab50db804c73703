"""Users' data is never destroyed or silently corrupted: output paths, hostile records, shard
integrity, params typos, and one-line errors from every entry point."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl.clean.pipeline import main as clean_main
from etl.core.atomic import OUTPUT_MARKER, check_output
from etl.core.config import ParamsError, load_params
from etl.core.document import Document
from etl.core.errors import JinglianError, OutputRefused, one_line
from etl.io.records import ReaderConfig, parse_json_record, read_inputs, read_parquet_dir

ROOT = Path(__file__).resolve().parent.parent
#: A real paragraph (US State of the Union 1900, public domain: tests/data/NOTICE) that passes the quality rules.
GOOD = json.loads((ROOT / "tests" / "data" / "general_en.jsonl").read_text(encoding="utf-8").splitlines()[0])["text"]


def _jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for rec in records:
            handle.write((rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=False)) + "\n")
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(args, env_extra=None, timeout=120):
    env = dict(os.environ)
    env.pop("JINGLIAN_DEBUG", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _error_lines(stderr: str) -> list[str]:
    """stderr without the log lines the stages print while they work (timestamped)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln[:4].isdigit()]


# ------------------------------------------------------------------------- output paths


def test_output_equal_to_input_is_refused_and_nothing_is_touched(tmp_path):
    data = tmp_path / "d"
    _jsonl(data / "a.jsonl", [{"id": "1", "text": GOOD}])
    (data / "notes.txt").write_text("my notes")
    before = _tree(data)
    proc = _run(["-m", "etl.clean", "--input", str(data), "--output", str(data), "--no-progress"])
    assert proc.returncode != 0
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("jinglian: ") and "is also an input" in lines[0], proc.stderr
    assert _tree(data) == before


@pytest.mark.parametrize("layout", ["inside_input", "holds_input"])
def test_output_overlapping_an_input_is_refused(tmp_path, layout):
    data = tmp_path / "d"
    _jsonl(data / "a.jsonl", [{"id": "1", "text": GOOD}])
    if layout == "inside_input":
        inputs, output = [str(data)], data / "out"
    else:
        inputs, output = [str(data / "a.jsonl")], tmp_path
    with pytest.raises(OutputRefused, match="inside the input" if layout == "inside_input" else "holds the input"):
        clean_main(["--input", *inputs, "--output", str(output), "--no-progress"])
    assert not (data / "out").exists() and (data / "a.jsonl").is_file()


def test_a_users_directory_or_file_is_refused_but_own_outputs_are_replaced(tmp_path):
    src = _jsonl(tmp_path / "in" / "a.jsonl", [{"id": "1", "text": GOOD}])
    users = tmp_path / "users"
    users.mkdir()
    (users / "thesis.tex").write_text("precious")
    with pytest.raises(OutputRefused, match="not a jinglian output"):
        clean_main(["--input", str(src), "--output", str(users), "--no-progress"])
    assert (users / "thesis.tex").read_text() == "precious" and len(list(users.iterdir())) == 1
    a_file = tmp_path / "file.out"
    a_file.write_text("x")
    with pytest.raises(OutputRefused, match="not a directory"):
        clean_main(["--input", str(src), "--output", str(a_file), "--no-progress"])
    (tmp_path / "empty").mkdir()
    out = tmp_path / "empty"
    first = clean_main(["--input", str(src), "--output", str(out), "--no-progress"])
    assert (out / OUTPUT_MARKER).is_file() and first["num_in"] == 1
    second = clean_main(["--input", str(src), "--output", str(out), "--no-progress"])  # its own output: replaced
    assert second["num_in"] == 1 and sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "kept", "metrics.json", "rejected", "stats.json", "timing.json"]


def test_legacy_outputs_without_marker_are_recognised_and_globs_compare_their_matches(tmp_path):
    legacy = tmp_path / "legacy"
    (legacy / "kept").mkdir(parents=True)
    (legacy / "rejected").mkdir()
    (legacy / "stats.json").write_text("{}")
    check_output(legacy)  # an output of an earlier version: may be replaced
    (legacy / "other.csv").write_text("1")
    with pytest.raises(OutputRefused):
        check_output(legacy)
    data = tmp_path / "d"
    _jsonl(data / "a.jsonl", [{"id": "1", "text": GOOD}])
    check_output(data / "out", [str(data / "*.jsonl")])  # the glob can never match what is written there
    with pytest.raises(OutputRefused, match="inside the input"):
        check_output(data / "out", [str(data / "**" / "*.jsonl")])
    with pytest.raises(OutputRefused, match="also an input"):
        check_output(data, [f"medical={data}"])  # GROUP=PATH inputs of the shards stage


def test_stage_output_as_input_is_read_from_kept_only(tmp_path):
    src = _jsonl(tmp_path / "in" / "a.jsonl", [{"id": "1", "text": GOOD}, {"id": "2", "text": "x"}])
    clean_main(["--input", str(src), "--output", str(tmp_path / "clean"), "--no-progress"])
    again = clean_main(["--input", str(tmp_path / "clean"), "--output", str(tmp_path / "again"), "--no-progress"])
    assert again["num_in"] == 1  # the kept record; rejected/, stats.json and the marker are not inputs


# ------------------------------------------------------------------------- hostile records


def test_deeply_nested_and_undecodable_records_are_rejected_and_the_job_goes_on(tmp_path):
    deep = '{"id": "deep", "text": "t", "meta": ' + '{"a": ' * 2000 + "1" + "}" * 2000 + "}"
    medium = {"id": "medium", "text": GOOD, "meta": json.loads('{"a": ' * 70 + "1" + "}" * 70)}
    src = _jsonl(tmp_path / "in" / "a.jsonl", [
        {"id": "ok", "text": GOOD},
        deep,
        medium,
        '{"id": "long-int", "text": "t", "n": ' + "9" * 5000 + "}",
        '{"id": "nan", "text": "t", "n": NaN}',
        '{"id": "lone", "text": "bad \\ud800 surrogate"}',
        '{"id": "pair", "text": "' + GOOD + ' \\ud83d\\ude00"}',
    ])
    report = clean_main(["--input", str(src), "--output", str(tmp_path / "out"), "--no-progress"])
    rejected = {d.meta["src_line"]: (d.drop_reason, d.meta.get("error", "")) for d in read_parquet_dir(tmp_path / "out" / "rejected")}
    kept = {d.id for d in read_parquet_dir(tmp_path / "out" / "kept")}
    assert report["num_in"] == 7 and report["num_kept"] + report["num_rejected"] == 7
    assert kept == {"ok", "pair"}
    assert rejected[2][0] == "invalid_record" and "nested 2001 levels deep" in rejected[2][1]
    assert rejected[3][0] == "invalid_record" and "max_nesting_depth=64" in rejected[3][1]
    assert rejected[4][0] == "invalid_json" and "digits" in rejected[4][1]
    assert rejected[5][0] == "invalid_json" and "NaN" in rejected[5][1]
    assert rejected[6][0] == "invalid_record" and "surrogate" in rejected[6][1]


def test_parse_json_record_never_raises():
    for text in ["[" * 100_000, '{"a": ' * 50_000, "1e999999", '"\\udfff"', "\x00", "{" + '"k": 1,' * 10 + "}"]:
        obj, reason, error = parse_json_record(text, 64)
        assert (obj is None) == (reason is not None) and (reason is None or error)
    assert parse_json_record('{"x": 1e999}', 64)[1] == "invalid_json"  # inf: json.dumps would write invalid JSON
    assert parse_json_record('{"x": 1.5e3}', 64) == ({"x": 1500.0}, None, None)
    assert parse_json_record('{"a": [[[1]]]}', 3)[1] == "invalid_record"
    assert parse_json_record('{"a": [[1]]}', 3) == ({"a": [[1]]}, None, None)


def test_hand_made_stage_parquet_with_a_bad_meta_string_is_rejected_not_a_crash():
    from etl.core.document import Document

    deep = '{"src_file": "f", "src_line": 1, "a": ' + "[" * 5000 + "]" * 5000 + "}"
    for meta in (deep, "not json", "[1, 2]"):
        doc = Document.from_row({"id": "x", "text": "t", "source": "s", "domain": "general", "lang": "en", "meta": meta})
        assert doc.drop_reason == "invalid_record" and doc.meta["meta_raw"] == meta


def test_wrong_schema_parquet_rows_keep_their_id_and_columns(tmp_path):
    pq.write_table(pa.table({"id": ["p1", "p2"], "body": ["hello", "world"], "score": [1.5, 2.0]}), tmp_path / "x.parquet")
    docs = list(read_inputs([tmp_path]))
    assert [(d.id, d.drop_reason) for d in docs] == [("p1", "no_text"), ("p2", "no_text")]
    assert json.loads(docs[0].text) == {"id": "p1", "body": "hello", "score": 1.5}
    assert docs[1].meta["src_line"] == 2 and docs[1].meta["field"] == "text"


def test_a_rejected_record_does_not_claim_its_id(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": ""}, {"id": "x", "text": "the real one"}])
    docs = list(read_inputs([tmp_path]))
    assert [(d.id, d.drop_reason) for d in docs] == [("x", "no_text"), ("x", None)]


def test_binary_empty_and_invalid_gzip_files_are_one_record_each(tmp_path):
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "binary.txt").write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 300)
    (tmp_path / "empty.jsonl.gz").write_bytes(b"")
    (tmp_path / "junk.jsonl.gz").write_bytes(b"this is not gzip\n" * 10)
    with gzip.open(tmp_path / "nothing.jsonl.gz", "wb") as handle:
        handle.write(b"")
    _jsonl(tmp_path / "ok.jsonl", [{"id": "ok", "text": "fine"}])
    got = {d.meta["src_file"].rsplit("/", 1)[-1]: (d.drop_reason, d.meta.get("error", "")) for d in read_inputs([tmp_path])}
    assert got["binary.jsonl"][0] == "unreadable_file" and "NUL byte" in got["binary.jsonl"][1]
    assert got["binary.txt"][0] == "unreadable_file"
    assert got["empty.jsonl.gz"] == ("unreadable_file", "empty .gz file (0 bytes): not gzip data")
    assert got["junk.jsonl.gz"][0] == "unreadable_file" and "not a gzip file" in got["junk.jsonl.gz"][1]
    assert got["nothing.jsonl.gz"][0] == "no_text"
    assert got["ok.jsonl"] == (None, "")
    assert len(list(read_inputs([tmp_path]))) == 6  # one record per bad file, not one per "line"


def test_nesting_limit_is_a_validated_param():
    assert ReaderConfig().max_nesting_depth == 64
    with pytest.raises(ValueError, match="read.max_nesting_depth"):
        ReaderConfig(max_nesting_depth=1)


# ------------------------------------------------------------------------- params


def test_misspelled_section_and_keys_are_errors_naming_the_closest(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("claen:\n  on_error: skip\n")
    with pytest.raises(ParamsError, match=r"unknown section 'claen' \(did you mean 'clean'\?\)"):
        load_params(bad)
    bad.write_text("clean:\n  quality:\n    gopher:\n      min_word: 3\n")
    with pytest.raises(ValueError, match=r"clean.quality.gopher: unknown key 'min_word' \(did you mean 'min_words'\?\)"):
        load_params(bad)
    bad.write_text("dedup:\n  threshold: high\n")  # a bad value in another stage's section fails every stage
    with pytest.raises(ValueError, match="dedup.threshold"):
        load_params(bad)
    bad.write_text("train:\n  recipee: tiny\n")
    with pytest.raises(ValueError, match="did you mean 'recipe'"):
        load_params(bad)
    assert load_params()["clean"]  # the repository's params.yaml is valid


def test_train_overrides_name_the_closest_field():
    from trainer.config import apply_overrides
    from trainer.recipes import get_recipe

    with pytest.raises(ValueError, match=r"did you mean 'lr'"):
        apply_overrides(get_recipe("tiny"), {"optim.lrr": 1.0})


# ------------------------------------------------------------------------- one-line errors


ENTRY_POINTS = [
    ["-m", "etl.clean"], ["-m", "etl.dedup"], ["-m", "etl.tfidf"], ["-m", "augment"],
    ["spark_jobs/clean.py"], ["spark_jobs/dedup.py"], ["spark_jobs/tfidf_filter.py"], ["spark_jobs/augment_corpus.py"],
]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e[-1])
def test_missing_input_and_bad_params_are_one_line(tmp_path, entry):
    proc = _run([*entry, "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out")])
    lines = _error_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1 and "nope" in lines[0] and "does not exist" in lines[0], proc.stderr
    params = tmp_path / "p.yaml"
    params.write_text("read:\n  max_record_bytes: lots\n")
    _jsonl(tmp_path / "in.jsonl", [{"id": "1", "text": GOOD}])
    proc = _run([*entry, "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--params", str(params)])
    lines = _error_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1 and "read.max_record_bytes" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_other_entry_points_and_debug(tmp_path):
    missing_params = str(tmp_path / "missing.yaml")
    _jsonl(tmp_path / "in" / "a.jsonl", [{"id": "1", "text": GOOD}])
    cases = [
        (["-m", "shards", "build", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "s"), "--tokenizer", "x"], "does not exist"),
        (["-m", "shards", "build", "--input", str(tmp_path), "--output", str(tmp_path)], "also an input"),
        (["spark_jobs/build_shards.py", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "s"), "--params", missing_params],
         "missing.yaml"),
        # the repository's params validated from a job script (spark_jobs/augment_corpus.py must not shadow the augment package)
        (["spark_jobs/build_shards.py", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "s")], "no tokenizer given"),
        (["-m", "trainer.train", "--shards", str(tmp_path / "no-shards"), "--params", missing_params], "missing.yaml"),
        (["-m", "etl.ingest", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t", "--output", str(tmp_path / "land"),
          "--params", missing_params], "missing.yaml"),
        (["-m", "etl.produce", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t", "--input", str(tmp_path / "nope.jsonl")], "nope.jsonl"),
    ]
    for args, expected in cases:
        proc = _run(args)
        lines = _error_lines(proc.stderr)
        assert proc.returncode == 1 and len(lines) == 1 and expected in lines[0], (args, proc.stderr)
    proc = _run(["-m", "etl.clean", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--debug"])
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
    proc = _run(["-m", "etl.clean", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")], {"JINGLIAN_DEBUG": "1"})
    assert "Traceback (most recent call last)" in proc.stderr


def test_missing_java_is_one_line(tmp_path):
    _jsonl(tmp_path / "in.jsonl", [{"id": "1", "text": GOOD}])
    env = {"JAVA_HOME": str(tmp_path / "no-java"), "PATH": os.path.dirname(sys.executable)}
    proc = _run(["spark_jobs/clean.py", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")], env)
    lines = _error_lines(proc.stderr)
    assert proc.returncode != 0 and len(lines) == 1 and "Java 17" in lines[0], proc.stderr


def test_one_line_picks_the_root_cause_of_spark_errors():
    java = ("An error occurred while calling o123.parquet.\n: org.apache.spark.SparkException: Job aborted.\n"
            "\tat org.apache.spark.sql.Foo(Foo.scala:1)\nCaused by: java.io.FileNotFoundException: /data/x (Permission denied)\n\tat x")
    assert one_line(RuntimeError(java)) == "java.io.FileNotFoundException: /data/x (Permission denied)"
    worker = "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: clean.quality.min_words: expected an integer"
    assert one_line(RuntimeError(worker)) == "ValueError: clean.quality.min_words: expected an integer"
    assert one_line(FileNotFoundError("input '/x' does not exist")) == "input '/x' does not exist"


@pytest.mark.kafka
def test_unreachable_broker_is_one_line(tmp_path):
    proc = _run(["-m", "etl.ingest", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t", "--output", str(tmp_path / "land")], timeout=120)
    lines = _error_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1 and "no Kafka broker reachable at 127.0.0.1:1" in lines[0], proc.stderr


# ------------------------------------------------------------------------- Spark tier


@pytest.mark.spark
def test_spark_rejects_hostile_inputs_like_local_and_refuses_outputs(spark, tmp_path):
    from spark_jobs.clean import main as spark_main

    data = tmp_path / "in"
    deep = '{"id": "deep", "text": "t", "meta": ' + '{"a": ' * 2000 + "1" + "}" * 2000 + "}"
    _jsonl(data / "a.jsonl", [{"id": "ok", "text": GOOD}, deep, '{"id": "lone", "text": "x \\udc00"}', {"id": "ok", "text": GOOD}])
    (data / "binary.jsonl").write_bytes(bytes(range(256)) * 10)
    (data / "empty.jsonl.gz").write_bytes(b"")
    pq.write_table(pa.table({"id": ["p1"], "body": ["no text column"]}), data / "wrong.parquet")
    spark_report = spark_main(["--input", str(data), "--output", str(tmp_path / "spark")])
    local_report = clean_main(["--input", str(data), "--output", str(tmp_path / "local"), "--no-progress"])

    def rejected(root):
        return sorted((d.id, d.drop_reason, d.text[:40]) for d in read_parquet_dir(root / "rejected"))

    assert rejected(tmp_path / "spark") == rejected(tmp_path / "local")
    assert spark_report["num_in"] == local_report["num_in"] == 7
    assert spark_report["drop_reasons"] == local_report["drop_reasons"]
    reasons = dict(spark_report["drop_reasons"])
    assert reasons["invalid_record"] == 2 and reasons["unreadable_file"] == 2 and reasons["duplicate_id"] == 1
    with pytest.raises(OutputRefused):
        spark_main(["--input", str(data), "--output", str(data / "out")])
    assert not (data / "out").exists()


def test_vcs_housekeeping_files_do_not_block_an_output_and_are_kept(tmp_path):
    src = _jsonl(tmp_path / "in" / "a.jsonl", [{"id": "1", "text": GOOD}])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".gitignore").write_text("/kept\n")  # what DVC leaves beside a stage's outs
    clean_main(["--input", str(src), "--output", str(out), "--no-progress"])
    assert (out / ".gitignore").read_text() == "/kept\n" and (out / "kept").is_dir()


# ----------------------------------------------------------------------------- part files and remote outputs


def test_uri_helpers_map_hadoop_schemes_and_keep_local_paths_absolute(tmp_path, monkeypatch):
    from etl.io import fs as jfs

    monkeypatch.chdir(tmp_path)
    assert jfs.arrow_uri("s3a://bucket/corpus/clean") == "s3://bucket/corpus/clean"
    assert jfs.arrow_uri("s3n://bucket/x") == "s3://bucket/x" and jfs.arrow_uri("hdfs://nn:8020/x") == "hdfs://nn:8020/x"
    assert [jfs.scheme(u) for u in ("runs/clean", "file:///tmp/x", "HDFS://nn/x", "s3a://b/x")] == ["", "file", "hdfs", "s3a"]
    assert jfs.is_local("runs/clean") and jfs.is_local("file:///tmp/x") and not jfs.is_local("s3a://b/x")
    assert jfs.local_path("runs/clean") == str(tmp_path / "runs" / "clean") and jfs.local_path("file:///tmp/x") == "/tmp/x"
    assert jfs.absolute("runs/clean") == str(tmp_path / "runs" / "clean") and jfs.absolute("hdfs://nn/x") == "hdfs://nn/x"
    assert jfs.join("s3://b/out/", "kept", "part-0.parquet") == "s3://b/out/kept/part-0.parquet"
    with pytest.raises(ValueError, match="not a local path"):
        jfs.local_path("hdfs://nn/x")
    filesystem, path = jfs.resolve(f"file://{tmp_path}/out")
    assert type(filesystem).__name__ == "LocalFileSystem" and path == f"{tmp_path}/out"


def test_part_writer_attempts_commit_one_file_and_a_failed_attempt_leaves_nothing(tmp_path):
    """A task attempt writes under _temporary/<attempt>/ and moves its file onto the part name;
    a retry or speculative attempt writes the same bytes onto the same name; an aborted attempt
    leaves no file; row groups do not depend on the batches that arrive."""
    from etl.core.document import DOC_SCHEMA, documents_to_table
    from etl.io.records import ParquetPartWriter, write_parquet

    docs = [Document(id=f"d{i:04d}", text=f"text {i}") for i in range(5000)]
    table = documents_to_table(docs, False)
    root = f"file://{tmp_path / 'out'}"
    name = "kept/part-00000-c000.zstd.parquet"
    broken = ParquetPartWriter(root, name, DOC_SCHEMA, attempt="attempt-1")
    broken.write(table.to_batches(max_chunksize=700)[0])
    broken.abort()
    assert not (tmp_path / "out" / name).exists() and not list((tmp_path / "out" / "_temporary").rglob("*.parquet"))
    for attempt, chunk in (("attempt-2", 3000), ("attempt-3", 999)):
        writer = ParquetPartWriter(root, name, DOC_SCHEMA, attempt=attempt)
        for batch in table.to_batches(max_chunksize=chunk):
            writer.write(batch)
        assert writer.commit() == 5000
        if attempt == "attempt-2":
            first = (tmp_path / "out" / name).read_bytes()
    assert (tmp_path / "out" / name).read_bytes() == first
    assert [pq.ParquetFile(tmp_path / "out" / name).metadata.row_group(i).num_rows for i in range(3)] == [2048, 2048, 904]
    write_parquet(docs, tmp_path / "local.parquet")  # the local executor's writer: the same bytes for the same rows
    assert (tmp_path / "local.parquet").read_bytes() == first
    # one task's batches may differ in nullability and metadata (Spark's after a join): the same file
    strict = pa.schema([f.with_nullable(False) for f in table.schema], metadata={b"from": b"join"})
    writer = ParquetPartWriter(root, name, DOC_SCHEMA, attempt="attempt-4")
    for i, batch in enumerate(table.to_batches(max_chunksize=999)):
        writer.write(batch if i % 2 else pa.RecordBatch.from_arrays(batch.columns, schema=strict))
    assert writer.commit() == 5000 and (tmp_path / "out" / name).read_bytes() == first


def test_remote_outputs_are_committed_by_manifest_and_stats_last(tmp_path):
    """The protocol for hdfs:// and s3a:// outputs, run through pyarrow's local filesystem: a
    user's directory is refused, an old output is cleared (stats.json first), and finish()
    writes the manifest and the reports with stats.json last; no directory is renamed."""
    from pyarrow import fs

    from etl.core.document import DOC_SCHEMA, REJECTED_SCHEMA
    from etl.io.records import ParquetPartWriter
    from etl.io.stage_output import MANIFEST, StageOutput, clear_remote_output

    local = fs.LocalFileSystem()
    users = tmp_path / "users"
    users.mkdir()
    (users / "thesis.txt").write_text("mine")
    with pytest.raises(OutputRefused, match="not a jinglian output"):
        clear_remote_output(local, str(users), f"file://{users}")
    assert (users / "thesis.txt").read_text() == "mine"

    out = tmp_path / "out"
    (out / "kept").mkdir(parents=True)
    (out / OUTPUT_MARKER).write_text("{}")
    (out / "kept" / "part-00009-c000.zstd.parquet").write_bytes(b"stale")
    (out / "stats.json").write_text("{}")
    clear_remote_output(local, str(out), f"file://{out}")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER]

    uri = f"file://{out}"
    writer = ParquetPartWriter(uri, "kept/part-00001-c000.zstd.parquet", DOC_SCHEMA, attempt="attempt-7")
    writer.write(pa.RecordBatch.from_pylist([{"id": "a", "text": "t", "source": "", "domain": "general", "lang": "en", "meta": "{}"}],
                                            schema=DOC_SCHEMA))
    parts = {"kept": {"part-00001-c000.zstd.parquet": writer.commit()}}
    (out / "_temporary" / "attempt-9").mkdir(parents=True)  # left by a killed attempt
    (out / "_temporary" / "attempt-9" / "half.parquet").write_bytes(b"partial")
    StageOutput(uri, local=False).finish(parts, {"num_in": 1, "num_kept": 1, "elapsed_s": 1.5})
    names = sorted(p.name for p in out.iterdir())
    assert names == [OUTPUT_MARKER, MANIFEST, "kept", "metrics.json", "rejected", "stats.json", "timing.json"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["files"] == {"kept/part-00001-c000.zstd.parquet": 1, "rejected/part-00000-c000.zstd.parquet": 0}
    assert pq.read_schema(out / "rejected" / "part-00000-c000.zstd.parquet").equals(REJECTED_SCHEMA)
    assert json.loads((out / "stats.json").read_text()) == {"num_in": 1, "num_kept": 1}
    assert (out / "stats.json").stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file())

    (out / "kept" / "part-00005-c000.zstd.parquet").write_bytes(b"?")  # a file no task reported: not committed
    with pytest.raises(JinglianError, match="reported"):
        StageOutput(uri, local=False).finish(parts, {})
