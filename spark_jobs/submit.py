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
  Python, which runs the driver;
* with ``spark.pyspark.python`` set (a shipped environment, which has jinglian),
  ``spark.python.daemon.module=spark_jobs.worker_daemon``: the executors fork their Python
  workers from a daemon that has loaded the stage's modules (``spark_jobs/worker_daemon.py``;
  a local master gets it from ``spark_jobs.common.get_spark``);
* in client mode, a class-data-sharing archive for the driver JVM (:class:`DriverClassArchive`):
  the first run writes it (``-XX:ArchiveClassesAtExit``), later runs map it
  (``-XX:SharedArchiveFile``), which takes about 6 CPU seconds of class loading off every
  job's start; ``JINGLIAN_SPARK_CDS=off`` turns it off.

dvc.yaml runs every Spark stage through it, so switching the pipeline to a cluster is a
params change ([docs/operations.md](../docs/operations.md#spark-clusters)).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from etl.core.config import SparkParams, load_params, load_section
from etl.core.errors import run_main
from spark_jobs.worker_daemon import WORKER_DAEMON

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


#: ``JINGLIAN_SPARK_CDS``: ``off`` (or 0/false/no) turns the driver's class-data-sharing archive
#: off; a directory puts the archives there instead of ``$XDG_CACHE_HOME/jinglian/spark-cds``.
CDS_ENV = "JINGLIAN_SPARK_CDS"
#: Archives kept in the folder (one per JVM, Spark and option set; the most recently used stay).
CDS_KEEP = 3
_CDS_USER_OPTIONS = ("SharedArchiveFile", "ArchiveClassesAtExit", "-Xshare", "DynamicDumpSharedSpaces")


def _spark_jars(submit: str) -> Path | None:
    """The jars folder of the Spark that ``submit`` starts: ``$SPARK_HOME/jars``, the folder
    beside a Spark distribution's ``bin/spark-submit``, or pip pyspark's ``pyspark/jars``."""
    candidates = [Path(os.environ["SPARK_HOME"]) / "jars"] if os.environ.get("SPARK_HOME") else []
    exe = shutil.which(shlex.split(submit)[0]) if submit.strip() else None
    if exe:
        candidates.append(Path(os.path.realpath(exe)).parent.parent / "jars")
    spec = importlib.util.find_spec("pyspark")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "jars")
    return next((c for c in candidates if c.is_dir()), None)


class DriverClassArchive:
    """A dynamic class-data-sharing archive (JDK 13+, JEP 350) for a client-mode driver JVM.

    A Spark driver loads and verifies some 15,000 classes at every start; mapping them from an
    archive instead took a small job from 14.8 to 9.0 CPU seconds (start to finish) on the
    2-core test machine (docs/benchmarks.md, "Round three").  The archive depends on the
    Java build, Spark's jars and the JVM options, so its file name is a hash of those:
    ``<cache>/<hash>.jsa``.  When it is missing, the run writes it at exit under a temporary
    name (the dump costs about 20 s once) and :meth:`finish` renames it into place if the job
    succeeded; a JVM that finds an archive it cannot use (a changed class path) ignores it
    and starts as usual.  Off when ``JINGLIAN_SPARK_CDS=off``, or when your driver options
    already name a sharing option.
    """

    def __init__(self, java_options: str, submit: str = "spark-submit"):
        self.path: Path | None = None
        self.dumping: Path | None = None
        setting = os.environ.get(CDS_ENV, "").strip()
        if setting.lower() in ("0", "off", "false", "no") or any(o in java_options for o in _CDS_USER_OPTIONS):
            return
        java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
        jars = _spark_jars(submit)
        if not java or not os.path.exists(java) or jars is None:
            return
        java = os.path.realpath(java)
        # system properties (-D...: the log configuration's path, which differs per checkout) load no classes
        options = [o for o in shlex.split(java_options) if not o.startswith("-D")]
        key = [java, str(os.stat(java).st_mtime_ns), str(jars), *options]
        key += sorted(f"{e.name}:{e.stat().st_size}:{e.stat().st_mtime_ns}" for e in os.scandir(jars))
        cache = Path(setting) if setting else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jinglian" / "spark-cds"
        self.path = cache / (hashlib.sha256("\n".join(key).encode()).hexdigest()[:20] + ".jsa")

    def java_options(self) -> list[str]:
        """The options to add to the driver's: map the archive, or write it at exit."""
        if self.path is None:
            return []
        if self.path.is_file():
            try:
                os.utime(self.path)  # most recently used: kept by the pruning in finish()
                return [f"-XX:SharedArchiveFile={self.path}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
            except OSError:  # pruned by another run just now: write it again
                pass
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            return []
        self.dumping = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        return [f"-XX:ArchiveClassesAtExit={self.dumping}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]

    def finish(self, succeeded: bool) -> None:
        """After the driver exited: keep a written archive if the job succeeded, drop it
        otherwise; keep the :data:`CDS_KEEP` most recently used archives of the folder."""
        if self.dumping is None:
            return
        if succeeded and self.dumping.is_file() and self.dumping.stat().st_size > 0:
            os.replace(self.dumping, self.path)
        self.dumping.unlink(missing_ok=True)
        def modified(path: Path) -> float:  # another run may prune or rename the same files
            try:
                return path.stat().st_mtime
            except OSError:
                return 0.0

        folder = self.path.parent
        archives = sorted(folder.glob("*.jsa"), key=modified, reverse=True)
        for old in archives[CDS_KEEP:]:
            old.unlink(missing_ok=True)
        for stale in folder.glob("*.jsa.tmp-*"):  # a killed run's partial dump
            if time.time() - modified(stale) > 3600:
                stale.unlink(missing_ok=True)


def driver_java_options(params: SparkParams) -> str | None:
    """The driver JVM options the launcher sets in client mode (the user's, jinglian's log
    configuration, :func:`local_jvm_options` for a local master), or None in cluster mode."""
    if params.deploy_mode != "client":
        return None
    java_options = with_log4j2(params.conf.get("spark.driver.extraJavaOptions", ""), log4j2_configuration())
    if params.master.startswith("local"):
        java_options = local_jvm_options(java_options)
    return java_options


def submit_command(params: SparkParams, job: str, job_args: Sequence[str], driver_python: str = sys.executable,
                   archive: DriverClassArchive | None = None) -> list[str]:
    """The spark-submit command line for ``job`` with ``job_args`` (see the module docstring);
    ``archive``: the driver's class-data-sharing archive (client mode), whose options it adds."""
    conf = dict(params.conf)
    conf.setdefault("spark.ui.showConsoleProgress", "true")
    if params.deploy_mode == "client":
        java_options = driver_java_options(params)
        if archive is not None:
            java_options = " ".join([java_options, *archive.java_options()]).strip()
        if java_options:
            conf["spark.driver.extraJavaOptions"] = java_options
        if "spark.pyspark.python" in conf:
            conf.setdefault("spark.pyspark.driver.python", driver_python)
    if "spark.pyspark.python" in conf:  # a shipped environment: the executors' Python has jinglian
        conf.setdefault("spark.python.daemon.module", WORKER_DAEMON)
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
    if args.dry_run:
        print(shlex.join(submit_command(params, args.job, args.job_args)))
        return 0
    archive = DriverClassArchive(driver_java_options(params), params.submit) if params.deploy_mode == "client" else None
    returncode = subprocess.call(submit_command(params, args.job, args.job_args, archive=archive))
    if archive is not None:
        archive.finish(returncode == 0)
    return returncode


if __name__ == "__main__":
    run_main(main)
