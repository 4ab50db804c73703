"""The launcher of the Spark stages: ``spark-submit`` with the ``spark:`` section of params.yaml.

    python -m spark_jobs.submit [--dry-run] spark_jobs/clean.py --input data/sample --output runs/clean [--params P]

runs ``<spark.submit> --master <spark.master> --deploy-mode <spark.deploy_mode> --archives
<spark.archives> --conf <spark.conf>... JOB ARGS`` (the params file is the job's ``--params``,
else the default), and adds what a console run wants unless you set it yourself:

* ``spark.ui.showConsoleProgress=true``: Spark's progress bar while a job runs;
* in client mode, jinglian's log configuration (``spark_jobs/log4j2.properties``: warnings
  only, so no JVM start-up INFO) through ``spark.driver.extraJavaOptions``; yours wins: a
  ``-Dlog4j2.configurationFile`` in that setting, ``JINGLIAN_LOG4J2=/path``, or a
  ``log4j2.properties`` in ``$SPARK_CONF_DIR``;
* with a ``local[...]`` master, :data:`LOCAL_JVM_OPTIONS` (C1-only JIT, the parallel collector)
  in ``spark.driver.extraJavaOptions``, unless you set the JIT or the collector yourself;
* in client mode with ``spark.pyspark.python`` set (a shipped environment, ``./env/bin/python``,
  which exists only in the executors' directories), ``spark.pyspark.driver.python`` = this
  Python, which runs the driver.

dvc.yaml runs every Spark stage through it, so switching the pipeline to a cluster is a
params change ([docs/operations.md](../docs/operations.md#spark-clusters)).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from etl.core.config import SparkParams, load_params, load_section
from etl.core.errors import run_main

#: jinglian's Spark log configuration, shipped in the package.
LOG4J2_PROPERTIES = Path(__file__).resolve().parent / "log4j2.properties"
LOG4J2_ENV = "JINGLIAN_LOG4J2"


def log4j2_configuration() -> str | None:
    """The log4j2 file for a JVM jinglian configures: ``$JINGLIAN_LOG4J2``, else jinglian's own,
    or None when ``$SPARK_CONF_DIR`` holds the user's ``log4j2.properties``."""
    if os.environ.get(LOG4J2_ENV):
        return os.environ[LOG4J2_ENV]
    conf_dir = os.environ.get("SPARK_CONF_DIR")
    if conf_dir and (Path(conf_dir) / "log4j2.properties").is_file():
        return None
    return str(LOG4J2_PROPERTIES)


def with_log4j2(java_options: str, config: str | None) -> str:
    """``java_options`` plus ``-Dlog4j2.configurationFile=config``, unless they already name one."""
    if config is None or "log4j2.configurationFile" in java_options:
        return java_options
    return f"{java_options} -Dlog4j2.configurationFile=file:{config}".strip()


#: Driver JVM options added for a ``local[...]`` master, where the executors are threads of the
#: driver JVM and a job lives for minutes: C1-only JIT (C2 compiled for ~35 CPU s of a 100k-document
#: dedup run, most of it code run a few times) and the parallel collector (G1's concurrent and
#: refinement threads took ~15 CPU s); see docs/benchmarks.md, "Spark's overhead".  An option
#: you set yourself for the same thing wins; ``JINGLIAN_LOCAL_JVM_OPTIONS`` replaces the list
#: (empty: none).
LOCAL_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseParallelGC")
LOCAL_JVM_ENV = "JINGLIAN_LOCAL_JVM_OPTIONS"


def local_jvm_options(java_options: str = "") -> str:
    """``java_options`` plus :data:`LOCAL_JVM_OPTIONS` (or ``$JINGLIAN_LOCAL_JVM_OPTIONS``),
    less those whose subject ``java_options`` already sets (JIT tiers, a garbage collector)."""
    wanted = shlex.split(os.environ[LOCAL_JVM_ENV]) if LOCAL_JVM_ENV in os.environ else list(LOCAL_JVM_OPTIONS)
    given = shlex.split(java_options)
    sets_gc = any(o.startswith("-XX:+Use") and o.endswith("GC") for o in given)
    sets_jit = any("TieredStopAtLevel" in o or "TieredCompilation" in o for o in given)
    extra = [o for o in wanted if not (sets_gc and o.endswith("GC")) and not (sets_jit and "Tiered" in o)]
    return " ".join([*given, *extra])


def submit_command(params: SparkParams, job: str, job_args: Sequence[str], driver_python: str = sys.executable) -> list[str]:
    """The spark-submit command line for ``job`` with ``job_args`` (see the module docstring)."""
    conf = dict(params.conf)
    conf.setdefault("spark.ui.showConsoleProgress", "true")
    if params.deploy_mode == "client":
        java_options = with_log4j2(conf.get("spark.driver.extraJavaOptions", ""), log4j2_configuration())
        if params.master.startswith("local"):
            java_options = local_jvm_options(java_options)
        if java_options:
            conf["spark.driver.extraJavaOptions"] = java_options
        if "spark.pyspark.python" in conf:
            conf.setdefault("spark.pyspark.driver.python", driver_python)
    cmd = [*shlex.split(params.submit), "--master", params.master, "--deploy-mode", params.deploy_mode]
    if params.archives:
        cmd += ["--archives", ",".join(params.archives)]
    for key, value in sorted(conf.items()):
        cmd += ["--conf", f"{key}={value}"]
    return [*cmd, job, *job_args]


def _job_params(job_args: Sequence[str]) -> str | None:
    """The ``--params`` the job will read (``--params P`` or ``--params=P``), or None for the default."""
    for i, arg in enumerate(job_args):
        if arg == "--params" and i + 1 < len(job_args):
            return job_args[i + 1]
        if arg.startswith("--params="):
            return arg.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or with ``--dry-run`` print) the spark-submit command of a Spark stage."""
    parser = argparse.ArgumentParser(prog="python -m spark_jobs.submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the spark-submit command instead of running it")
    parser.add_argument("job", help="the job file, e.g. spark_jobs/clean.py")
    parser.add_argument("job_args", nargs=argparse.REMAINDER, help="the job's own flags")
    args = parser.parse_args(argv)
    params = load_section(load_params(_job_params(args.job_args)), "spark")
    cmd = submit_command(params, args.job, args.job_args)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    run_main(main)
