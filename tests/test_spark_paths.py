"""Spark tier: inputs are listed on the driver and located by absolute URIs; a job that reads
nothing fails with one line (the cluster tier, tests/test_cluster.py, runs executors in their
own working directories)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from etl.core.errors import InputError
from etl.io.records import NothingRead, list_input_files, read_inputs

pytestmark = pytest.mark.spark


def _tree(root: Path, data_dir: Path) -> None:
    (root / "a" / "deep").mkdir(parents=True)
    lines = (data_dir / "general_en.jsonl").read_text(encoding="utf-8").splitlines(True)
    (root / "a" / "one.jsonl").write_text("".join(lines[:3]), encoding="utf-8")
    (root / "a" / "deep" / "two.jsonl").write_text("".join(lines[3:5]), encoding="utf-8")
    (root / "a" / "_SUCCESS").write_text("")
    (root / "a" / ".hidden.jsonl").write_text("{}\n")


def test_relative_inputs_get_absolute_file_uris_and_keep_their_provenance(spark, tmp_path, data_dir, monkeypatch):
    from spark_jobs.common import list_inputs

    _tree(tmp_path, data_dir)
    monkeypatch.chdir(tmp_path)
    files, size = list_inputs(spark, ["a"])
    assert [f.path for f in files] == ["a/deep/two.jsonl", "a/one.jsonl"]
    assert [f.location for f in files] == [f"file://{tmp_path}/a/deep/two.jsonl", f"file://{tmp_path}/a/one.jsonl"]
    assert size == sum(os.path.getsize(f.path) for f in files)


def test_uris_are_listed_through_hadoop_with_the_local_rules(spark, tmp_path, data_dir):
    from spark_jobs.common import list_inputs

    _tree(tmp_path, data_dir)
    files, size = list_inputs(spark, [f"file://{tmp_path}/a"])
    local = list_input_files([tmp_path / "a"])
    assert [f.name for f in files] == [f.name for f in local] == ["a/deep/two.jsonl", "a/one.jsonl"]
    assert [f.location for f in files] == [f"file:{tmp_path}/a/deep/two.jsonl", f"file:{tmp_path}/a/one.jsonl"]
    assert size == sum(os.path.getsize(f.path) for f in local)
    assert [f.name for f in list_inputs(spark, [f"file://{tmp_path}/a/*.jsonl"])[0]] == ["one.jsonl"]
    with pytest.raises(InputError, match="matches no file"):
        list_inputs(spark, [f"file://{tmp_path}/a/*.parquet"])
    with pytest.raises(InputError, match="does not exist"):
        list_inputs(spark, [f"file://{tmp_path}/missing"])


def test_a_uri_input_gives_the_records_of_the_same_local_path(spark, tmp_path, data_dir):
    from spark_jobs.clean import main as spark_main

    _tree(tmp_path, data_dir)
    by_uri = spark_main(["--input", f"file://{tmp_path}/a", "--output", str(tmp_path / "uri")])
    by_path = spark_main(["--input", str(tmp_path / "a"), "--output", str(tmp_path / "path")])
    assert by_uri["num_in"] == by_path["num_in"] == 5 and by_uri["num_kept"] == by_path["num_kept"]


def _unreadable(tmp_path: Path) -> list[str]:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bin.jsonl").write_bytes(b"\x00\x01binary")
    (tmp_path / "in" / "empty.jsonl.gz").write_bytes(b"")
    return [str(tmp_path / "in")]


def test_a_job_that_reads_nothing_fails_with_one_line_on_spark_and_locally(spark, tmp_path):
    from spark_jobs.clean import main as spark_main

    inputs = _unreadable(tmp_path)
    with pytest.raises(NothingRead, match="read nothing from the inputs"):
        spark_main(["--input", *inputs, "--output", str(tmp_path / "spark")])
    with pytest.raises(NothingRead, match="read nothing from the inputs"):
        list(read_inputs(inputs))
    assert not (tmp_path / "spark").exists()
