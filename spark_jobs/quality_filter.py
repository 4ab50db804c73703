"""spark-submit entry point of the model-based quality filter (:data:`etl.quality_model.stage.QUALITY_MODEL`).

    spark-submit --master local[2] spark_jobs/quality_filter.py --input runs/tfidf --output runs/quality \
        --model models/quality [--threshold 0.7] [--params params.yaml]

The very step ``python -m etl.quality_model`` runs, inside Spark partitions; each executor's
Python worker loads the model once.
"""
from etl.core.errors import run_main
from etl.quality_model.stage import QUALITY_MODEL
from spark_jobs.executor import run_stage


def main(argv=None) -> dict:
    """Run the quality filter on Spark; returns the statistics report."""
    return run_stage(QUALITY_MODEL, argv)


if __name__ == "__main__":
    run_main(main)
