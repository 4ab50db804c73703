"""``python -m augment --input DIR --output DIR [--params params.yaml] [--workers N]``.

The augment stage (:data:`augment.pipeline.AUGMENT`) run by the local executor, in one
process or a process pool (each worker loads the models once); the same steps as
``spark_jobs/augment_corpus.py``.
"""
from __future__ import annotations

from collections.abc import Sequence

from augment.pipeline import AUGMENT
from etl.core.errors import run_main
from etl.runner import run_stage


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the augment stage locally; returns the statistics report."""
    return run_stage(AUGMENT, argv, prog="python -m augment")


if __name__ == "__main__":
    run_main(main)
