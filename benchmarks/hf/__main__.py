"""Benchmark Hugging Face import/export against transformers in the same run.

    python -m benchmarks.hf [--sizes 160m,1b] [--trials 1] [--work DIR] [--out benchmarks/results/hf.json]

For each model size (Llama shapes, random bf16 weights written as sharded safetensors with an
index, as on the hub; ``1b`` is the Llama-3.2-1B shape: 16 x 2048, 32 heads / 8 KV heads, SwiGLU
8192, vocab 128256, tied embeddings), each operation runs in its own process after the input
files were read once (warm page cache, as both sides get):

* ours: ``trainer.hf import`` (safetensors -> model-space dist checkpoint) and ``trainer.hf
  export`` (checkpoint -> safetensors + index + config);
* baseline: transformers' ``AutoModelForCausalLM.from_pretrained(dtype=bfloat16)`` then
  ``save_pretrained`` of the same model (the path a user takes without this tool).

Writes are compared on equal terms: ``os.sync()`` runs before each operation (no write-back
left over from the previous one throttles it) and after it (timed apart). ``wall_s`` is the
time until the operation returns; ``durable_s`` adds the sync, i.e. until what it wrote is on
disk. Ours fsyncs its files before renaming them into place (a crash never leaves a renamed,
half-written checkpoint), so most of its write cost is inside ``wall_s``; transformers'
``save_pretrained`` returns with its data still in the page cache, so its cost shows in the
sync. The time goal is read on ``durable_s``; both are reported.

Reported per size: wall and durable seconds, peak RSS of the process and peak RSS above the process's
resident memory before the operation (libraries loaded: what the operation itself costs), as a
multiple of one copy of the model in bf16 (goal: at most 1.2), and ours/baseline time ratios
(goal: no slower).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = {  # layers, hidden, heads, kv heads, ffn, vocab, tied; Llama-shaped unless named qwen
    "160m": (12, 768, 12, 4, 2048, 32000, False),
    "1b": (16, 2048, 32, 8, 8192, 128256, True),
    "qwen2.5-1.5b": (28, 1536, 12, 2, 8960, 151936, True),  # benchmarks/hf/gpu.sh
}
ROOT = Path(__file__).resolve().parents[2]


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.hf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="160m,1b", help=f"comma-separated sizes from {sorted(SIZES)}")
    p.add_argument("--trials", type=int, default=1, help="runs per operation (the median is reported)")
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--out", default="benchmarks/results/hf.json")
    p.add_argument("--make", nargs=2, metavar=("SIZE", "DIR"), default=None,
                   help="only write the random bf16 model SIZE into DIR (used by gpu.sh) and exit")
    return p.parse_args(argv)


def write_random_model(size: str, out: Path) -> int:
    """A Llama config.json and random bf16 safetensors (1 GB shards + index); returns the bytes."""
    from transformers import LlamaConfig, Qwen2Config

    from trainer.hf_config import model_config_from_hf
    from trainer.hf_weights import SafetensorsShardWriter, hf_tensor_shapes

    layers, hidden, heads, kv, ffn, vocab, tied = SIZES[size]
    config_cls, theta = (Qwen2Config, 1e6) if size.startswith("qwen") else (LlamaConfig, 5e5)
    config = config_cls(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                        num_key_value_heads=kv, intermediate_size=ffn, vocab_size=vocab, tie_word_embeddings=tied,
                        rope_theta=theta, max_position_embeddings=32768, dtype="bfloat16")
    out.mkdir(parents=True, exist_ok=True)
    config.to_json_file(out / "config.json")
    model = model_config_from_hf(json.loads((out / "config.json").read_text()))
    specs = {n: (s, torch.bfloat16) for n, s in hf_tensor_shapes(model).items()}
    writer = SafetensorsShardWriter(out, specs, max_shard_bytes=10**9)
    gen = torch.Generator().manual_seed(0)
    for name, (shape, dtype) in specs.items():
        writer.write(name, (torch.randn(shape, generator=gen) * 0.02).to(dtype))
    writer.close()
    return sum(torch.empty(s, dtype=torch.bfloat16, device="meta").nbytes for s, _ in specs.values())


def _warm(path: Path) -> None:
    for f in sorted(path.rglob("*")):
        if f.is_file():
            with open(f, "rb") as h:
                while h.read(1 << 24):
                    pass


def measure(task: str, src: Path, dst: Path) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    _warm(src)
    os.sync()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "benchmarks.hf.worker", task, str(src), str(dst)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def _median(runs: list[dict], key: str) -> float:
    values = sorted(r[key] for r in runs)
    return values[len(values) // 2]


def bench_size(size: str, work: Path, trials: int) -> dict:
    src = work / f"{size}-hf"
    model_bytes = write_random_model(size, src)
    runs = {"import": [], "export": [], "transformers": []}
    for _ in range(trials):
        runs["import"].append(measure("import", src, work / f"{size}-ckpt"))
        runs["export"].append(measure("export", work / f"{size}-ckpt", work / f"{size}-out"))
        runs["transformers"].append(measure("transformers", src, work / f"{size}-tf"))
    result = {"model_bytes_bf16": model_bytes, "num_parameters": model_bytes // 2, "shape": SIZES[size]}
    for task, items in runs.items():
        result[task] = {
            "wall_s": _median(items, "wall_s"),
            "durable_s": _median(items, "durable_s"),
            "peak_rss_bytes": _median(items, "peak_rss_bytes"),
            "rss_before_bytes": _median(items, "rss_before_bytes"),
            "peak_rss_over_model": round(_median(items, "peak_rss_bytes") / model_bytes, 3),
            "op_rss_over_model": round((_median(items, "peak_rss_bytes") - _median(items, "rss_before_bytes"))
                                       / model_bytes, 3),
            "runs": items}
    tf = runs["transformers"]
    result["transformers"]["from_pretrained_s"] = _median(tf, "from_pretrained_s")
    result["transformers"]["save_pretrained_s"] = _median(tf, "save_pretrained_s")
    ours_total = result["import"]["wall_s"] + result["export"]["wall_s"]
    tf_durable = result["transformers"]["durable_s"]
    result["ratios_durable"] = {  # the goal: each of ours no slower than the transformers round trip, all on disk
        "import_over_transformers_round_trip": round(result["import"]["durable_s"] / tf_durable, 3),
        "export_over_transformers_round_trip": round(result["export"]["durable_s"] / tf_durable, 3),
        "ours_total_over_transformers_total": round((result["import"]["durable_s"] + result["export"]["durable_s"]) / tf_durable, 3)}
    result["ratios"] = {
        "import_over_from_pretrained": round(result["import"]["wall_s"] / result["transformers"]["from_pretrained_s"], 3),
        "export_over_save_pretrained": round(result["export"]["wall_s"] / result["transformers"]["save_pretrained_s"], 3),
        "ours_total_over_transformers_total": round(ours_total / result["transformers"]["wall_s"], 3)}
    for name in ("hf", "ckpt", "out", "tf"):
        shutil.rmtree(work / f"{size}-{name}", ignore_errors=True)
    return result


def main(argv=None) -> int:
    args = _args(argv)
    if args.make:
        write_random_model(args.make[0], Path(args.make[1]))
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="jl-bench-hf-"))
    results = {"command": "python -m benchmarks.hf " + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
               "torch": torch.__version__, "sizes": {}}
    import transformers

    results["transformers"] = transformers.__version__
    try:
        for size in args.sizes.split(","):
            results["sizes"][size] = bench_size(size, work, args.trials)
            print(json.dumps({size: {k: v for k, v in results["sizes"][size].items() if k != "shape"}}, default=str)[:2000])
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
