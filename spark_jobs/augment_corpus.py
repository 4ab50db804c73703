"""spark-submit entry point of the augment stage (:data:`augment.pipeline.AUGMENT`).

    spark-submit spark_jobs/augment_corpus.py --input <dir> --output <dir> [--params params.yaml] [--partitions N]

The pipeline (and so every model) is built once per executor process.  Variants depend only
on (seed, document id), so the output is the same for any number of partitions.  (Not named
``augment.py``: spark-submit puts this folder first on ``sys.path``, where a file of that name
would hide the ``augment`` package.)
"""
from etl.core.errors import run_main
from spark_jobs.executor import run_stage


def main(argv=None) -> dict:
    """Run the augment stage on Spark; returns the statistics report."""
    from augment.pipeline import AUGMENT

    return run_stage(AUGMENT, argv)


if __name__ == "__main__":
    run_main(main)
