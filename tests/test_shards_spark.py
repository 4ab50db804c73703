"""The Spark shard writer gives the same shard set as the local path (byte for byte)."""
from __future__ import annotations

import json

import pytest

from shards.build import build_local
from shards.config import ShardsConfig

from test_shards_reader import corpus, tokenizer_dir  # noqa: F401  (module fixtures)


@pytest.mark.spark
def test_spark_build_equals_local_build(spark, tmp_path, corpus, tokenizer_dir):  # noqa: F811
    from spark_jobs import build_shards

    params = tmp_path / "params.yaml"
    params.write_text("shards:\n  samples_per_shard: 12\n  unit: tokens\n")
    inputs = [f"{g}={corpus / g}" for g in ("general", "domain", "expert")]
    assert build_shards.main(["--input", *inputs, "--output", str(tmp_path / "spark"), "--params", str(params),
                              "--tokenizer", str(tokenizer_dir), "--partitions", "3"]) == 0
    local = build_local(inputs, str(tmp_path / "local"), ShardsConfig(samples_per_shard=12), {"samples_per_shard": 12, "unit": "tokens"},
                        tokenizer_path=str(tokenizer_dir), num_partitions=3)
    made = json.loads((tmp_path / "spark" / "manifest.json").read_text())
    assert [(s["name"], s["sha256"]) for s in made["shards"]] == [(s["name"], s["sha256"]) for s in local["shards"]]
    assert made["tokens_by_group"] == local["tokens_by_group"] and made["repeats"] == local["repeats"]
    assert made["params_hash"] == local["params_hash"]
    assert {s["partition"] for s in made["shards"]} == {0, 1, 2}
