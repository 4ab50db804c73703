"""Spark tier: spark_jobs/clean.py gives the same kept/rejected sets and statistics as the local runner."""
from __future__ import annotations

import json

import pytest

from etl.clean.pipeline import main as local_main
from etl.io.records import read_parquet_dir

pytestmark = pytest.mark.spark


def _output(root):
    kept = {d.id: (d.text, d.lang, d.meta.get("segments")) for d in read_parquet_dir(root / "kept")}
    rejected = {d.id: d.drop_reason for d in read_parquet_dir(root / "rejected")}
    stats = json.loads((root / "stats.json").read_text())
    for key in ("elapsed_s", "runner"):
        stats.pop(key, None)
    return kept, rejected, stats


def test_spark_matches_local(spark, tmp_path, data_dir):
    from spark_jobs.clean import main as spark_main

    inputs = [str(data_dir / n) for n in ("general_en.jsonl", "html_pages.jsonl", "dialogues.jsonl", "expert.jsonl")]
    spark_report = spark_main(["--input", *inputs, "--output", str(tmp_path / "spark")])
    local_main(["--input", *inputs, "--output", str(tmp_path / "local"), "--no-progress"])
    spark_out, local_out = _output(tmp_path / "spark"), _output(tmp_path / "local")
    assert spark_out[0] == local_out[0]
    assert spark_out[1] == local_out[1]
    assert spark_out[2] == local_out[2]
    assert spark_report["num_in"] == 217 and spark_report["num_rejected"] > 0
