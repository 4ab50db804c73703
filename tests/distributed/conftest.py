"""Distributed tier fixtures: a tiny real shard set built once (rank 0) from tests/data."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

TOKENIZER_VOCAB = 1000


def _build_shards(root: Path, data_dir: Path) -> Path:
    from shards.build import build_local
    from shards.config import ShardsConfig
    from shards.tokenizer import train_bpe_tokenizer

    texts, corpus = [], root / "corpus"
    for name, group, n in (("general_en", "general", 120), ("general_zh", "general", 60),
                           ("domain_medical", "domain", 50), ("expert", "expert", 30)):
        (corpus / group).mkdir(parents=True, exist_ok=True)
        with open(data_dir / f"{name}.jsonl", encoding="utf-8") as src, \
                open(corpus / group / f"{name}.jsonl", "w", encoding="utf-8") as dst:
            for line in list(src)[:n]:
                record = json.loads(line)
                record["text"] = record["text"][:600]
                texts.append(record["text"])
                dst.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(corpus / "domain" / "sft.jsonl", "w", encoding="utf-8") as dst:
        for i in range(12):
            dst.write(json.dumps({"id": f"sft-{i}", "domain": "medical", "instruction": "Name the organ.",
                                  "input": f"case {i}", "output": "The liver filters blood."}) + "\n")
    tokenizer = train_bpe_tokenizer(texts, TOKENIZER_VOCAB, root / "tokenizer")
    out = root / "shards"
    inputs = [f"{g}={corpus / g}" for g in ("general", "domain", "expert")]
    build_local(inputs, str(out), ShardsConfig(samples_per_shard=12), {"test": True},
                tokenizer_path=str(tokenizer), num_partitions=2)
    return out


@pytest.fixture(scope="session")
def shard_dir(data_dir):
    """Path of a shard set shared by all ranks (built by rank 0, path broadcast)."""
    import torch.distributed as dist

    from trainer import loop

    loop.init_distributed()
    box = [None]
    if dist.get_rank() == 0:
        root = Path(tempfile.mkdtemp(prefix="jl-shards-"))
        box = [str(_build_shards(root, data_dir))]
    dist.broadcast_object_list(box, src=0)
    yield Path(box[0])
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(Path(box[0]).parent, ignore_errors=True)


# Outside torchrun (the plain unit run) these modules are not even imported: importing
# trainer.loop applies the CPU shims to torch, which must not leak into other tests.
collect_ignore_glob = [] if "WORLD_SIZE" in os.environ else ["test_*.py"]
