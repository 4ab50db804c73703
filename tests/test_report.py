"""The pipeline report: summary numbers, tables, examples, plot data and metrics from stage outputs."""
from __future__ import annotations

import hashlib
import json

import numpy as np

from etl.core.document import Document
from etl.core.stats import StageStats
from etl.io.records import write_parquet
from shards.tario import ShardWriter
from spark_jobs.report import achieved_shares, domain_share_series, shard_tokens, write_report


def _stage(root, name, docs, extra=None, wall_s=None):
    (root / name / "kept").mkdir(parents=True)
    (root / name / "rejected").mkdir(parents=True)
    write_parquet([d for d in docs if not d.dropped], root / name / "kept" / "part-0.parquet")
    write_parquet([d for d in docs if d.dropped], root / name / "rejected" / "part-0.parquet", rejected=True)
    report = StageStats().add_all(docs).to_dict(["quality"])
    report.update(extra or {})
    (root / name / "stats.json").write_text(json.dumps(report))
    if wall_s is not None:
        (root / name / "timing.json").write_text(json.dumps({"wall_s": wall_s}))


def _shard(path, samples):
    writer = ShardWriter(path)
    for key, num_tokens, meta in samples:
        writer.add_sample(key, np.arange(num_tokens, dtype=np.uint16), meta)
    writer.close()


def _pipeline(tmp_path):
    pipe = tmp_path / "pipeline"
    docs = [Document(id=f"d{i}", text="文本" * (i + 1), domain="medical" if i < 3 else "general", lang="zh" if i % 2 else "en") for i in range(6)]
    for i in (0, 2, 4):
        docs[i].drop("too_short", "quality")
    _stage(pipe, "clean", docs, wall_s=1.5)
    near = [Document(id="k1", text="the kept copy of a story"), Document(id="n2", text="a near copy | of a story"), Document(id="n3", text="another near copy")]
    for doc in near[1:]:
        doc.drop("near_duplicate", "dedup_near", duplicate_of="k1", cluster_id="k1")
    clusters = {"num_clusters": 1, "num_docs_in_clusters": 3, "size_histogram": {"3": 1}}
    _stage(pipe, "dedup", near, {"dedup": {"clusters": clusters}}, wall_s=2.25)
    (pipe / "shards").mkdir()
    _shard(pipe / "shards" / "shard-00000-00000.tar", [("a", 70, {"domain": "general", "group": "general", "lang": "en"}),
                                                       ("b", 20, {"domain": "medical", "group": "domain", "lang": "zh"}),
                                                       ("c", 10, {"domain": "legal", "group": "expert", "lang": "zh"})])
    shards = [{"tokens_by_group": {"general": 70, "domain": 20, "expert": 10}}, {"tokens_by_group": {"general": 140, "domain": 40, "expert": 20}}]
    manifest = {"unit": "tokens", "shares": {"general": 0.7, "domain": 0.2, "expert": 0.1}, "shards": shards,
                "tokens_by_group": {"general": 210, "domain": 60, "expert": 30}, "num_tokens": 300, "repeats": {"general": 1.0}}
    (pipe / "shards" / "manifest.json").write_text(json.dumps(manifest))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 9 - s, "loss_by_domain": {"general": 9 - s}, "step_time_s": 0.5}) + "\n"
                               for s in (1, 2, 3, 2, 3)))  # a resume repeats steps 2 and 3: the later rows win
    params = tmp_path / "params.yaml"
    params.write_text("clean:\n  on_error: skip\nshards:\n  seed: 3\n")
    return pipe, manifest, metrics, params


def test_report_from_stage_outputs(tmp_path):
    pipe, manifest, metrics, params = _pipeline(tmp_path)
    summary = write_report(pipe, tmp_path / "reports" / "report.md", metrics, params)
    text = "\n".join(summary)
    assert "clean:      6 in ->      3 kept,     3 rejected (too_short 3)" in text
    assert "dedup clusters: 1 clusters holding 3 documents, largest 3" in text
    assert "general 0.700 (target 0.700)" in text and "loss 8.000 -> 6.000" in text
    out = tmp_path / "reports"
    assert {p.name for p in (out / "figures").iterdir()} == {"lengths.png", "languages.png", "drop_reasons.png", "cluster_sizes.png", "domain_shares.png", "loss.png"}
    assert (out / "plots" / "loss.csv").read_text().splitlines() == ["step,loss,loss_domain,loss_expert,loss_general", "1,8,,,8", "2,7,,,7", "3,6,,,6"]
    assert (out / "plots" / "domain_tokens.csv").read_text().splitlines() == ["domain,tokens", "general,70", "medical,20", "legal,10"]
    assert json.loads((out / "pipeline.json").read_text()) == {
        "shards": {"shards": 2, "tokens": 300, "share_domain": 0.2, "share_expert": 0.1, "share_general": 0.7},
        "train": {"steps": 3, "final_loss": 6}}
    assert achieved_shares(manifest) == {"domain": 0.2, "expert": 0.1, "general": 0.7}
    groups, shares = domain_share_series(manifest)
    assert groups == ["domain", "expert", "general"] and shares[-1].tolist() == [0.2, 0.1, 0.7]


def test_report_sections(tmp_path):
    pipe, _, metrics, params = _pipeline(tmp_path)
    write_report(pipe, tmp_path / "reports" / "report.md", metrics, params)
    md = (tmp_path / "reports" / "report.md").read_text()
    assert "| medical | 3 | 1 | 2 |" in md and "| general | 3 | 2 | 1 |" in md  # clean: in, kept, dropped per domain
    assert "| group | tokens | share |\n|---|---:|---:|\n| general | 70 | 0.700 |\n| domain | 20 | 0.200 |\n| expert | 10 | 0.100 |" in md
    assert "| lang | tokens | share |\n|---|---:|---:|\n| en | 70 | 0.700 |\n| zh | 30 | 0.300 |" in md
    assert "- `too_short` (3):\n  - `d0`: 文本\n  - `d2`: 文本文本文本\n\n" in md  # two examples per reason, file order
    assert "- cluster `k1` (3 documents): kept `k1`: the kept copy of a story\n  - dropped `n2`: a near copy \\| of a story\n  - dropped `n3`: another near copy" in md
    assert "| clean | 1.5 |" in md and "| dedup | 2.2 |" in md and "| train (steps) | 1.5 |" in md
    assert "Revision `" in md and "| shards | `" in md and "  seed: 3" in md


def test_shard_tokens_counts_each_sample(tmp_path):
    _shard(tmp_path / "s0.tar", [("a", 5, {"domain": "x", "group": "g", "lang": "en"}), ("b", 7, {"domain": "y", "group": "g"})])
    _shard(tmp_path / "s1.tar", [("c", 3, {"domain": "x", "group": "h", "lang": "zh"})])
    assert shard_tokens(tmp_path) == {"domain": {"x": 8, "y": 7}, "group": {"g": 12, "h": 3}, "lang": {"en": 5, "und": 7, "zh": 3}}


def test_tracked_report_outputs_are_byte_identical_across_runs(tmp_path):
    """What DVC tracks of the report (figures, plot data, summary, metrics) is byte-reproducible."""
    pipe, _, metrics, params = _pipeline(tmp_path)
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        write_report(pipe, out / "report.md", metrics, params)
        tracked = [p for p in sorted(out.rglob("*")) if p.is_file() and p.name != "report.md"]
        digests.append({str(p.relative_to(out)): hashlib.md5(p.read_bytes()).hexdigest() for p in tracked})
    assert len(digests[0]) == 11 and digests[0] == digests[1]


def test_report_shows_validation_curves_and_the_evaluation_table(tmp_path):
    """The report's evaluation section: validation perplexity per domain from the trainer's
    metrics rows (a resumed step counted once) and the table of trainer.evaluate's eval.json."""
    from spark_jobs.report import evaluation_section

    run = tmp_path / "train_run.jsonl"
    rows = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0, "val_loss": 4.5, "val_ppl": 90.0, "val_ppl_by_domain": {"general": 80.0, "expert": 120.0}},
            {"step": 4, "loss": 3.0, "val_loss": 3.9, "val_ppl": 49.4, "val_ppl_by_domain": {"general": 45.0, "expert": 60.0}},
            {"step": 4, "loss": 3.0, "val_loss": 3.8, "val_ppl": 44.7, "val_ppl_by_domain": {"general": 40.0, "expert": 55.0}}]
    run.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from trainer.evaluate import validation_curves
    curves = validation_curves(run)
    assert curves["steps"] == [2, 4] and curves["by_domain"]["expert"] == [120.0, 55.0]  # the resumed step 4 wins
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    result = {"checks": [{"figure": "entity_recall", "label": "entity recall", "value": 0.5, "op": ">=", "threshold": 0.92, "pass": False}],
              "model": {"perplexity": {"general": 40.0}, "tokens": {"general": 1234}}}
    (eval_dir / "eval.json").write_text(json.dumps(result))
    md = "\n".join(evaluation_section(tmp_path, run, eval_dir))
    assert (tmp_path / "eval" / "validation.png").is_file() and "![validation](eval/validation.png)" in md
    assert "| entity recall | 50.0% | >= 92.0% | - | **no** |" in md
    assert "| general | 40.00 | - | - | 1,234 |" in md
    assert evaluation_section(tmp_path / "none", None, None) == []


def test_train_summary_shows_the_trend_not_only_two_single_steps():
    from spark_jobs.report import summary_lines

    metrics = [{"step": i, "loss": loss, **({"val_loss": v} if v else {})}
               for i, (loss, v) in enumerate([(9.0, None), (9.2, 8.4), (8.0, None), (8.1, None), (9.3, 8.0)], 1)]
    (line,) = summary_lines({}, None, None, metrics)
    assert "loss 9.000 -> 9.300" in line and "first/last 1: 9.000 -> 9.300" in line and "validation loss 8.400 -> 8.000" in line
