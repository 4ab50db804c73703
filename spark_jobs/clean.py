"""spark-submit entry point of the cleaning stage.

    spark-submit --master local[2] spark_jobs/clean.py --input data/sample --output runs/clean [--params params.yaml]

Reads raw JSON Lines / Parquet / text / HTML, runs :func:`etl.clean.pipeline.build_clean_pipeline`
inside partitions (the very steps ``python -m etl.clean`` runs), and writes ``kept/``,
``rejected/`` (with ``drop_reason``) and ``stats.json`` atomically.  The master is the
launcher's choice.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # spark-submit from a checkout

from etl.clean.pipeline import STAGE, CleanPipelineFactory, resolve_configs, stats_extra  # noqa: E402
from etl.core.errors import run_main  # noqa: E402
from spark_jobs.common import base_arg_parser, map_documents, print_summary, read_documents_df, stage_session, write_stage_output  # noqa: E402


def parse_args(argv: Sequence[str] | None):
    parser = base_arg_parser(STAGE, "Clean raw Chinese/English text: normalise, strip HTML, filter characters, "
                                    "identify language, apply Gopher/C4/CJK quality rules, mask PII, flatten dialogues.")
    return parser.parse_args(argv)


def extract(spark, args, reader_config):
    """Raw records as a DataFrame (bad records already marked rejected)."""
    return read_documents_df(spark, args.input, reader_config, args.partitions)


def transform(df, factory: CleanPipelineFactory):
    """Run the cleaning steps inside partitions."""
    return map_documents(df, STAGE, factory)


def load(df, args, step_names, extra) -> dict:
    """Write kept/, rejected/ and stats.json atomically."""
    return write_stage_output(df, args.output, step_names, extra)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the cleaning stage on Spark; returns the statistics report."""
    args = parse_args(argv)
    config, tokenizer_config, reader_config = resolve_configs(args.params, args.on_error)
    factory = CleanPipelineFactory(config, tokenizer_config)
    with stage_session(STAGE) as spark:
        df = transform(extract(spark, args, reader_config), factory)
        report = load(df, args, factory().step_names, stats_extra(config, tokenizer_config, "spark"))
    print_summary(STAGE, report)
    return report


if __name__ == "__main__":
    run_main(main)
