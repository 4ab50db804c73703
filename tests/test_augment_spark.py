"""Spark tier: spark_jobs/augment_corpus.py gives the local runner's records for any partitioning."""
from __future__ import annotations

import json
import os

import pytest
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"

pytestmark = pytest.mark.spark


def test_spark_job_matches_local_runner_across_partitionings(spark, data_dir, tmp_path):
    from augment.__main__ import main as local_main
    from augment.tiny import build_tiny_bert, build_tiny_marian, read_texts
    from etl.io.records import read_parquet_dir
    from spark_jobs.augment_corpus import main as spark_main

    texts = read_texts([data_dir / "general_zh.jsonl", data_dir / "domain_medical.jsonl"], 1000)[:120]
    marian, bert = build_tiny_marian(tmp_path / "marian", texts), build_tiny_bert(tmp_path / "bert", texts)
    route = {"forward": marian, "backward": marian}
    params = {"augment": {
        "groups": {"domain": ["medical"], "expert": ["science", "legal"]},
        "rates": {"domain": {"back_translation": 1, "masked_lm": 1.5, "entity_swap": 1}, "expert": {"masked_lm": 2, "entity_swap": 1}},
        "batch_docs": 3,
        "back_translation": {"routes": {"zh": route, "en": route}, "num_beams": 1, "max_new_tokens": 8},
        "masked_lm": {"models": {"zh": bert, "en": bert}, "original_top_k": 0},  # random weights: no rank check
        "entity_swap": {"knowledge_graph": [str(data_dir / "augment_kg.csv")]},
        "guard": {"back_translation": {"min_similarity": 0.0, "max_similarity": 0.95, "max_length_ratio": 1.2},
                  "masked_lm": {"min_similarity": 0.3, "max_similarity": 0.99}, "entity_swap": {"min_similarity": 0.3, "max_similarity": 1.0}}}}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    src = tmp_path / "in.jsonl"
    rows = [json.loads(line) for name in ("domain_medical.jsonl", "expert.jsonl") for line in open(data_dir / name, encoding="utf-8")][::9][:14]
    with open(src, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({k: row[k] for k in ("id", "domain", "lang")} | {"text": row["text"][:120]}, ensure_ascii=False) + "\n")

    def records(out):
        kept = {(d.id, d.text) for d in read_parquet_dir(out / "kept")}
        rejected = {(d.id, d.drop_reason) for d in read_parquet_dir(out / "rejected")}
        return kept, rejected, json.loads((out / "stats.json").read_text())["augment"]

    local_main(["--input", str(src), "--output", str(tmp_path / "local"), "--params", str(params_file), "--no-progress"])
    expected = records(tmp_path / "local")
    for partitions in (1, 3):
        out = tmp_path / f"spark{partitions}"
        spark_main(["--input", str(src), "--output", str(out), "--params", str(params_file), "--partitions", str(partitions)])
        assert records(out) == expected
    kept, rejected, stats = expected
    assert {i for i, _ in kept} >= {r["id"] for r in rows}  # originals kept
    assert any("~bt0" in i for i, _ in kept | rejected) and any("~mlm" in i for i, _ in kept)
    assert {reason for _, reason in rejected} <= {"too_similar", "too_different", "changed_fact"} and rejected  # the tight length ratio rejects some
    assert sum(m["kept"] for m in stats["by_method"].values()) == len(kept) - len(rows)
