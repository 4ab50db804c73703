"""The Spark launcher (``python -m spark_jobs.submit``): the ``spark:`` params section becomes spark-submit flags."""
from __future__ import annotations

import subprocess
import sys

from etl.core.config import SparkParams
from spark_jobs.submit import LOG4J2_PROPERTIES, submit_command


def test_a_local_run_gets_the_progress_bar_and_jinglians_log_configuration(monkeypatch):
    monkeypatch.delenv("JINGLIAN_LOG4J2", raising=False)
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    monkeypatch.delenv("JINGLIAN_LOCAL_JVM_OPTIONS", raising=False)
    cmd = submit_command(SparkParams(), "spark_jobs/clean.py", ["--input", "data/sample"])
    assert cmd[:5] == ["spark-submit", "--master", "local[2]", "--deploy-mode", "client"]
    assert "spark.ui.showConsoleProgress=true" in cmd
    # a local master: the executors are driver threads, so the driver JVM gets the short-job JIT and collector
    assert (f"spark.driver.extraJavaOptions=-Dlog4j2.configurationFile=file:{LOG4J2_PROPERTIES} "
            "-XX:TieredStopAtLevel=1 -XX:+UseParallelGC") in cmd
    assert cmd[-3:] == ["spark_jobs/clean.py", "--input", "data/sample"]
    assert LOG4J2_PROPERTIES.is_file()


def test_a_cluster_run_ships_the_environment_and_the_users_settings_win(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    (tmp_path / "log4j2.properties").write_text("rootLogger.level = info\n")
    params = SparkParams(master="spark://10.0.0.1:7077", archives=["dist/jinglian-env.tar.gz#env"],
                         conf={"spark.pyspark.python": "./env/bin/python", "spark.ui.showConsoleProgress": "false"})
    cmd = submit_command(params, "spark_jobs/dedup.py", [], driver_python="/opt/py/bin/python")
    flags = " ".join(cmd)
    assert "--archives dist/jinglian-env.tar.gz#env" in flags and "--master spark://10.0.0.1:7077" in flags
    assert "spark.pyspark.python=./env/bin/python" in cmd and "spark.pyspark.driver.python=/opt/py/bin/python" in cmd
    assert "spark.ui.showConsoleProgress=false" in cmd and "log4j2" not in flags  # the user's log4j2.properties in SPARK_CONF_DIR
    cluster = submit_command(SparkParams(master="yarn", deploy_mode="cluster", conf={"spark.pyspark.python": "./env/bin/python"}), "j.py", [])
    assert not any("driver.python" in c or "log4j2" in c for c in cluster)  # the driver runs on the cluster, from the archive
    assert "TieredStopAtLevel" not in flags  # long-lived cluster executors keep the full JIT
    # the shipped environment has jinglian: its executors fork their Python workers from jinglian's daemon; yours wins
    assert "spark.python.daemon.module=spark_jobs.worker_daemon" in cmd and "spark.python.daemon.module=spark_jobs.worker_daemon" in cluster
    own = SparkParams(master="yarn", conf={"spark.pyspark.python": "./env/bin/python", "spark.python.daemon.module": "pyspark.daemon"})
    assert "spark.python.daemon.module=pyspark.daemon" in submit_command(own, "j.py", [])
    assert not any("daemon.module" in c for c in submit_command(SparkParams(master="spark://h:7077"), "j.py", []))  # jinglian may be missing there


def test_local_jvm_options_yield_to_the_users():
    from spark_jobs.submit import local_jvm_options

    assert local_jvm_options("-XX:+UseG1GC") == "-XX:+UseG1GC -XX:TieredStopAtLevel=1"
    assert local_jvm_options("-XX:-TieredCompilation -Dx=1") == "-XX:-TieredCompilation -Dx=1 -XX:+UseParallelGC"


def test_dry_run_reads_the_jobs_params_file(tmp_path):
    (tmp_path / "p.yaml").write_text("spark:\n  master: spark://h:7077\n  conf: {spark.executor.memory: 8g}\n")
    out = subprocess.run([sys.executable, "-m", "spark_jobs.submit", "--dry-run", "spark_jobs/clean.py", "--params", str(tmp_path / "p.yaml")],
                         capture_output=True, text=True, check=True).stdout
    assert "--master spark://h:7077" in out and "spark.executor.memory=8g" in out and out.rstrip().endswith(f"--params {tmp_path}/p.yaml")


def test_the_driver_class_archive_is_written_once_then_mapped(monkeypatch, tmp_path):
    """Keyed by the JVM options that load classes (not -D properties); written under a temporary
    name and kept only when the job succeeded; off on request or when the user set sharing."""
    from spark_jobs.submit import CDS_KEEP, DriverClassArchive

    monkeypatch.setenv("JINGLIAN_SPARK_CDS", str(tmp_path / "cds"))
    first = DriverClassArchive("-XX:+UseParallelGC -Dlog4j2.configurationFile=file:/a")
    [dump, *_] = first.java_options()
    assert dump.startswith("-XX:ArchiveClassesAtExit=") and ".jsa.tmp-" in dump
    written = first.dumping
    written.write_bytes(b"archive")  # what the JVM writes at exit
    first.finish(succeeded=True)
    assert first.path.read_bytes() == b"archive" and not written.exists()
    again = DriverClassArchive("-XX:+UseParallelGC -Dlog4j2.configurationFile=file:/b")
    assert again.path == first.path and again.java_options()[0] == f"-XX:SharedArchiveFile={first.path}"
    other = DriverClassArchive("-XX:+UseSerialGC")
    assert other.path != first.path
    other.java_options()
    other.dumping.write_bytes(b"partial")
    other.finish(succeeded=False)  # a failed job's dump is not kept
    assert not other.path.exists() and not other.dumping.exists()
    for options in ("-Xshare:off", "-XX:SharedArchiveFile=/mine.jsa"):
        assert DriverClassArchive(options).java_options() == []
    monkeypatch.setenv("JINGLIAN_SPARK_CDS", "off")
    assert DriverClassArchive("").java_options() == []
    monkeypatch.setenv("JINGLIAN_SPARK_CDS", str(tmp_path / "cds"))
    for gc in range(CDS_KEEP + 2):  # the folder keeps the most recently used archives only
        archive = DriverClassArchive(f"-XX:ParallelGCThreads={gc + 1}")
        archive.java_options()
        archive.dumping.write_bytes(b"x")
        archive.finish(succeeded=True)
    assert len(list((tmp_path / "cds").glob("*.jsa"))) == CDS_KEEP


def test_a_second_launcher_run_maps_sparks_classes_from_the_archive(monkeypatch, tmp_path):
    """Real JVMs: the launcher's first run writes the archive, the second loads Spark's classes
    from it (the JVM's class-load log names the dynamic archive as their source).  The job
    starts no session: spark-submit's driver JVM (SparkSubmit, PythonRunner) is enough to
    show the mechanism, at a fraction of a session's dump time."""
    monkeypatch.setenv("JINGLIAN_SPARK_CDS", str(tmp_path / "cds"))
    job = tmp_path / "job.py"
    job.write_text("print('no session')\n")
    log = tmp_path / "classes.log"
    (tmp_path / "p.yaml").write_text("spark:\n  master: local[1]\n  conf:\n"
                                     f"    spark.driver.extraJavaOptions: -Xlog:class+load=info:file={log}\n")
    run = [sys.executable, "-m", "spark_jobs.submit", str(job), "--params", str(tmp_path / "p.yaml")]
    subprocess.run(run, check=True, capture_output=True)
    [archive] = (tmp_path / "cds").glob("*.jsa")
    assert archive.stat().st_size > 1_000_000 and not list((tmp_path / "cds").glob("*.tmp-*"))
    first = [line for line in log.read_text().splitlines() if "org.apache.spark.deploy.SparkSubmit " in line]
    assert first and not any("shared objects file (top)" in line for line in first)
    subprocess.run(run, check=True, capture_output=True)
    spark_classes = [line for line in log.read_text().splitlines() if "org.apache.spark.deploy.SparkSubmit " in line]
    assert spark_classes and all("shared objects file (top)" in line for line in spark_classes)
