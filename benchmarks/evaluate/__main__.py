"""Benchmark greedy decoding with the KV cache (trainer/generate.py) against recomputing the prefix.

    python -m benchmarks.evaluate [--hidden 256] [--layers 4] [--prompt 32] [--new 32,128] [--batch 1,8]
                                  [--out benchmarks/results/evaluate.json]

One random Llama-shaped model (transformers, fp32, CPU or one GPU) decodes the same prompts
greedily both ways in the same run: ours with the cache, the baseline ``use_cache=False``
(every step re-runs the whole prefix, the cost a decoder without a cache pays). Reported per
(batch, new tokens): tokens/s of each, the ratio cached/uncached, and how each side's time
grows when the new tokens grow 4x (cached: about 4x; recomputation: about quadratic in length).
Both sides are checked to produce the same tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from etl.core.atomic import write_json


def build_model(hidden: int, layers: int, vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
                         max_position_embeddings=4096, eos_token_id=None, bos_token_id=None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return LlamaForCausalLM(config).to(device).eval()


def run(args: argparse.Namespace) -> dict:
    from trainer.generate import greedy_decode, measure_speed

    model = build_model(args.hidden, args.layers, args.vocab)
    gen = torch.Generator().manual_seed(1)
    rows = []
    for batch in args.batch:
        prompts = torch.randint(1, args.vocab, (batch, args.prompt), generator=gen).tolist()
        assert greedy_decode(model, prompts, 8) == greedy_decode(model, prompts, 8, use_cache=False)
        for new in args.new:
            cached = measure_speed(model, prompts, new, batch)
            plain = measure_speed(model, prompts, new, batch, use_cache=False)
            rows.append({"batch": batch, "new_tokens": new, "cached": cached.to_json(), "no_cache": plain.to_json(),
                         "ratio_cached_over_no_cache": round(cached.tokens_per_s / plain.tokens_per_s, 2)})
    for row in rows:
        first = next(r for r in rows if r["batch"] == row["batch"])
        growth = row["new_tokens"] / first["new_tokens"]
        if growth > 1:
            row[f"time_growth_{growth:g}x_tokens"] = {
                side: round(row[side]["seconds"] / first[side]["seconds"], 2) for side in ("cached", "no_cache")}
    return {"model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab, "prompt_tokens": args.prompt},
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
            "machine": platform.machine(), "torch": torch.__version__, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.evaluate", description=__doc__.split("\n\n")[0])
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--hidden", type=int, default=256, help="model width")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers")
    parser.add_argument("--vocab", type=int, default=8000, help="vocabulary size")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=ints, default=[32, 128], help="new tokens per prompt, comma-separated (1x, 4x)")
    parser.add_argument("--batch", type=ints, default=[1, 8], help="batch sizes, comma-separated")
    parser.add_argument("--out", default="benchmarks/results/evaluate.json", help="result JSON")
    args = parser.parse_args(argv)
    result = run(args)
    write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
