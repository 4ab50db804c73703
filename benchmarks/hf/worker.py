"""One measured operation in its own process (peak RSS is per process): ``python -m
benchmarks.hf.worker <task> SRC DST`` prints one JSON line with the wall time of the operation
(``wall_s``: until it returns), the time ``os.sync()`` then takes to put what it wrote on disk
(``sync_s``; ``durable_s`` is their sum), the resident memory before it and the process's peak
resident memory (getrusage)."""
from __future__ import annotations

import json
import os
import resource
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str]) -> int:
    task, src, dst = argv
    # every library either side uses is imported before the clock starts (its import time and
    # memory are not the operation's): transformers for the baseline, dist checkpointing for ours
    import torch  # noqa: F401
    import torch.distributed.checkpoint  # noqa: F401
    import transformers  # noqa: F401

    from trainer.hf import export_hf, import_hf

    before = _rss_bytes()
    start = time.perf_counter()
    parts = {}
    if task == "import":
        import_hf(src, dst)
    elif task == "export":
        export_hf(src, dst)
    elif task == "transformers":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
        parts["from_pretrained_s"] = time.perf_counter() - start
        model.save_pretrained(dst, max_shard_size="5GB")
        parts["save_pretrained_s"] = time.perf_counter() - start - parts["from_pretrained_s"]
    else:
        raise SystemExit(f"unknown task {task}")
    wall = time.perf_counter() - start
    os.sync()  # what the operation left in the page cache, written out: both sides end durable on disk
    durable = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"task": task, "wall_s": wall, "sync_s": durable - wall, "durable_s": durable,
                      "rss_before_bytes": before, "peak_rss_bytes": peak, **parts}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
