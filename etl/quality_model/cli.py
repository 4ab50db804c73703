"""The command line: ``python -m etl.quality_model train ...`` fits a model; without ``train``
(or with ``filter``) it runs the filter stage locally (``spark_jobs/quality_filter.py`` on Spark)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from etl.runner import run_stage

PROG = "python -m etl.quality_model [filter]"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Dispatch ``train`` / ``filter`` (the default); returns the manifest or the stage report."""
    argv = list(argv or [])
    if argv[:1] == ["train"]:
        from etl.quality_model.train import main as train_main

        return train_main(argv[1:])
    from etl.quality_model.stage import QUALITY_MODEL

    if argv[:1] == ["filter"]:
        argv = argv[1:]
    return run_stage(QUALITY_MODEL, argv, prog=PROG)
