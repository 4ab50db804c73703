"""spark-submit entry point of the shards stage (:data:`shards.stage.SHARDS`).

    spark-submit spark_jobs/build_shards.py --input general=data/sample/general domain=data/sample/domain \\
        expert=data/sample/expert --output out/shards [--params params.yaml] [--tokenizer DIR] [--partitions N]

The work is ``spark_jobs.corpus.shards.run_shards``; same bytes as ``python -m shards build``
with the same ``--partitions``.
"""
from etl.core.errors import run_main
from spark_jobs.executor import run_stage


def main(argv=None) -> int:
    """Build the shard set on Spark; returns the exit code."""
    from shards.stage import SHARDS

    run_stage(SHARDS, argv, prog="spark_jobs/build_shards.py")
    return 0


if __name__ == "__main__":
    run_main(main)
