"""spark-submit entry point of the dedup stage (:data:`etl.dedup.cluster.DEDUP`).

    spark-submit spark_jobs/dedup.py --input <dir> --output <dir> [--params params.yaml]
                                     [--against <index> [--update-index]] [--partitions N]

The whole-corpus work is ``spark_jobs.corpus.dedup.run_dedup``; same decisions as ``python -m etl.dedup``.
"""
from etl.core.errors import run_main
from etl.dedup.cluster import DEDUP
from spark_jobs.executor import run_stage


def main(argv=None) -> dict:
    """Run the dedup stage on Spark; returns the statistics report."""
    return run_stage(DEDUP, argv)


if __name__ == "__main__":
    run_main(main)
