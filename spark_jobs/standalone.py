"""A Spark standalone cluster on this machine: one master and N workers on 127.0.0.1.

Used by the cluster test tier (tests/test_cluster.py) and the cluster benchmark
(``python -m benchmarks.cluster``)::

    with standalone_cluster(Path("/tmp/sa"), num_workers=2) as master:   # spark://127.0.0.1:PORT
        ...

The daemons run with PySpark's own Spark (``SPARK_HOME`` = the pyspark package), in the
foreground (``SPARK_NO_DAEMONIZE``), each in its own process group, and are stopped
(SIGTERM, then SIGKILL) when the block exits.  Workers run Python tasks with ``python``
(default: this venv's base interpreter, which has no jinglian: jobs ship theirs with
``--archives``).  Nothing here is used by the stages themselves.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_home() -> Path:
    """The Spark distribution inside the installed pyspark package."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def bare_python() -> str:
    """The base interpreter of this venv: no jinglian, no PYTHONPATH."""
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")


def cluster_env(log_dir: Path, python: str | None = None) -> dict[str, str]:
    """The daemons' environment: this one less Python/Spark/jinglian settings and the venv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK", "PYTHON", "SPARK", "VIRTUAL_ENV", "JINGLIAN"))}
    env.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=python or bare_python(), SPARK_LOG_DIR=str(log_dir),
               SPARK_NO_DAEMONIZE="1", PATH=os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p))
    return env


@contextlib.contextmanager
def standalone_cluster(work: Path, num_workers: int = 2, cores_per_worker: int = 1, worker_memory: str = "2g",
                       python: str | None = None, timeout_s: float = 120) -> Iterator[str]:
    """Start a master and ``num_workers`` workers (logs and work folders under ``work``);
    yield the master URL; stop every daemon on exit, even when the block fails."""
    work.mkdir(parents=True, exist_ok=True)
    env = cluster_env(work / "logs", python)
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> None:
        log = open(work / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([spark_class, *args], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)])
        for i in range(num_workers):
            (work / f"worker{i}").mkdir(exist_ok=True)
            start(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host", "127.0.0.1",
                                 "--cores", str(cores_per_worker), "--memory", worker_memory, "--webui-port", str(free_port()),
                                 "--work-dir", str(work / f"worker{i}")])
        wait_for_workers(ui, num_workers, procs, work, timeout_s)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            stop(proc)


def wait_for_workers(ui_port: int, num: int, procs: list[subprocess.Popen], work: Path, timeout_s: float = 120) -> None:
    """Return once the master's UI counts ``num`` alive workers; raise if a daemon exits or time runs out."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not all(p.poll() is None for p in procs):
            raise RuntimeError("a Spark daemon exited: " + "".join(f.read_text()[-1500:] for f in work.glob("*.log")))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
                if json.load(response).get("aliveworkers", 0) >= num:
                    return
        except (OSError, ValueError):  # not up yet, or the UI still serving its HTML page while it starts
            pass
        time.sleep(1)
    raise RuntimeError(f"{num} workers did not register in {timeout_s} s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the daemon's process group (spark-class execs java), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


__all__ = ["standalone_cluster", "cluster_env", "bare_python", "spark_home", "free_port", "wait_for_workers", "stop"]
