"""DVC tier: the repository's dvc.yaml end to end on a tiny sample, in a throw-away copy.

Checks that ``dvc repro`` runs every stage, that a changed param reruns only the stages
downstream of it, and that ``dvc push`` / ``dvc pull`` restore outputs from the local remote.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = [pytest.mark.dvc, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
CODE = ("etl", "augment", "shards", "trainer", "spark_jobs", "scripts")
STAGES = ["stream", "clean", "dedup", "tfidf", "augment", "tokenizer", "shards", "train", "report"]


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _tiny_sample(data_dir: Path, target: Path) -> None:
    picks = {"general/general.jsonl": [("general_en.jsonl", 12), ("general_zh.jsonl", 20)],
             "domain/medical.jsonl": [("domain_medical.jsonl", 16)],
             "expert/expert.jsonl": [("expert.jsonl", 12)],
             "dialogues/dialogues.jsonl": [("dialogues.jsonl", 4)]}
    for rel, sources in picks.items():
        lines = []
        for name, n in sources:
            lines += (data_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_text("".join(lines), encoding="utf-8")


def _ran(output: str) -> list[str]:
    return [s for s in STAGES if re.search(rf"Running stage '{s}'", output)]


@pytest.fixture(scope="module")
def project(tmp_path_factory, data_dir):
    """A git + DVC copy of the repository's pipeline with a tiny sample and small demo sizes."""
    proj = tmp_path_factory.mktemp("dvcproj")
    for name in CODE:
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["pipeline"].update(tokenizer_vocab_size=600, train_steps=3, spark_submit="spark-submit --master local[1]")
    params["shards"].update(min_shards=4, max_doc_tokens=256)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    _tiny_sample(data_dir, proj / "data" / "sample")
    shutil.copytree(ROOT / "data" / "augment", proj / "data" / "augment")
    kafka = (ROOT / "data" / "kafka_sample" / "messages.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:16]
    (proj / "data" / "kafka_sample").mkdir(parents=True)
    (proj / "data" / "kafka_sample" / "messages.jsonl").write_text("".join(kafka), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(proj), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    _run(["git", "init", "-q"], proj, env)
    _run([sys.executable, "-m", "dvc", "init", "-q"], proj, env)
    shutil.copy(ROOT / ".dvc" / "config", proj / ".dvc" / "config")
    _run(["git", "add", "-A"], proj, env)
    _run(["git", "commit", "-qm", "tiny pipeline"], proj, env)
    first = _run([sys.executable, "-m", "dvc", "repro"], proj, env)
    return proj, env, first.stdout + first.stderr


def test_repro_runs_every_stage_and_writes_the_report(project):
    proj, env, output = project
    assert _ran(output) == STAGES
    clean = json.loads((proj / "data/pipeline/clean/stats.json").read_text())
    landed = sum(pq.read_metadata(p).num_rows for p in (proj / "data/stream/kept").glob("*.parquet"))
    dead = [json.loads(line) for p in (proj / "data/stream/dead-letter").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(dead) == 1 and dead[0]["reason"] == "invalid_json"  # the one malformed line in the Kafka slice
    assert landed == 15 and clean["num_in"] == 12 + 20 + 16 + 12 + 4 + landed  # the sample plus the landed windows
    metrics = json.loads((proj / "reports/pipeline.json").read_text())
    assert set(metrics) >= {"clean", "dedup", "tfidf", "augment", "shards", "train"}
    assert metrics["train"]["steps"] == 3
    assert abs(sum(metrics["shards"]["shares"].values()) - 1) < 1e-6
    assert (proj / "reports/figures/loss.png").is_file() and (proj / "reports/plots/loss.csv").is_file()
    status = _run([sys.executable, "-m", "dvc", "status"], proj, env).stdout
    assert "up to date" in status


def test_changed_param_reruns_only_downstream_stages(project):
    proj, env, _ = project
    params = yaml.safe_load((proj / "params.yaml").read_text(encoding="utf-8"))
    params["shards"]["seed"] = 7
    (proj / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    out = _run([sys.executable, "-m", "dvc", "repro"], proj, env)
    assert _ran(out.stdout + out.stderr) == ["shards", "train", "report"]


def test_push_and_pull_restore_outputs_from_the_local_remote(project):
    proj, env, _ = project
    _run([sys.executable, "-m", "dvc", "push"], proj, env)
    assert any((proj / ".dvc-storage").rglob("*"))
    kept = proj / "data/pipeline/clean/kept"
    before = sorted(p.name for p in kept.iterdir())
    shutil.rmtree(kept)
    shutil.rmtree(proj / ".dvc" / "cache")
    _run([sys.executable, "-m", "dvc", "pull"], proj, env)
    assert sorted(p.name for p in kept.iterdir()) == before
    assert "up to date" in _run([sys.executable, "-m", "dvc", "status"], proj, env).stdout
