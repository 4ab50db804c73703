"""The pipeline report: summary numbers, plot data and metrics from stage outputs."""
from __future__ import annotations

import json

from etl.core.document import Document
from etl.core.stats import StageStats
from etl.io.records import write_parquet
from spark_jobs.report import achieved_shares, domain_share_series, write_report


def _stage(root, name, docs, extra=None):
    (root / name / "kept").mkdir(parents=True)
    write_parquet([d for d in docs if not d.dropped], root / name / "kept" / "part-0.parquet")
    report = StageStats().add_all(docs).to_dict(["quality"])
    report.update(extra or {})
    (root / name / "stats.json").write_text(json.dumps(report))


def test_report_from_stage_outputs(tmp_path):
    pipe = tmp_path / "pipeline"
    docs = [Document(id=f"d{i}", text="文本" * (i + 1), lang="zh" if i % 2 else "en") for i in range(6)]
    docs[0].drop("too_short", "quality")
    _stage(pipe, "clean", docs)
    _stage(pipe, "dedup", docs[1:], {"dedup": {"clusters": {"num_clusters": 1, "num_docs_in_clusters": 3, "size_histogram": {"3": 1}}}})
    shards = [{"tokens_by_group": {"general": 70, "domain": 20, "expert": 10}}, {"tokens_by_group": {"general": 140, "domain": 40, "expert": 20}}]
    manifest = {"unit": "tokens", "shares": {"general": 0.7, "domain": 0.2, "expert": 0.1}, "shards": shards,
                "tokens_by_group": {"general": 210, "domain": 60, "expert": 30}, "num_tokens": 300, "repeats": {"general": 1.0}}
    (pipe / "shards").mkdir()
    (pipe / "shards" / "manifest.json").write_text(json.dumps(manifest))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 9 - s, "loss_by_domain": {"general": 9 - s}}) + "\n" for s in (1, 2, 3)))

    summary = write_report(pipe, tmp_path / "reports" / "report.md", metrics)
    text = "\n".join(summary)
    assert "clean:      6 in ->      5 kept,     1 rejected (too_short 1)" in text
    assert "dedup clusters: 1 clusters holding 3 documents, largest 3" in text
    assert "general 0.700 (target 0.700)" in text and "loss 8.000 -> 6.000" in text
    out = tmp_path / "reports"
    assert {p.name for p in (out / "figures").iterdir()} == {"lengths.png", "languages.png", "drop_reasons.png", "cluster_sizes.png", "domain_shares.png", "loss.png"}
    assert (out / "plots" / "loss.csv").read_text().splitlines() == ["step,loss,loss_general", "1,8,8", "2,7,7", "3,6,6"]
    assert json.loads((out / "pipeline.json").read_text())["train"] == {"steps": 3, "first_loss": 8, "last_loss": 6}
    assert achieved_shares(manifest) == {"domain": 0.2, "expert": 0.1, "general": 0.7}
    groups, shares = domain_share_series(manifest)
    assert groups == ["domain", "expert", "general"] and shares[-1].tolist() == [0.2, 0.1, 0.7]
