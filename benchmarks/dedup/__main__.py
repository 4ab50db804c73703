"""Dedup benchmark: quality (pair precision/recall) and speed against datasketch, 10k..1M docs.

    python -m benchmarks.dedup --sizes 10000 100000 [--work /tmp/dedup-bench] [--cores 2]
        [--baseline-max 100000] [--output benchmarks/results/dedup.json]

For each size it (1) generates a synthetic corpus with ground truth (generate.py, cached
under --work), (2) runs ``spark-submit --master local[<cores>] spark_jobs/dedup.py`` with the
repository's ``dedup:`` params and the launcher's JVM options for a local master
(``spark_jobs.submit.LOCAL_JVM_OPTIONS`` and its class-data-sharing archive, written by an
untimed first run when missing, as ``python -m spark_jobs.submit`` and dvc run it;
``JINGLIAN_SPARK_CDS=off`` runs without it), sampling the RSS of the driver JVM, the Python driver and the
Python workers every 0.2 s, (3) runs the same shingles through datasketch in one Python
process (``MinHash`` with its default sha1 hash, scheme pinned to affine32, then
``MinHashLSH(threshold, num_perm)`` insert + query + union-find), and (4) scores both
against the ground truth:

* true duplicate clusters: connected components of the document pairs whose true Jaccard
  of dedup shingle sets is >= the threshold (computed for every pair inside a generated
  family and for every pair a method put in one cluster);
* predicted clusters: connected components of (document, duplicate_of) links;
* precision / recall over pairs of documents in the same cluster.

Throughput is documents per second per core, two ways: by wall time, ``N / wall_s / cores``
for Spark (spark-submit, JVM start included) and ``N / wall_s`` for the single-process
datasketch run; and by CPU time, ``N / cpu_s`` with cpu_s the user+system seconds of every
process of the spark-submit tree (JVM, Python driver, Python workers; sampled per process)
or of the datasketch process.  On a shared machine the CPU-time figure is the fair one.
Results go to --output (JSON) and a PNG next to it.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.dedup.generate import write_corpus
from etl.dedup.cluster import DedupConfig, UnionFind, load_dedup_config, shingle_strings
from etl.io.records import read_parquet_dir

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- running


def is_python_worker(cmd: str) -> bool:
    """A Spark Python worker or its daemon (pyspark's, or jinglian's ``spark_jobs.worker_daemon``), by command line."""
    return any(mark in cmd for mark in ("pyspark.daemon", "pyspark.worker", "spark_jobs.worker_daemon"))


class MemorySampler(threading.Thread):
    """Peak RSS of a process tree, split into JVM, Python driver and Python workers, and in all."""

    def __init__(self, root_pid: int, interval_s: float = 0.2, job: str = "spark_jobs/"):
        super().__init__(daemon=True)
        self.root_pid, self.interval_s, self.job = root_pid, interval_s, job  # job: in the Python driver's command line
        self.peak = {"jvm_bytes": 0, "python_driver_bytes": 0, "python_workers_bytes": 0, "total_bytes": 0}
        self.cpu_s: dict[int, float] = {}  # last seen user+system seconds per process
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                procs = [psutil.Process(self.root_pid)] + psutil.Process(self.root_pid).children(recursive=True)
            except psutil.Error:
                break
            now = collections.Counter()
            for p in procs:
                try:
                    cmd = " ".join(p.cmdline())
                    parent = p.parent()
                    if self.job in cmd and parent is not None and " ".join(parent.cmdline()) == cmd:
                        continue  # the driver's fork before exec (its `java -version` check): same pages, counted once
                    rss = p.memory_info().rss
                    times = p.cpu_times()
                    self.cpu_s[p.pid] = times.user + times.system
                except psutil.Error:
                    continue
                now["total_bytes"] += rss  # the whole tree (any command)
                if "java" in p.name():
                    now["jvm_bytes"] += rss
                elif is_python_worker(cmd):
                    now["python_workers_bytes"] += rss
                elif self.job in cmd:
                    now["python_driver_bytes"] += rss
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(self.interval_s)


def run_sampled(cmd: list[str]) -> tuple[int, str, float, MemorySampler]:
    """Run ``cmd`` (a spark-submit) with this repository's Python and code, sampling its process
    tree's CPU and memory; returns (exit code, output, wall seconds, sampler). A benchmark
    stopped early (SIGTERM) leaves no child behind."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = MemorySampler(proc.pid)
    sampler.start()
    try:
        output, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    wall_s = time.time() - started
    sampler.done.set()
    sampler.join()
    return proc.returncode, output, wall_s, sampler


def local_spark_command(job: str, job_args: list[str], cores: int, driver_memory: str):
    """``(spark-submit command, class archive)`` of ``spark_jobs/<job>`` on ``local[cores]``
    with the launcher's driver options (``python -m spark_jobs.submit``): C1-only JIT, the
    parallel collector, and its class-data-sharing archive (written by a first run: call
    ``archive.finish(ok)`` after it).  The session gets jinglian's Python worker daemon from
    ``get_spark`` (a local master), as with the launcher."""
    from spark_jobs.submit import DriverClassArchive, local_jvm_options

    archive = DriverClassArchive(local_jvm_options())
    java_options = " ".join([local_jvm_options(), *archive.java_options()])
    cmd = [str(VENV_BIN / "spark-submit"), "--master", f"local[{cores}]", "--driver-memory", driver_memory,
           "--conf", "spark.ui.enabled=false", "--conf", f"spark.sql.shuffle.partitions={4 * cores}",
           "--conf", f"spark.driver.extraJavaOptions={java_options}", str(ROOT / "spark_jobs" / job), *job_args]
    return cmd, archive


def run_spark(corpus: Path, out: Path, cores: int, driver_memory: str) -> dict[str, Any]:
    cmd, archive = local_spark_command("dedup.py", ["--input", str(corpus / "docs"), "--output", str(out)], cores, driver_memory)
    returncode, output, wall_s, sampler = run_sampled(cmd)
    archive.finish(returncode == 0)
    if returncode != 0:
        raise RuntimeError(f"spark-submit failed ({returncode}):\n{output[-4000:]}")
    stats = json.loads((out / "stats.json").read_text())
    return {"wall_s": round(wall_s, 2), "cpu_s": round(sum(sampler.cpu_s.values()), 2), "memory_peak": sampler.peak,
            "stats": {k: stats[k] for k in ("num_in", "num_kept", "drop_reasons")},
            "num_candidate_edges": stats["dedup"]["num_candidate_edges"], "num_verified_edges": stats["dedup"]["num_verified_edges"]}


def run_local(texts: dict[str, str], config: DedupConfig) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """jinglian's local runner core (exact + near dedup in one process, in memory)."""
    from etl.core.document import Document
    from etl.dedup.cluster import dedup_documents

    started, cpu_started = time.time(), time.process_time()
    out, _ = dedup_documents([Document(i, t) for i, t in texts.items()], config)
    wall_s = time.time() - started
    links = [(d.id, d.meta["duplicate_of"]) for d in out if d.dropped]
    return {"wall_s": round(wall_s, 2), "cpu_s": round(time.process_time() - cpu_started, 2)}, links


def spark_groups(out: Path) -> list[tuple[str, str]]:
    return [(d.id, d.meta["duplicate_of"]) for d in read_parquet_dir(out / "rejected") if d.meta.get("duplicate_of")]


def run_datasketch(texts: dict[str, str], config: DedupConfig) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The peer baseline in one process: datasketch MinHash + MinHashLSH + union-find."""
    from datasketch import MinHash, MinHashLSH

    started, cpu_started = time.time(), time.process_time()
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
    sketches = {}
    for doc_id, text in texts.items():
        shingles = shingle_strings(text, config)
        if not shingles:
            continue
        m = MinHash(num_perm=config.num_perm, seed=config.seed, scheme=config.scheme)
        m.update_batch([s.encode("utf-8") for s in shingles])
        sketches[doc_id] = m
        lsh.insert(doc_id, m, check_duplication=False)
    links = []
    for doc_id, m in sketches.items():
        links += [(doc_id, other) for other in lsh.query(m) if other < doc_id]
    wall_s = time.time() - started
    return {"wall_s": round(wall_s, 2), "cpu_s": round(time.process_time() - cpu_started, 2), "bands": [lsh.b, lsh.r]}, links


# ----------------------------------------------------------------------------- scoring


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def truth_links(texts: dict[str, str], families: dict[str, int], config: DedupConfig) -> list[tuple[str, str]]:
    """Pairs inside each generated family with true Jaccard >= threshold."""
    by_family: dict[int, list[str]] = collections.defaultdict(list)
    for doc_id, fam in families.items():
        by_family[fam].append(doc_id)
    links = []
    for members in by_family.values():
        if len(members) < 2:
            continue
        sets = {m: shingle_strings(texts[m], config) for m in members}
        links += [(a, b) for i, a in enumerate(members) for b in members[i + 1:] if _jaccard(sets[a], sets[b]) >= config.threshold]
    return links


def components(links: list[tuple[str, str]]) -> dict[str, str]:
    uf = UnionFind()
    for a, b in links:
        uf.union(a, b)
    return {m: root for root, members in uf.groups().items() for m in members}


def cross_family_truth(pred: dict[str, str], texts: dict[str, str], families: dict[str, int], config: DedupConfig, max_group: int = 50) -> list[tuple[str, str]]:
    """True links between different families inside predicted groups (natural duplicates)."""
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for m, root in pred.items():
        groups[root].append(m)
    links = []
    for members in groups.values():
        if len(members) > max_group or len({families[m] for m in members}) < 2:
            continue
        sets = {m: shingle_strings(texts[m], config) for m in members}
        links += [(a, b) for i, a in enumerate(members) for b in members[i + 1:]
                  if families[a] != families[b] and _jaccard(sets[a], sets[b]) >= config.threshold]
    return links


def pair_scores(pred: dict[str, str], truth: dict[str, str]) -> dict[str, float]:
    def pairs(counter):
        return sum(n * (n - 1) // 2 for n in counter.values())

    num_pred = pairs(collections.Counter(pred.values()))
    num_true = pairs(collections.Counter(truth.values()))
    both = pairs(collections.Counter((pred[m], truth[m]) for m in pred if m in truth))
    return {"precision": round(both / num_pred, 4) if num_pred else 1.0, "recall": round(both / num_true, 4) if num_true else 1.0,
            "predicted_pairs": num_pred, "true_pairs": num_true, "true_positive_pairs": both}


# ----------------------------------------------------------------------------- main


def ensure_corpus(num_docs: int, args) -> Path:
    """The generated corpus of ``num_docs`` under --work (made once)."""
    corpus = Path(args.work) / f"{num_docs}"
    if not (corpus / "truth.jsonl").is_file():
        write_corpus(num_docs, corpus, seed=args.seed)
    return corpus


def bench_size(num_docs: int, args, config: DedupConfig) -> dict[str, Any]:
    corpus = ensure_corpus(num_docs, args)
    texts, families = {}, {}
    for path in sorted((corpus / "docs").glob("*.jsonl")):
        for line in open(path, encoding="utf-8"):
            rec = json.loads(line)
            texts[rec["id"]] = rec["text"]
            families[rec["id"]] = rec["meta"]["family"]
    row: dict[str, Any] = {"num_docs": num_docs, "num_families": len(set(families.values()))}
    print(f"[{num_docs}] spark ...", flush=True)
    row["spark"] = run_spark(corpus, corpus / "out-spark", args.cores, args.driver_memory)
    row["spark"]["docs_per_s_per_core"] = round(num_docs / row["spark"]["wall_s"] / args.cores, 1)
    row["spark"]["docs_per_cpu_s"] = round(num_docs / row["spark"]["cpu_s"], 1)
    row["spark"]["wall_s_per_1k_docs"] = round(1000 * row["spark"]["wall_s"] / num_docs, 3)
    truth_base = truth_links(texts, families, config)
    spark_pred = components(spark_groups(corpus / "out-spark"))
    cross = cross_family_truth(spark_pred, texts, families, config)
    if num_docs <= args.baseline_max:
        print(f"[{num_docs}] datasketch ...", flush=True)
        row["datasketch"], links = run_datasketch(texts, config)
        row["datasketch"]["docs_per_s_per_core"] = round(num_docs / row["datasketch"]["wall_s"], 1)
        row["datasketch"]["docs_per_cpu_s"] = round(num_docs / row["datasketch"]["cpu_s"], 1)
        ds_pred = components(links)
        cross += cross_family_truth(ds_pred, texts, families, config)
        print(f"[{num_docs}] local runner ...", flush=True)
        row["local"], local_links = run_local(texts, config)
        row["local"]["docs_per_cpu_s"] = round(num_docs / row["local"]["cpu_s"], 1)
        local_pred = components(local_links)
        row["local_speedup_per_cpu_s"] = round(row["local"]["docs_per_cpu_s"] / row["datasketch"]["docs_per_cpu_s"], 2)
        row["speedup_per_core_wall"] = round(row["spark"]["docs_per_s_per_core"] / row["datasketch"]["docs_per_s_per_core"], 2)
        row["speedup_per_cpu_s"] = round(row["spark"]["docs_per_cpu_s"] / row["datasketch"]["docs_per_cpu_s"], 2)
    truth = components(truth_base + cross)
    row["spark"]["quality"] = pair_scores(spark_pred, truth)
    if "datasketch" in row:
        row["datasketch"]["quality"] = pair_scores(ds_pred, truth)
        row["local"]["quality"] = pair_scores(local_pred, truth)
    row["num_cross_family_true_links"] = len(cross)
    print(json.dumps(row, indent=1), flush=True)
    return row


def add_ratio_vs_largest_baseline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For sizes above --baseline-max, the Spark rate against datasketch's rate at the largest
    size it ran (its per-document rate falls slowly with size, so this favours datasketch)."""
    measured = [r for r in rows if "datasketch" in r]
    if not measured:
        return rows
    base = max(measured, key=lambda r: r["num_docs"])
    for r in rows:
        if "datasketch" not in r:
            r["vs_datasketch_at"] = base["num_docs"]
            r["speedup_per_core_wall_vs_largest_baseline"] = round(r["spark"]["docs_per_s_per_core"] / base["datasketch"]["docs_per_s_per_core"], 2)
            r["speedup_per_cpu_s_vs_largest_baseline"] = round(r["spark"]["docs_per_cpu_s"] / base["datasketch"]["docs_per_cpu_s"], 2)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["num_docs"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(sizes, [r["spark"]["wall_s_per_1k_docs"] for r in rows], "o-", label="jinglian Spark (wall)")
    ds = [(r["num_docs"], 1000 * r["datasketch"]["wall_s"] / r["num_docs"]) for r in rows if "datasketch" in r]
    if ds:
        ax1.plot(*zip(*ds), "s--", label="datasketch, 1 process")
    ax1.set(xscale="log", xlabel="documents", ylabel="seconds per 1k documents", title="time per document")
    ax1.legend()
    for key, label in (("jvm_bytes", "JVM (driver + local executors)"), ("python_driver_bytes", "Python driver")):
        ax2.plot(sizes, [r["spark"]["memory_peak"][key] / 2**20 for r in rows], "o-", label=label)
    ax2.set(xscale="log", xlabel="documents", ylabel="peak RSS (MiB)", title="driver memory")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dedup", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="corpus sizes (documents)")
    parser.add_argument("--work", default="/tmp/dedup-bench", help="where corpora and outputs go")
    parser.add_argument("--cores", type=int, default=2, help="Spark local[N] cores")
    parser.add_argument("--driver-memory", default="4g", help="spark-submit --driver-memory")
    parser.add_argument("--baseline-max", type=int, default=100_000, help="largest size the datasketch baseline runs at")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "dedup.json"), help="results JSON (PNG beside it)")
    args = parser.parse_args(argv)
    config = load_dedup_config()
    from spark_jobs.submit import DriverClassArchive, local_jvm_options

    archive = DriverClassArchive(local_jvm_options())
    if archive.path is not None and not archive.path.is_file():
        # the launcher writes its JVM class archive on a machine's first run (about 20 s, once);
        # that run is not one of the timed ones
        print("writing the driver JVM's class-data-sharing archive first (one untimed Spark run)", flush=True)
        corpus = ensure_corpus(min(args.sizes), args)
        run_spark(corpus, corpus / "out-spark", args.cores, args.driver_memory)
    rows = add_ratio_vs_largest_baseline([bench_size(n, args, config) for n in args.sizes])
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": "python -m benchmarks.dedup " + " ".join(argv if argv is not None else sys.argv[1:]), "cores": args.cores,
              "config": {"threshold": config.threshold, "num_perm": config.num_perm, "bands": list(config.bands), "verify": config.verify},
              "load_average_at_end": os.getloadavg(), "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
