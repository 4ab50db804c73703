"""spark-submit entry point of the augment stage (:data:`augment.pipeline.AUGMENT`).

    spark-submit spark_jobs/augment.py --input <dir> --output <dir> [--params params.yaml] [--partitions N]

The pipeline (and so every model) is built once per executor process.  Variants depend only
on (seed, document id), so the output is the same for any number of partitions.  The
``augment`` package is imported inside :func:`main`, after the check that this file does not
shadow it (``spark_jobs.executor.check_import_path``).
"""
from etl.core.errors import run_main
from spark_jobs.executor import check_import_path, run_stage


def main(argv=None) -> dict:
    """Run the augment stage on Spark; returns the statistics report."""
    check_import_path()
    from augment.pipeline import AUGMENT

    return run_stage(AUGMENT, argv)


if __name__ == "__main__":
    run_main(main)
