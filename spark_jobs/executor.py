"""The Spark executor: runs any :class:`etl.core.stage.Stage` with the shared adapter.

``spark_jobs/<stage>.py`` is ``run_main(lambda argv: run_stage(STAGE, argv))``.  The flags,
the config loading, ``stats.json``'s common fields and the summary line are the local
executor's (:mod:`etl.core.stage`); what differs is where the work runs:

* a stage with a per-document pipeline reads its inputs (:func:`common.read_documents_df`)
  and runs the pipeline inside partitions (:func:`common.map_documents`);
* a stage with a whole-corpus operation calls it (``Stage.spark_corpus``, a
  ``module:function`` in ``spark_jobs/corpus/``) as ``function(spark, run)``; it reads its
  own inputs (it may derive columns as it reads) and returns a :class:`SparkResult`;
* the result is written by :func:`common.write_stage_output`: each task writes its own
  ``kept/`` and ``rejected/`` part files and hands back a summary (counts, the stage's extra
  counter), so the records are computed once and never cached for the write; ``stats.json``
  is written last.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl.core.config import config_to_dict, params_hash
from etl.core.stage import Stage, StageRun, base_stats, resolve_run, stage_parser, stage_summary
from etl.core.stats import STEP_WALL_KEY, write_json
from etl.io.fs import local_file
from spark_jobs.common import BROADCAST_MAX_ROWS, job_step, map_documents, read_documents_df, session_conf, stage_session, worker_modules, write_stage_output

logger = logging.getLogger(__name__)

EPILOG = ("Spark settings read by jinglian (spark-submit --conf KEY=VALUE):\n"
          f"  spark.jinglian.broadcastMaxRows  (default {BROADCAST_MAX_ROWS:,}) a counted join side with at most this\n"
          "                                   many rows (repeated ids, dedup marks, edge endpoints) is broadcast\n"
          "                                   instead of shuffling the documents; TF-IDF: a vocabulary of at most this\n"
          "                                   many tokens is broadcast to the Python workers instead of joined\n"
          "  spark.jinglian.localDedupMaxDocs (default 250,000) dedup: a corpus of at most this many live documents\n"
          "                                   (index rows included) is decided by one task with the local runner's rules\n"
          "                                   after the parallel read; 0: always the distributed path\n"
          "  spark.jinglian.localGraphMaxEdges (default 2,000,000) dedup: a verified edge set with at most this many\n"
          "                                   edges is clustered by one task's union-find, not large-star/small-star rounds\n"
          "  spark.jinglian.bucketSliceKeys   (default 4,000,000) dedup: keys of one LSH band a bucketing task holds;\n"
          "                                   larger corpora cut each band into key slices\n"
          "A stage may set Spark settings of its own for its run (dedup: spark.sql.adaptive.enabled=false);\n"
          "a --conf of yours for the same key wins.")


@dataclass
class SparkResult:
    """What a Spark whole-corpus operation hands back to the executor to write."""

    records: Any = None
    """All output records (``RECORD_SCHEMA``), or None when ``split`` is given."""
    split: tuple[Any, Any] | None = None
    """``(kept, rejected)`` frames, written without caching (``common.write_stage_output``)."""
    stats: dict[str, Any] = field(default_factory=dict)
    """The operation's ``stats.json`` additions."""
    after_write: Callable[[dict[str, Any]], None] | None = None
    """Called with the report once the outputs are written (e.g. appending to a dedup index)."""


def _spark_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partitions", type=int, default=None, metavar="N",
                        help="number of Spark partitions for the per-document work "
                             "(default: two per core, or one per 64 MB of input if that is more)")


def parse_stage_args(stage: Stage, argv: Sequence[str] | None, prog: str | None = None) -> argparse.Namespace:
    """The Spark command line of ``stage``: the local executor's flags with --partitions for --workers."""
    return stage_parser(stage, prog or f"spark_jobs/{stage.name}.py", _spark_flags, epilog=EPILOG).parse_args(argv)


def map_stage(spark, run: StageRun) -> SparkResult:
    """The per-document pipeline over the inputs, inside partitions."""
    stage = run.stage
    df = read_documents_df(spark, run.args.input, run.reader, run.args.partitions)
    key = f"{stage.name}:{params_hash({k: config_to_dict(v) for k, v in sorted(run.configs.items())})}"
    batch_rows = stage.batch_docs(run.configs) if stage.batch_docs else 512
    return SparkResult(records=map_documents(df, key, stage.pipeline(run.configs), batch_rows=batch_rows))


def execute(spark, run: StageRun) -> dict[str, Any]:
    """Run ``run.stage`` on ``spark``; returns the statistics report.

    Each step's Spark jobs are described as ``<stage>: <step>`` (:func:`common.job_step`) and
    its wall time goes to the report's ``step_wall_s`` (``timing.json``, beside ``stats.json``).
    The records are computed once, as they are written: the stage's extra counter
    (``Stage.counter``) is counted by the write tasks, so nothing is cached for it.  The
    stage's own Spark settings (``Stage.spark_conf``) hold for the whole run, unless the
    session sets them (:func:`common.session_conf`)."""
    with session_conf(spark, run.stage.spark_conf):
        return _execute(spark, run)


def _execute(spark, run: StageRun) -> dict[str, Any]:
    stage, wall_s = run.stage, {}
    if stage.write is not None:  # the operation writes the stage's own outputs (the shard set)
        with job_step(spark, stage.name, "build", wall_s):
            report = stage.spark_operation()(spark, run)
        return {**report, STEP_WALL_KEY: wall_s}
    with job_step(spark, stage.name, stage.spark_corpus.rpartition(":")[2] if stage.spark_corpus else "read", wall_s):
        result = stage.spark_operation()(spark, run) if stage.spark_corpus else map_stage(spark, run)
    extra = {**base_stats(run), **result.stats}
    with job_step(spark, stage.name, "pipeline and write" if stage.pipeline is not None else "write", wall_s):
        report = write_stage_output(result.records, run.args.output, stage.names_of_steps(run.configs),
                                    extra_stats={**extra, STEP_WALL_KEY: wall_s}, split=result.split, counter=stage.counter)
    if result.after_write is not None:
        with job_step(spark, stage.name, "after write", wall_s):
            result.after_write(report)
    return report


def record_step_times(output: str, wall_s: dict[str, float]) -> None:
    """Put the final per-step wall times into ``<output>/timing.json`` (local outputs): the
    report was written while its last step was still running."""
    directory = local_file(output)
    timing = Path(directory or "", "timing.json")
    if directory is None or not wall_s or not timing.is_file():
        return
    data = json.loads(timing.read_text(encoding="utf-8"))
    data[STEP_WALL_KEY] = wall_s
    write_json(timing, data)


def run_stage(stage: Stage, argv: Sequence[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    """``spark-submit spark_jobs/<stage>.py``: parse, load the configs, run, print the summary line."""
    args = parse_stage_args(stage, argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run = resolve_run(stage, args, "spark")
    with stage_session(stage.name, worker_modules(stage)) as spark:
        report = execute(spark, run)
    record_step_times(run.args.output, report.get(STEP_WALL_KEY, {}))
    print(stage_summary(stage, report), flush=True)
    return report
