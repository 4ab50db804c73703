#!/usr/bin/env bash
# Continued pretraining of a 1.5B-class imported model in bf16 on one H100/H200: tokens/s and MFU.
#
#   bash benchmarks/hf/gpu.sh [WORK_DIR]        (needs: pip install '.[trainer,shards,gpu]'; < 10 min)
#
# Offline: a random-weight Qwen2.5-1.5B-shaped bf16 model is written as sharded safetensors,
# imported with `python -m trainer.hf import`, trained with the continued-pretraining recipe
# (model shape from the checkpoint, Transformer Engine layer spec, bf16, seq 4096) on the
# synthetic token stream, and exported back. Figures go to benchmarks/results/hf_gpu.json:
# median tokens/s and MFU over the logged steps after the first (compile/warm-up) ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f scripts/env.sh ] && source scripts/env.sh
WORK="${1:-$(mktemp -d /tmp/jl-gpu-XXXX)}"
STEPS="${STEPS:-40}"
MICRO="${MICRO:-2}"
SEQ="${SEQ:-4096}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import transformer_engine, torch; assert torch.cuda.is_available(); print('TE', transformer_engine.__version__)"

t0=$(date +%s)
python -m benchmarks.hf --make qwen2.5-1.5b "$WORK/hf"
python -m trainer.hf import "$WORK/hf" "$WORK/ckpt" --seq-len "$SEQ"
t1=$(date +%s)
torchrun --standalone --nproc_per_node 1 -m trainer.train --pretrained "$WORK/ckpt" --shards synthetic \
  --save "$WORK/run" --steps "$STEPS" --metrics "$WORK/metrics.jsonl" \
  --set precision=bf16 --set model.seq_len="$SEQ" --set model.transformer_impl=auto \
  --set data.micro_batch_size="$MICRO" --set data.accumulation_steps=8 \
  --set optim.warmup_steps=5 --set log_interval=1 --set save_interval=0 \
  --set parallel.distributed_optimizer=false
t2=$(date +%s)
python -m trainer.hf export "$WORK/run" "$WORK/out"
t3=$(date +%s)
python - "$WORK" "$t0" "$t1" "$t2" "$t3" <<'PY'
import json, statistics, sys, torch
work, t0, t1, t2, t3 = sys.argv[1], *map(int, sys.argv[2:])
rows = [json.loads(l) for l in open(f"{work}/metrics.jsonl")]
steady = rows[5:] or rows
out = {"gpu": torch.cuda.get_device_name(), "model": "qwen2.5-1.5b shape, random bf16, imported",
       "steps": len(rows), "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in steady),
       "mfu_median": statistics.median(r["mfu"] for r in steady if r.get("mfu") is not None) if steady[0].get("mfu") is not None else None,
       "tflops_per_gpu_median": statistics.median(r["tflops_per_gpu"] for r in steady),
       "memory_gib_max": max(r.get("memory_gib") or 0 for r in rows),
       "final_loss": rows[-1]["loss"], "make_and_import_s": t1 - t0, "train_s": t2 - t1, "export_s": t3 - t2}
print(json.dumps(out, indent=2))
open("benchmarks/results/hf_gpu.json", "w").write(json.dumps(out, indent=2) + "\n")
PY
