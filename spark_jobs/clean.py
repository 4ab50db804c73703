"""spark-submit entry point of the cleaning stage (:data:`etl.clean.pipeline.CLEAN`).

    spark-submit --master local[2] spark_jobs/clean.py --input data/sample --output runs/clean [--params params.yaml]

The very steps ``python -m etl.clean`` runs, inside Spark partitions; the master is the
launcher's choice.
"""
from etl.clean.pipeline import CLEAN
from etl.core.errors import run_main
from spark_jobs.executor import run_stage


def main(argv=None) -> dict:
    """Run the cleaning stage on Spark; returns the statistics report."""
    return run_stage(CLEAN, argv)


if __name__ == "__main__":
    run_main(main)
