"""Spark entry point of the augment stage.

    spark-submit spark_jobs/augment.py --input <dir> --output <dir> [--params params.yaml]

Runs back-translation, masked-LM substitution and entity swap (``augment.methods``) inside
partitions with the shared adapter; the pipeline, and so every model, is built once per
executor process.  Writes ``kept/`` (originals and kept variants), ``rejected/`` (rejected
variants with reasons and lineage, and rejected input records) and ``stats.json`` with the
per-method counts under ``augment``.  Variants depend only on (seed, document id), so the
output is the same for any number of partitions.
"""
from __future__ import annotations

import functools
import os
import sys

# Run as a script, this file's folder comes first on sys.path and this file (augment.py) would
# shadow the `augment` package: put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.getcwd()) == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

from augment.__main__ import make_config  # noqa: E402
from augment.config import AugmentConfig
from augment.pipeline import AugmentStats, build_pipeline
from etl.core.errors import run_main  # noqa: E402
from etl.core.config import config_to_dict, load_params, load_section, params_hash
from etl.core.document import Document
from spark_jobs.common import RECORD_SCHEMA, base_arg_parser, map_documents, print_summary, read_documents_df, stage_session, write_stage_output

STAGE = "augment"


def parse_args(argv: list[str] | None):
    parser = base_arg_parser(STAGE, "Augment documents: back-translation, masked-LM substitution, entity swap (originals kept).")
    return parser.parse_args(argv)


def extract(spark, args, params: dict):
    """Input records as a DataFrame (a previous stage's kept/ or raw files)."""
    reader = load_section(params, "read")
    return read_documents_df(spark, args.input, reader, args.partitions)


def _pipeline(config: AugmentConfig):
    return build_pipeline(config)


def transform(df, config: AugmentConfig):
    """Originals plus variants; the pipeline (and its models) is cached per executor process."""
    key = f"augment:{params_hash(config_to_dict(config))}"
    return map_documents(df, key, functools.partial(_pipeline, config), batch_rows=config.batch_docs)


def _stats_partition(rows):
    stats = AugmentStats()
    for row in rows:
        stats.add(Document.from_row(row.asDict()))
    yield stats


def augment_stats(df) -> dict:
    """Per-method counts over the output records (one AugmentStats per partition, merged)."""
    parts = df.select(*RECORD_SCHEMA.names).rdd.mapPartitions(_stats_partition)
    return parts.fold(AugmentStats(), lambda a, b: AugmentStats().merge(a).merge(b)).to_dict()


def load(df, args, config: AugmentConfig) -> dict:
    from pyspark import StorageLevel

    df = df.persist(StorageLevel.MEMORY_AND_DISK)  # the models run once, for the stats and the write
    try:
        extra = dict(augment_stats(df), params_hash=params_hash(config_to_dict(config)))
        return write_stage_output(df, args.output, build_pipeline(config).step_names, extra_stats=extra)
    finally:
        df.unpersist()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    params = load_params(args.params)
    config = make_config(params, args.on_error)
    with stage_session(STAGE) as spark:
        report = load(transform(extract(spark, args, params), config), args, config)
    print_summary(STAGE, report)
    return report


if __name__ == "__main__":
    run_main(main)
