"""The stage contract (etl/core/stage.py): one declaration per stage, the same flags and config
loading for both executors."""
from __future__ import annotations

import json

import pytest
import yaml

from augment.pipeline import AUGMENT
from etl.clean.pipeline import CLEAN
from etl.core.errors import JinglianError
from etl.core.stage import resolve_dotted, resolve_run, summary_line
from etl.dedup.cluster import DEDUP
from etl.runner import parse_stage_args, run_stage
from etl.tfidf import TFIDF
from shards.stage import SHARDS

STAGES = [CLEAN, DEDUP, TFIDF, AUGMENT, SHARDS]


def _params(tmp_path, data: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_reads_the_read_section(stage, tmp_path):
    """The ``read:`` section reaches every stage (the shards stage once built ``ReaderConfig()``)."""
    (tmp_path / "in.jsonl").write_text("{}\n", encoding="utf-8")
    params = _params(tmp_path, {"read": {"max_record_bytes": 12345}})
    extra = ["--tokenizer", "some-tokenizer"] if stage is SHARDS else []
    args = parse_stage_args(stage, ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--params", params, *extra])
    run = resolve_run(stage, args, "local")
    assert run.reader.max_record_bytes == 12345
    assert run.config is run.configs[stage.sections[0]]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_spark_operations_are_named_not_imported(stage):
    """A whole-corpus stage names its Spark twin by a ``module:function`` under spark_jobs/."""
    if stage.corpus is None and stage.write is None:
        assert stage.spark_corpus is None and stage.pipeline is not None
        return
    module, _, function = stage.spark_corpus.partition(":")
    assert module.startswith("spark_jobs.corpus.") and function


def test_on_error_flag_overrides_the_param(tmp_path):
    (tmp_path / "in.jsonl").write_text("{}\n", encoding="utf-8")
    args = parse_stage_args(CLEAN, ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o"), "--on-error", "raise"])
    assert resolve_run(CLEAN, args, "local").config.on_error == "raise"
    with pytest.raises(SystemExit):  # dedup has no per-record policy, so no flag
        parse_stage_args(DEDUP, ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o"), "--on-error", "raise"])


def test_shards_needs_a_tokenizer_before_any_work(tmp_path):
    (tmp_path / "in.jsonl").write_text("{}\n", encoding="utf-8")
    args = parse_stage_args(SHARDS, ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o")])
    with pytest.raises(JinglianError, match="no tokenizer given"):
        resolve_run(SHARDS, args, "local")


def test_stage_flags_are_checked(tmp_path):
    (tmp_path / "in.jsonl").write_text("{}\n", encoding="utf-8")
    args = parse_stage_args(DEDUP, ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o"), "--update-index"])
    with pytest.raises(JinglianError, match="--update-index needs --against"):
        resolve_run(DEDUP, args, "local")


def test_local_executor_runs_a_stage_and_prints_one_summary(tmp_path, capsys):
    rows = [{"id": "d0", "text": "common words common words"}, {"id": "d1", "text": "common words rare"},
            {"id": "d2", "text": "unique alpha beta gamma"}, {"id": "d0", "text": "a repeated id"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    params = _params(tmp_path, {"tfidf": {"min_percentile": 50.0}})  # 3 scored: the cut is the middle score, d0 is below it
    report = run_stage(TFIDF, ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--params", params, "--no-progress"])
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["stage"] == "tfidf" and stats["runner"] == "local" and stats["num_in"] == 4 and stats["num_kept"] == 2
    assert stats["drop_reasons"] == {"duplicate_id": 1, "low_tfidf": 1}
    assert capsys.readouterr().out.strip() == summary_line("tfidf", report)


def test_resolve_dotted():
    assert resolve_dotted("etl.core.stage:summary_line") is summary_line
    with pytest.raises(ValueError):
        resolve_dotted("etl.core.stage")
