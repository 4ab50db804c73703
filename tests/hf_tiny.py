"""Tiny Hugging Face models built locally (random weights, no download) for the trainer.hf tests.

Also a script, so the distributed tier can run transformers in a clean process (the trainer's
CPU shims, applied in the torchrun workers, are not meant for transformers):

    python tests/hf_tiny.py make <dir>                  llama/ qwen2/ (+ tokenizer) and their imports
    python tests/hf_tiny.py loss <hf dir> <batch.pt> <out.pt>   logits and masked mean loss
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

VOCAB = 300
SEQ = 32
TEXTS = ["the liver filters blood and stores energy", "tensor parallel layers split the weights",
         "continued pretraining keeps the tokenizer", "肝脏过滤血液", "数据并行复制模型"] * 20


def make_tokenizer(out: Path) -> Path:
    """A small byte-level BPE in the project's format (EOS ``<|endoftext|>``)."""
    from shards.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(TEXTS, 290, out)


def make_model(kind: str, out: Path, dtype: torch.dtype = torch.float32, tokenizer: Path | None = None,
               max_shard_size: str | None = None, seed: int = 0) -> Path:
    """Save a tiny random ``llama`` (llama3 RoPE scaling, GQA, untied) or ``qwen2`` (q/k/v biases,
    tied embeddings) model: 2 layers x 64 wide, 4 heads / 2 KV heads, vocab 300."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    shape = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                 bos_token_id=None, eos_token_id=0)
    if kind == "llama":
        config = LlamaConfig(**shape, rope_theta=500000.0, tie_word_embeddings=False,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
        model = LlamaForCausalLM(config)
    else:
        config = Qwen2Config(**shape, rope_theta=1000000.0, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # non-trivial norms and biases, so a mis-mapped one shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(1.0, 0.1)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.1)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(out, **kwargs)
    if tokenizer is not None:
        for path in tokenizer.iterdir():
            (out / path.name).write_bytes(path.read_bytes())
    return out


def fixed_batch(seed: int = 0, rows: int = 8) -> dict[str, torch.Tensor]:
    """Token rows (one document each) with labels shifted by one and a full loss mask."""
    seq = torch.randint(1, VOCAB, (rows, SEQ + 1), generator=torch.Generator().manual_seed(seed))
    return {"tokens": seq[:, :-1].contiguous(), "labels": seq[:, 1:].contiguous()}


def hf_logits_and_loss(hf_dir: Path, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """transformers' fp32 logits of ``batch['tokens']`` and the mean cross-entropy on its labels."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(batch["tokens"]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
    return logits, float(loss)


def main(argv: list[str]) -> int:
    if argv[0] == "make":
        from trainer.hf import import_hf

        root = Path(argv[1])
        tokenizer = make_tokenizer(root / "tokenizer")
        batch = fixed_batch()
        torch.save(batch, root / "batch.pt")
        for kind in ("llama", "qwen2"):
            hf_dir = make_model(kind, root / kind, tokenizer=tokenizer)
            logits, loss = hf_logits_and_loss(hf_dir, batch)
            torch.save({"logits": logits, "loss": loss}, root / f"{kind}-ref.pt")
            import_hf(str(hf_dir), root / f"{kind}-ckpt")
        return 0
    if argv[0] == "loss":
        logits, loss = hf_logits_and_loss(Path(argv[1]), torch.load(argv[2]))
        torch.save({"logits": logits, "loss": loss}, argv[3])
        print(json.dumps({"loss": loss}))
        return 0
    raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
