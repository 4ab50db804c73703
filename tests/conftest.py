"""Shared fixtures: the bundled test slices and a local Spark session (spark tier)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("PYTHONHASHSEED", "0")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: small slices of the shared corpora (see tests/data/NOTICE)."""
    return DATA


@pytest.fixture(scope="session")
def spark():
    """A local[2] SparkSession shared by the spark tier (the jobs themselves never set a master)."""
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("jinglian-tests")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.memory", "2g")
               .config("spark.python.daemon.module", "spark_jobs.worker_daemon")  # as get_spark sets for a local master
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
