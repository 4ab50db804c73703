"""A stage's Spark job against its local runner, on the same input, at several sizes.

    python -m benchmarks.spark_vs_local --stage tfidf [--sizes 50000 100000 200000]
        [--work /tmp/spark-vs-local] [--cores 2] [--output benchmarks/results/spark_vs_local_tfidf.json]
    python -m benchmarks.spark_vs_local --stage shards --tokenizer <dir> [--sizes ...]

Issue #17's measure of Spark's overhead: CPU seconds per document of the Spark executor
(``spark-submit --master local[<cores>]`` with the launcher's driver options: C1-only JIT, the
parallel collector, the class-data-sharing archive) against the same stage's local runner in
one process (``python -m etl.<stage>``, ``python -m shards build``), on the same input, in the
same run; with the same decisions: the same kept and rejected records (ids, drop reasons, and
the stage's score or link where it has one), or for shards the same shard files (sha256 of
each shard and validation shard, both sides with ``--partitions 4 x cores``).
CPU seconds are user + system of every process of each run's tree (JVM, Python driver,
Python workers), sampled every 0.2 s (``benchmarks.dedup.run_sampled``), as are the peak
RSS figures.

Input: the dedup benchmark's generated corpus (``benchmarks/dedup/generate.py``: documents
made of sentences of the shared Chinese and English corpora, with near-duplicate families),
made once per size under --work; for shards its records are split into the three mix groups
(``general=``, ``domain=``, ``expert=`` inputs: 70 / 20 / 10 % of the lines) and tokenised with
``--tokenizer`` (for example the demo's ``data/pipeline/tokenizer``).  Results: --output (JSON) and a PNG beside it (CPU per 1k
documents and the ratio, against size).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from benchmarks.dedup.__main__ import ROOT, local_spark_command, run_sampled
from benchmarks.dedup.generate import write_corpus

#: stage -> (Spark job file, local runner's command after the Python executable, meta key compared
#: besides the drop reason; None: compare the shard files)
STAGES = {"tfidf": ("tfidf_filter.py", ["-m", "etl.tfidf"], "tfidf_score"), "dedup": ("dedup.py", ["-m", "etl.dedup"], "duplicate_of"),
          "shards": ("build_shards.py", ["-m", "shards", "build"], None)}


def stage_inputs(stage: str, corpus: Path, args) -> list[str]:
    """The job's ``--input`` values and its other flags."""
    if stage != "shards":
        return ["--input", str(corpus / "docs")]
    groups = {"general": range(0, 7), "domain": range(7, 9), "expert": range(9, 10)}  # by line number mod 10
    folders = {g: corpus / "groups" / g for g in groups}
    if not all((f / "part.jsonl").is_file() for f in folders.values()):
        outs = {}
        for group, folder in folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            outs[group] = open(folder / "part.jsonl", "w", encoding="utf-8")
        line_no = 0
        for path in sorted((corpus / "docs").glob("*.jsonl")):
            for line in open(path, encoding="utf-8"):
                outs[next(g for g, r in groups.items() if line_no % 10 in r)].write(line)
                line_no += 1
        for out in outs.values():
            out.close()
    inputs = [f"{g}={folder}" for g, folder in folders.items()]
    return ["--input", *inputs, "--tokenizer", str(args.tokenizer), "--partitions", str(4 * args.cores)]


def spark_command(stage: str, job_args: list[str], out: Path, cores: int, driver_memory: str) -> tuple[list[str], Any]:
    return local_spark_command(STAGES[stage][0], [*job_args, "--output", str(out)], cores, driver_memory)


def run_one(cmd: list[str]) -> dict[str, Any]:
    returncode, output, wall_s, sampler = run_sampled(cmd)
    if returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({returncode}):\n{output[-4000:]}")
    return {"wall_s": round(wall_s, 2), "cpu_s": round(sum(sampler.cpu_s.values()), 2), "memory_peak": sampler.peak}


def decisions(out: Path, meta_key: str | None) -> Any:
    """id -> (drop reason, meta[meta_key]) over kept/ and rejected/; for shards, each shard
    set's (name, sha256) list."""
    from etl.io.records import read_parquet_dir

    if meta_key is None:
        return [[(s["name"], s["sha256"]) for s in json.loads((out / sub / "manifest.json").read_text())["shards"]] for sub in (".", "valid")]
    return {d.id: (d.drop_reason, d.meta.get(meta_key)) for part in ("kept", "rejected") for d in read_parquet_dir(out / part)}


def bench_size(stage: str, num_docs: int, args) -> dict[str, Any]:
    corpus = Path(args.work) / str(num_docs)
    if not (corpus / "truth.jsonl").is_file():
        write_corpus(num_docs, corpus, seed=0)
    spark_out, local_out = corpus / f"out-{stage}-spark", corpus / f"out-{stage}-local"
    for path in (spark_out, local_out):
        shutil.rmtree(path, ignore_errors=True)
    print(f"[{num_docs}] spark ...", flush=True)
    job_args = stage_inputs(stage, corpus, args)
    cmd, archive = spark_command(stage, job_args, spark_out, args.cores, args.driver_memory)
    try:
        spark = run_one(cmd)
    finally:
        archive.finish(True)
    print(f"[{num_docs}] local runner ...", flush=True)
    local = run_one([sys.executable, *STAGES[stage][1], *job_args, "--output", str(local_out)])
    same = decisions(spark_out, STAGES[stage][2]) == decisions(local_out, STAGES[stage][2])
    row = {"num_docs": num_docs, "spark": spark, "local": local, "same_decisions": same,
           "spark_over_local_cpu": round(spark["cpu_s"] / local["cpu_s"], 2)}
    for side in ("spark", "local"):
        row[side]["docs_per_cpu_s"] = round(num_docs / row[side]["cpu_s"], 1)
    print(json.dumps(row), flush=True)
    return row


def plot(rows: list[dict[str, Any]], stage: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["num_docs"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for side, label in (("spark", "Spark job (local[2])"), ("local", "local runner (1 process)")):
        ax1.plot(sizes, [1000 * r[side]["cpu_s"] / r["num_docs"] for r in rows], "o-", label=label)
    ax1.set(xscale="log", xlabel="documents", ylabel="CPU seconds per 1k documents", title=f"{stage}: CPU per document")
    ax1.legend()
    ax2.plot(sizes, [r["spark_over_local_cpu"] for r in rows], "o-")
    ax2.axhline(1.5, linestyle="--", color="grey", label="goal (issue #17): 1.5")
    ax2.set(xscale="log", xlabel="documents", ylabel="Spark CPU / local CPU", title="Spark's overhead", ylim=(0, None))
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spark_vs_local", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--stage", choices=sorted(STAGES), default="tfidf", help="the stage whose Spark job and local runner are compared")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000], help="corpus sizes (documents)")
    parser.add_argument("--work", default="/tmp/spark-vs-local", help="where corpora and outputs go")
    parser.add_argument("--cores", type=int, default=2, help="Spark local[N] cores")
    parser.add_argument("--driver-memory", default="4g", help="spark-submit --driver-memory")
    parser.add_argument("--tokenizer", default=None, help="shards: the Hugging Face tokenizer directory (e.g. the demo's data/pipeline/tokenizer)")
    parser.add_argument("--output", default=None, help="results JSON (PNG beside it); default benchmarks/results/spark_vs_local_<stage>.json")
    args = parser.parse_args(argv)
    if args.stage == "shards" and not args.tokenizer:
        parser.error("--stage shards needs --tokenizer")
    rows = [bench_size(args.stage, n, args) for n in args.sizes]
    out = Path(args.output or ROOT / "benchmarks" / "results" / f"spark_vs_local_{args.stage}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": "python -m benchmarks.spark_vs_local " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cores": args.cores, "load_average_at_end": os.getloadavg(), "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(rows, args.stage, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
