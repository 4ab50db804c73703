"""Cluster benchmark: clean then dedup on ``local[<cores>]`` and on a standalone cluster of
``--workers`` one-core workers on this machine, same input, same params.

    python -m benchmarks.cluster --docs 1500 --scales 1 2 4 [--work /tmp/cluster-bench]
        [--cores 2] [--workers 2] [--packed] [--output benchmarks/results/cluster.json]

For each scale (1x, 2x, 4x of ``--docs``) it generates the dedup benchmark's synthetic corpus
(benchmarks/dedup/generate.py: near-duplicate families, cached under --work), runs
``spark-submit spark_jobs/clean.py`` and then ``spark_jobs/dedup.py`` on the clean output,
first with ``--master local[<cores>]`` (the baseline) and then against the cluster
(spark_jobs/standalone.py: the same master and workers as the cluster test tier), and checks
that both keep and reject the same ids.  It reports wall time per stage (spark-submit, JVM
start included), docs/s, the cluster/local ratio (the cluster's overhead: executors in other
JVMs, task shipping over RPC, shuffle through the workers' block managers), the growth from
1x to 4x, and the peak RSS of the driver's process tree and of the workers' trees.

``--packed`` ships dist/jinglian-env.tar.gz (``scripts/package.sh``, built or reused) with
``--archives`` as the cluster test does; without it the workers run this venv's Python with
the repository on PYTHONPATH (no archive to unpack: the figure is the cluster's own overhead).
Both modes get ``cores`` cores in all; on a shared machine compare the ratio, not the seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.dedup.__main__ import run_sampled
from benchmarks.dedup.generate import write_corpus
from etl.io.records import read_parquet_dir
from spark_jobs.standalone import standalone_cluster

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
STAGES = ("clean", "dedup")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1500, help="documents of the 1x corpus (dedup benchmark generator)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4], help="corpus sizes as multiples of --docs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cluster-bench"), help="corpora, outputs, cluster logs")
    parser.add_argument("--cores", type=int, default=2, help="cores of the local[N] baseline and of the whole cluster")
    parser.add_argument("--workers", type=int, default=2, help="standalone workers (cores / workers cores each)")
    parser.add_argument("--worker-memory", default="2g", help="memory a worker offers (executor memory is half of it)")
    parser.add_argument("--packed", action="store_true", help="ship dist/jinglian-env.tar.gz (scripts/package.sh) to the workers")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "cluster.json", help="results JSON")
    return parser.parse_args(argv)


def submit_args(master: str, args: argparse.Namespace) -> list[str]:
    """spark-submit options for ``master`` (``local[N]`` or the cluster's URL)."""
    common = ["--master", master, "--driver-memory", "2g", "--conf", "spark.ui.enabled=false",
              "--conf", f"spark.sql.shuffle.partitions={2 * args.cores}"]
    if master.startswith("local"):
        return common
    per_worker = max(1, args.cores // args.workers)
    memory_mb = int(args.worker_memory.rstrip("g")) * 1024 // 2 if args.worker_memory.endswith("g") else 1024
    common += ["--conf", f"spark.executor.cores={per_worker}", "--conf", f"spark.cores.max={args.cores}",
               "--conf", f"spark.executor.memory={memory_mb}m"]
    if args.packed:
        return common + ["--archives", f"{ROOT / 'dist' / 'jinglian-env.tar.gz'}#env", "--conf", "spark.pyspark.python=./env/bin/python"]
    return common + ["--conf", f"spark.pyspark.python={sys.executable}", "--conf", f"spark.executorEnv.PYTHONPATH={ROOT}"]


def run_stage(stage: str, master: str, source: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One spark-submit of ``spark_jobs/<stage>.py``: wall time, CPU time and peak RSS of the driver's tree."""
    cmd = [str(VENV_BIN / "spark-submit"), *submit_args(master, args), str(ROOT / "spark_jobs" / f"{stage}.py"),
           "--input", str(source), "--output", str(out)]
    returncode, output, wall_s, sampler = run_sampled(cmd)
    if returncode != 0:
        raise RuntimeError(f"{stage} on {master} failed ({returncode}):\n{output[-4000:]}")
    stats = json.loads((out / "stats.json").read_text())
    return {"wall_s": round(wall_s, 2), "driver_cpu_s": round(sum(sampler.cpu_s.values()), 2),
            "driver_tree_peak_bytes": sum(sampler.peak.values()), "num_in": stats["num_in"], "num_kept": stats["num_kept"]}


def outcome(out: Path) -> tuple[list[str], dict[str, str]]:
    """Kept ids and rejected id -> reason of a stage output (to compare the two masters)."""
    return sorted(d.id for d in read_parquet_dir(out / "kept")), {d.id: d.drop_reason for d in read_parquet_dir(out / "rejected")}


def run_pipeline(master: str, corpus: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    source, result = corpus / "docs", {}
    for stage in STAGES:
        result[stage] = run_stage(stage, master, source, out / stage, args)
        source = out / stage
    result["wall_s"] = round(sum(result[s]["wall_s"] for s in STAGES), 2)
    return result


def bench_scale(scale: int, master: str, args: argparse.Namespace) -> dict[str, Any]:
    num_docs = args.docs * scale
    corpus = args.work / f"corpus-{num_docs}"
    if not (corpus / "docs").is_dir():
        write_corpus(num_docs, corpus)
    row: dict[str, Any] = {"scale": scale, "num_docs": num_docs, "input_bytes": sum(p.stat().st_size for p in (corpus / "docs").iterdir())}
    for mode, where in (("local", f"local[{args.cores}]"), ("cluster", master)):
        row[mode] = run_pipeline(where, corpus, args.work / f"out-{num_docs}-{mode}", args)
        row[mode]["docs_per_s"] = round(num_docs / row[mode]["wall_s"], 1)
    row["same_outputs"] = all(outcome(args.work / f"out-{num_docs}-local" / s) == outcome(args.work / f"out-{num_docs}-cluster" / s) for s in STAGES)
    row["cluster_over_local"] = round(row["cluster"]["wall_s"] / row["local"]["wall_s"], 3)
    row["cluster_over_local_by_stage"] = {s: round(row["cluster"][s]["wall_s"] / row["local"][s]["wall_s"], 3) for s in STAGES}
    print(f"{scale}x {num_docs} docs: local {row['local']['wall_s']} s, cluster {row['cluster']['wall_s']} s, "
          f"ratio {row['cluster_over_local']}, same outputs {row['same_outputs']}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops the cluster's daemons
    if args.packed:
        subprocess.run(["bash", "scripts/package.sh"], cwd=ROOT, check=True)
    python = None if args.packed else sys.executable
    started = time.time()
    with standalone_cluster(args.work / "standalone", num_workers=args.workers, cores_per_worker=max(1, args.cores // args.workers),
                            worker_memory=args.worker_memory, python=python) as master:
        rows: list[dict[str, Any]] = []
        for scale in sorted(args.scales):
            rows.append(bench_scale(scale, master, args))
            write_results(rows, args, argv, started)  # after every scale: a cut-short run keeps what it measured
    print(f"wrote {args.output}")
    return 0 if all(r["same_outputs"] for r in rows) else 1


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace, argv: list[str] | None, started: float) -> None:
    base = rows[0]
    growth = {mode: {f"{r['scale']}x": round(r[mode]["wall_s"] / base[mode]["wall_s"], 3) for r in rows} for mode in ("local", "cluster")}
    result = {"benchmark": "cluster", "command": "python -m benchmarks.cluster " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cores": args.cores, "workers": args.workers, "packed_env": args.packed, "machine_cpus": os.cpu_count(),
              "rows": rows, "wall_growth_vs_1x": growth, "total_s": round(time.time() - started, 1),
              "note": "wall time per spark-submit (JVM start included); both modes use the same cores on one shared machine"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
