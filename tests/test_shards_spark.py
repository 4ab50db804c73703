"""The Spark shard writer gives the same shard set as the local path (byte for byte).

Kept small for the suite (~20-40 s, most of it Spark's first Python tasks): one input directory
(records mapped to groups by their domain, so one read), two partitions, one action per phase;
long documents are split (``max_doc_tokens``) and shards cut at equal tokens (``min_shards``),
so the parity covers chunk ids, masks and the global shard layout.
"""
from __future__ import annotations

import json

import pytest
from test_shards_reader import corpus, tokenizer_dir  # noqa: F401  (module fixtures)

from shards.build import build_local
from shards.config import ShardsConfig

SECTION = {"max_doc_tokens": 48, "min_shards": 5, "unit": "tokens", "valid_fraction": 0.2}


@pytest.mark.spark
def test_spark_build_equals_local_build(spark, tmp_path, corpus, tokenizer_dir):  # noqa: F811
    from spark_jobs import build_shards

    params = tmp_path / "params.yaml"
    params.write_text("shards:\n" + "".join(f"  {k}: {v}\n" for k, v in SECTION.items()))
    args = ["--input", str(corpus), "--params", str(params), "--tokenizer", str(tokenizer_dir), "--partitions", "2"]
    assert build_shards.main(args + ["--output", str(tmp_path / "spark")]) == 0
    local = build_local([str(corpus)], str(tmp_path / "local"), ShardsConfig(**SECTION), SECTION,
                        tokenizer_path=str(tokenizer_dir), num_partitions=2)
    made = json.loads((tmp_path / "spark" / "manifest.json").read_text())
    assert [(s["name"], s["sha256"], s["index_sha256"]) for s in made["shards"]] == \
        [(s["name"], s["sha256"], s["index_sha256"]) for s in local["shards"]]
    assert made["tokens_by_group"] == local["tokens_by_group"] and made["repeats"] == local["repeats"]
    assert made["params_hash"] == local["params_hash"] and made["max_item_units"] <= 48
    assert len(made["shards"]) == 5 and {s["partition"] for s in made["shards"]} == {0, 1}
    assert all(made["docs_by_group"][g] > 0 for g in ("general", "domain", "expert"))
    # the validation set (shards/split.py) too
    made_valid = json.loads((tmp_path / "spark" / "valid" / "manifest.json").read_text())
    local_valid = json.loads((tmp_path / "local" / "valid" / "manifest.json").read_text())
    assert made_valid["num_slots"] > 0 and made_valid["groups"] == local_valid["groups"]
    assert [s["sha256"] for s in made_valid["shards"]] == [s["sha256"] for s in local_valid["shards"]]


@pytest.mark.spark
def test_group_numbering_equals_a_window_and_executors_write_rejected(spark, tmp_path):
    """``number_in_groups`` (sort, per-partition counts, offsets) numbers rows as
    ``row_number()`` over a window per group does, with each group spread over many tasks;
    rejected records are written by the executors, one part per non-empty partition."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from etl.core.document import Document
    from etl.io.records import read_parquet_dir
    from spark_jobs.common import documents_to_batch, spark_schema
    from spark_jobs.corpus.shards import number_in_groups, write_rejected

    rows = [(f"d{i}", "abc"[i % 3] if i % 7 else "a", f"{(i * 7919) % 1000:04d}") for i in range(600)]
    frame = spark.createDataFrame(rows, "id string, group string, order_key string").repartition(5)
    numbered, ordered = number_in_groups(frame, "group", ("order_key", "id"))
    window = frame.withColumn("k", F.row_number().over(Window.partitionBy("group").orderBy("order_key", "id")) - 1)
    assert ordered.rdd.getNumPartitions() > 1
    assert sorted(map(tuple, numbered.collect())) == sorted(map(tuple, window.collect()))
    numbered.unpersist()
    ordered.unpersist()

    docs = [Document(id=f"r{i}", text="t", source="s", meta={"src_file": "x", "src_line": i}).drop("too_few_tokens" if i % 2 else "no_group", "shards")
            for i in range(10)]
    batch = documents_to_batch(docs)
    rejected = spark.createDataFrame(batch.to_pandas(), spark_schema(batch.schema)).repartition(3)
    (tmp_path / "rejected").mkdir()
    (tmp_path / "rejected" / "part-00009.parquet").write_bytes(b"stale")
    assert write_rejected(rejected, tmp_path / "rejected") == {"too_few_tokens": 5, "no_group": 5}
    assert sorted(d.id for d in read_parquet_dir(tmp_path / "rejected")) == sorted(d.id for d in docs)
    assert not (tmp_path / "rejected" / "part-00009.parquet").exists()
