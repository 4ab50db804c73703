"""pyspark's Python worker daemon, with the stage's modules loaded once before it forks.

Spark starts one daemon per executor (``python -m <spark.python.daemon.module>``) and forks
a worker from it for each Python task slot.  pyspark's own daemon (``pyspark.daemon``) loads
nothing before it forks, so every worker imports pyspark's worker, pyarrow, pandas and the
stage's modules itself, and the dedup stage's workers each build its Unicode tables and load
its compiled kernels: 1-2 CPU seconds per worker, paid again by each worker Spark forks
(a few per job, one per core).  This daemon does that once; the workers it forks inherit it,
copy-on-write (``gc.freeze`` keeps the loaded objects out of the collector, so their pages
stay shared).

What it loads: :data:`BASE_MODULES`, then the modules named in ``$JINGLIAN_WORKER_PRELOAD``
(comma-separated; the Spark executor sets it from the stage, through
``spark.executorEnv.JINGLIAN_WORKER_PRELOAD``: ``spark_jobs.common.worker_modules``), and
calls the ``warm_worker()`` of each module that has one.  A module that fails to load is
reported on stderr and skipped: the task that needs it raises the real error.

jinglian sets ``spark.python.daemon.module=spark_jobs.worker_daemon`` where it knows the
executors' Python has jinglian: a ``local[...]`` master (``spark_jobs.common.get_spark``) and
a shipped environment (``spark.pyspark.python``, ``spark_jobs.submit``).  Your own
``spark.python.daemon.module`` wins; ``pyspark.daemon`` turns this off.

About forking after these imports (pyspark's daemon avoids threads before it forks): numpy's
OpenBLAS and pyarrow's jemalloc start threads on import; both register fork handlers, as
Python's own ``multiprocessing`` forks and PyTorch's data loader rely on.  This module starts
no thread itself and runs no Spark work before the fork.
"""
from __future__ import annotations

import gc
import importlib
import os
import sys
import time
import traceback

#: This module, as ``spark.python.daemon.module`` names it.
WORKER_DAEMON = "spark_jobs.worker_daemon"
#: Loaded by every daemon: what each Python task of a jinglian stage imports first.
BASE_MODULES = ("pyspark.worker", "numpy", "pyarrow", "pyarrow.compute", "pandas", "spark_jobs.common")
PRELOAD_ENV = "JINGLIAN_WORKER_PRELOAD"


def preload(names: list[str]) -> list[str]:
    """Import ``names`` and call each one's ``warm_worker()``; returns those that failed."""
    failed = []
    for name in names:
        try:
            module = importlib.import_module(name)
            warm = getattr(module, "warm_worker", None)
            if callable(warm):
                warm()
        except Exception:  # noqa: BLE001 - the task that needs it raises the real error
            failed.append(name)
            print(f"jinglian worker daemon: could not preload {name}; its tasks will import it:\n{traceback.format_exc()}",
                  file=sys.stderr, flush=True)
    return failed


def requested_modules(environ=os.environ) -> list[str]:
    """:data:`BASE_MODULES`, then ``$JINGLIAN_WORKER_PRELOAD``'s, each once."""
    names = [*BASE_MODULES, *(n.strip() for n in environ.get(PRELOAD_ENV, "").split(","))]
    return list(dict.fromkeys(n for n in names if n))


def main() -> None:
    started = time.process_time()
    names = requested_modules()
    failed = preload(names)
    gc.collect()
    gc.freeze()
    if os.environ.get("JINGLIAN_WORKER_DAEMON_LOG"):
        print(f"jinglian worker daemon {os.getpid()}: loaded {len(names) - len(failed)} modules in "
              f"{time.process_time() - started:.2f} CPU s: {','.join(names)}", file=sys.stderr, flush=True)
    from pyspark.daemon import manager

    manager()


if __name__ == "__main__":
    main()
