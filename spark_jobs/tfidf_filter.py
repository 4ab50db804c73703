"""spark-submit entry point of the TF-IDF stage (:data:`etl.tfidf.TFIDF`).

    spark-submit spark_jobs/tfidf_filter.py --input <dir> --output <dir> [--params params.yaml] [--partitions N]

The whole-corpus work is ``spark_jobs.corpus.tfidf.run_tfidf``; bit-identical scores to ``python -m etl.tfidf``.
"""
from etl.core.errors import run_main
from etl.tfidf import TFIDF
from spark_jobs.executor import run_stage


def main(argv=None) -> dict:
    """Run the TF-IDF stage on Spark; returns the statistics report."""
    return run_stage(TFIDF, argv, prog="spark_jobs/tfidf_filter.py")


if __name__ == "__main__":
    run_main(main)
