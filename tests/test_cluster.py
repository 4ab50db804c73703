"""Cluster tier: a standalone Spark master and two workers on 127.0.0.1 whose Python has no
jinglian; clean and dedup run from the packed environment (``scripts/package.sh``), started
the way a new user would (relative paths, from the user's own directory), and keep and
reject exactly what the local runner does.

Executors run in their own working directories under the workers' ``work/`` folders, so a
relative path that reached them unresolved would be unreadable there.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from etl.io.records import read_parquet_dir
from spark_jobs.standalone import bare_python, cluster_env, standalone_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ENV_TAR = ROOT / "dist" / "jinglian-env.tar.gz"
SLICES = ("general_en.jsonl", "general_zh.jsonl", "dialogues.jsonl", "html_pages.jsonl", "domain_medical.jsonl")


@pytest.fixture(scope="module")
def packed_env():
    """dist/jinglian-env.tar.gz, built by scripts/package.sh (which rebuilds only when the code changed)."""
    proc = subprocess.run(["bash", "scripts/package.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ENV_TAR


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``spark://127.0.0.1:PORT`` of a master and two one-core workers (spark_jobs/standalone.py);
    every process is stopped at the end."""
    tmp = tmp_path_factory.mktemp("standalone")
    bare = subprocess.run([bare_python(), "-c", "import etl"], env=cluster_env(tmp / "logs"), cwd=tmp, capture_output=True, text=True)
    assert bare.returncode != 0, "the workers' Python must not have jinglian"
    with standalone_cluster(tmp, num_workers=2, cores_per_worker=1, worker_memory="2g") as master:
        yield master


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory, data_dir):
    """A new user's directory: data/sample with a few slices and one unreadable file, params.yaml."""
    home = tmp_path_factory.mktemp("user")
    sample = home / "data" / "sample"
    sample.mkdir(parents=True)
    for name in SLICES:
        lines = (data_dir / name).read_text(encoding="utf-8").splitlines(True)
        (sample / name).write_text("".join(lines[:40]), encoding="utf-8")
    (sample / "broken.jsonl").write_bytes(b"\x00\x01 not text")
    return home


def _params(home: Path, spark: dict) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["spark"] = spark
    path = home / f"params-{abs(hash(json.dumps(spark, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _sets(out: Path) -> tuple[dict[str, str], dict[str, str]]:
    kept = {d.id: d.text for d in read_parquet_dir(out / "kept")}
    rejected = {d.id: d.drop_reason for d in read_parquet_dir(out / "rejected")}
    return kept, rejected


def test_clean_and_dedup_on_a_two_worker_cluster_equal_local_mode(packed_env, cluster, user_dir):
    params = _params(user_dir, {"master": cluster, "archives": [f"{packed_env}#env"],
                                "conf": {"spark.pyspark.python": "./env/bin/python", "spark.executor.memory": "1g",
                                         "spark.executor.cores": "1", "spark.cores.max": "2"}})
    submit = [sys.executable, "-m", "spark_jobs.submit"]
    clean = _run([*submit, str(ROOT / "spark_jobs" / "clean.py"), "--input", "data/sample", "--output", "cluster/clean", "--params", str(params)], user_dir)
    assert "INFO SparkContext: Running Spark" not in clean.stdout + clean.stderr  # no JVM start-up INFO (spark_jobs/log4j2.properties)
    _run([*submit, str(ROOT / "spark_jobs" / "dedup.py"), "--input", "cluster/clean", "--output", "cluster/dedup", "--params", str(params)], user_dir)
    _run([sys.executable, "-m", "etl.clean", "--input", "data/sample", "--output", "local/clean", "--params", str(params), "--no-progress"], user_dir)
    _run([sys.executable, "-m", "etl.dedup", "--input", "local/clean", "--output", "local/dedup", "--params", str(params), "--no-progress"], user_dir)
    for stage in ("clean", "dedup"):
        cluster_sets, local_sets = _sets(user_dir / "cluster" / stage), _sets(user_dir / "local" / stage)
        assert cluster_sets[0] == local_sets[0], f"{stage}: kept differ"
        assert cluster_sets[1] == local_sets[1], f"{stage}: rejected differ"
    kept, rejected = _sets(user_dir / "cluster" / "clean")
    assert len(kept) > 100 and list(rejected.values()).count("unreadable_file") == 1  # only the broken file
    timing = json.loads((user_dir / "cluster" / "clean" / "timing.json").read_text())
    assert set(timing["step_wall_s"]) == {"read", "pipeline and write"}
    stats = json.loads((user_dir / "cluster" / "clean" / "stats.json").read_text())
    assert stats["runner"] == "spark" and "step_wall_s" not in stats
