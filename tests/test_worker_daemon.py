"""jinglian's Python worker daemon (spark_jobs/worker_daemon.py): Spark forks a stage's Python
workers from a process that loaded pyspark's worker, pyarrow and the stage's modules (and ran
their ``warm_worker``) once, instead of each worker loading them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from spark_jobs.worker_daemon import BASE_MODULES, PRELOAD_ENV, preload, requested_modules


def test_the_daemon_loads_the_base_modules_then_the_stages_each_once():
    env = {PRELOAD_ENV: "spark_jobs.corpus.dedup, numpy,,etl.clean.pipeline"}
    assert requested_modules(env) == [*BASE_MODULES, "spark_jobs.corpus.dedup", "etl.clean.pipeline"]
    assert requested_modules({}) == list(BASE_MODULES)


def test_preload_runs_warm_worker_and_reports_a_module_it_cannot_load(tmp_path, monkeypatch, capsys):
    (tmp_path / "jl_warm_probe.py").write_text("CALLS = []\n\ndef warm_worker():\n    CALLS.append(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert preload(["jl_warm_probe", "jl_no_such_module"]) == ["jl_no_such_module"]
    assert sys.modules["jl_warm_probe"].CALLS == [1]
    assert "could not preload jl_no_such_module" in capsys.readouterr().err


def test_a_stage_names_the_modules_its_tasks_import():
    from etl.clean.pipeline import CLEAN
    from etl.dedup.cluster import DEDUP
    from spark_jobs.common import worker_modules

    assert worker_modules(DEDUP) == ["spark_jobs.corpus.dedup"]
    assert worker_modules(CLEAN) == ["etl.clean.pipeline"]


#: A job that reports, from inside each task, the worker's parent, the frozen-object count
#: gc.freeze left in it, the preload list it was given and whether dedup's tables exist.
PROBE_JOB = """
import json, os, sys
import pyarrow as pa

def probe(batches):
    import gc
    import psutil

    for _ in batches:
        pass
    tables = sys.modules.get("etl.dedup.minhash_jit")
    yield pa.RecordBatch.from_pydict({"parent": [" ".join(psutil.Process(os.getppid()).cmdline())], "frozen": [gc.get_freeze_count()],
                                      "preload": [os.environ.get("JINGLIAN_WORKER_PRELOAD", "")],
                                      "tables": [tables is not None and tables.nfkc_tables.cache_info().currsize == 1]})

PROBE_TYPE = "parent string, frozen long, preload string, tables boolean"
"""


@pytest.mark.spark
def test_the_test_sessions_workers_are_forked_from_the_daemon(spark):
    """The spark tier's session sets the daemon as get_spark does for a local master, so every
    Spark test runs its Python tasks in workers forked after the preload."""
    namespace: dict = {"__name__": "__main__"}
    exec(PROBE_JOB, namespace)  # noqa: S102 - the probe, pickled by value like a job's own function
    rows = spark.range(4, numPartitions=2).mapInArrow(namespace["probe"], namespace["PROBE_TYPE"]).collect()
    assert rows and all("spark_jobs.worker_daemon" in r["parent"] and r["frozen"] > 0 for r in rows)


@pytest.mark.spark
def test_a_local_session_forks_workers_that_have_the_stages_modules_and_tables(tmp_path):
    """get_spark in a fresh process with a local master: the daemon is jinglian's, it got the
    stage's modules through spark.executorEnv, and the dedup tables were built before the fork
    (the task itself imports nothing of the dedup stage)."""
    script = tmp_path / "probe_job.py"
    script.write_text(PROBE_JOB + """
from spark_jobs.common import get_spark
spark = get_spark("probe", ["spark_jobs.corpus.dedup"])
rows = spark.range(2, numPartitions=2).mapInArrow(probe, PROBE_TYPE).collect()
print("ROWS", json.dumps([r.asDict() for r in rows]))
""")
    env = dict(os.environ, PYSPARK_SUBMIT_ARGS="--master local[2] pyspark-shell", JINGLIAN_WORKER_DAEMON_LOG="1")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.split("ROWS ", 1)[1])
    assert len(rows) == 2
    for r in rows:
        assert "spark_jobs.worker_daemon" in r["parent"] and r["frozen"] > 0
        assert r["preload"] == "spark_jobs.corpus.dedup" and r["tables"], r
    assert "jinglian worker daemon" in out.stderr and "spark_jobs.corpus.dedup" in out.stderr


def test_the_stages_warm_worker_hooks_load_what_their_tasks_would():
    """What the daemon runs before it forks: clean's loads language identification's model and
    the English tokenizer; TF-IDF's the Chinese segmenter; dedup's its Unicode tables."""
    from etl.clean import langid, tokenize
    from etl.clean.pipeline import warm_worker as warm_clean
    from etl.dedup import minhash_jit
    from spark_jobs.corpus.dedup import warm_worker as warm_dedup
    from spark_jobs.corpus.tfidf import warm_worker as warm_tfidf

    for cached in (langid._identifier, tokenize._latin, tokenize._rjieba, minhash_jit.nfkc_tables):
        cached.cache_clear()
    warm_clean()
    assert langid._identifier.cache_info().currsize == 1 and tokenize._latin.cache_info().currsize == 1
    warm_tfidf()
    assert tokenize._rjieba.cache_info().currsize == 1
    warm_dedup()
    assert minhash_jit.nfkc_tables.cache_info().currsize == 1
