"""Distributed tier: Hugging Face models imported with ``trainer.hf`` in TP/PP layouts.

Tiny Llama (llama3 RoPE scaling, GQA) and Qwen2 (q/k/v biases, tied embeddings) models are built
with transformers (random weights) and imported once by rank 0 in a subprocess (transformers
runs in a clean process; these workers carry the trainer's CPU shims). Then: jinglian's fp32
logits equal transformers' within LOGITS_ATOL at TP=1, TP=2 and PP=2; a model trained a few
steps (and a LoRA run, adapters merged) exports to a directory transformers loads with the
same loss on the same tokens within LOSS_ATOL; shards of another tokenizer are refused.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.distributed

from trainer import loop  # noqa: E402 (applies the CPU shims before megatron is used)
from trainer.config import apply_overrides  # noqa: E402
from trainer.data import to_torch_batch  # noqa: E402
from trainer.pretrained import read_common, use_pretrained_model  # noqa: E402
from trainer.recipes import get_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORLD = 4
ROWS = 8                 # rows of the fixed batch (tests/hf_tiny.py), divisible by every DP size
SEQ = 32
VOCAB = 300
LOGITS_ATOL = 1e-4       # fp32, same function: summation order only
LOSS_ATOL = 1e-3


def _broadcast(value):
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _run(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    subprocess.run([sys.executable, str(ROOT / "tests" / "hf_tiny.py"), *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, timeout=300)


@pytest.fixture(scope="module")
def hf_models():
    """Directory with llama/, qwen2/ (HF), their -ckpt imports, -ref.pt logits and batch.pt."""
    loop.init_distributed()
    root = None
    if dist.get_rank() == 0:
        root = tempfile.mkdtemp(prefix="jl-hf-")
        _run("make", root)
    root = Path(_broadcast(root))
    yield root
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(root, ignore_errors=True)
    loop.teardown()


class TokenBatchReader:
    """This DP rank's rows of the fixed batch, one document per row, as micro-batches."""

    domains = ("general",)

    def __init__(self, batch, tokenizer: dict, dp_rank: int, dp_size: int, micro_batch_size: int):
        rows = ROWS // dp_size
        tokens = batch["tokens"].numpy()[dp_rank * rows:(dp_rank + 1) * rows]
        labels = batch["labels"].numpy()[dp_rank * rows:(dp_rank + 1) * rows]
        self.manifest = {"tokenizer": tokenizer}
        self.micro = []
        for start in range(0, rows, micro_batch_size):
            t, lab = tokens[start:start + micro_batch_size], labels[start:start + micro_batch_size]
            self.micro.append({"tokens": t, "labels": lab, "loss_mask": np.ones(t.shape, np.float32),
                               "position_ids": np.broadcast_to(np.arange(SEQ), t.shape).copy(),
                               "segment_ids": np.zeros(t.shape, np.int32), "domain_ids": np.zeros(t.shape, np.int32)})
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]

    def __iter__(self):
        while True:
            self.position += 1
            yield self.micro[(self.position - 1) % len(self.micro)]


def imported_config(ckpt: Path, recipe: str = "tiny_cpt", tp: int = 1, pp: int = 1, **overrides):
    dp = WORLD // (tp * pp)
    values = {"pretrained": str(ckpt), "parallel.tp": tp, "parallel.pp": pp, "model.seq_len": SEQ,
              "data.micro_batch_size": 1, "data.accumulation_steps": ROWS // dp, "log_interval": 100, **overrides}
    return apply_overrides(use_pretrained_model(get_recipe(recipe), str(ckpt), values), values)


def setup(config, root: Path, ckpt: Path, **kwargs):
    batch = torch.load(root / "batch.pt")
    tokenizer = read_common(ckpt)["hf"]["tokenizer"]
    factory = lambda dp_rank, dp_size: TokenBatchReader(batch, tokenizer, dp_rank, dp_size,  # noqa: E731
                                                        config.data.micro_batch_size)
    return loop.setup(config, None, reader_factory=factory, **kwargs)


def local_micro(state):
    return [to_torch_batch(m, state.device) for m in state.reader.micro]


def forward_logits(state) -> torch.Tensor | None:
    """Full-vocabulary logits [rows, SEQ, padded vocab] of this DP rank's rows (last PP stage)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    def step(data_iterator, model):
        batch = next(data_iterator)
        output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"])
        return output, lambda out, non_loss_data=False: gather_from_tensor_model_parallel_region(out)

    micro = local_micro(state)
    for model in state.models:
        model.eval()
    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter(micro), model=state.models[0],
            num_microbatches=len(micro), seq_length=SEQ, micro_batch_size=1, forward_only=True,
            collect_non_loss_data=True)
    if not parallel_state.is_pipeline_last_stage():
        return None
    return torch.cat(outputs)


def _dp_rows():
    from megatron.core import parallel_state

    rows = ROWS // parallel_state.get_data_parallel_world_size()
    start = parallel_state.get_data_parallel_rank() * rows
    return slice(start, start + rows)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_logits_equal_transformers_at_tp1_tp2_pp2(hf_models, kind):
    reference = torch.load(hf_models / f"{kind}-ref.pt")["logits"]
    ckpt = hf_models / f"{kind}-ckpt"
    for layout in ({}, {"tp": 2}, {"pp": 2}):
        state = setup(imported_config(ckpt, **layout), hf_models, ckpt)
        logits = forward_logits(state)
        if logits is not None:
            assert logits.shape[-1] == 384
            torch.testing.assert_close(logits[..., :VOCAB], reference[_dp_rows()], atol=LOGITS_ATOL, rtol=0,
                                       msg=lambda m, where=f"{kind} {layout}": f"{where}: {m}")
            assert torch.isneginf(logits[..., VOCAB:]).all()  # padded entries take no probability
        loop.teardown()


def _check_direct_reader(save: Path) -> None:
    """The exporter's direct chunk reader gives torch.distributed.checkpoint's tensors for a
    checkpoint megatron saved from a TP/PP layout (split chunks), without falling back."""
    from trainer.dcp_reader import CheckpointTensors
    from trainer.pretrained import checkpoint_path

    reader = CheckpointTensors(checkpoint_path(save))
    for key in reader.shapes:
        if not key.startswith("optimizer."):
            assert torch.equal(reader.get(key), reader._dcp_get(key)), key
    assert reader.fallbacks == 0


def _export_and_hf_loss(save: Path, root: Path, tag: str, **export_kwargs) -> float:
    out = None
    if dist.get_rank() == 0:
        from trainer.hf import export_hf

        export_hf(save, root / f"{tag}-hf", **export_kwargs)
        _check_direct_reader(save)
        _run("loss", str(root / f"{tag}-hf"), str(root / "batch.pt"), str(root / f"{tag}-loss.pt"))
        out = torch.load(root / f"{tag}-loss.pt")["loss"]
    return _broadcast(out)


@pytest.mark.parametrize("kind, recipe, layout", [
    ("qwen2", "tiny_cpt", {"tp": 2, "pp": 2}),
    ("llama", "tiny_cpt", {"tp": 2, "parallel.distributed_optimizer": True}),
    ("llama", "tiny_lora", {"tp": 2, "lora.targets": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]}),
    ("qwen2", "tiny_sft", {"pp": 2}),
])
def test_trained_model_exports_with_the_same_loss_in_transformers(hf_models, kind, recipe, layout):
    ckpt = hf_models / f"{kind}-ckpt"
    tag = f"{kind}-{recipe}-{len(layout)}"
    save = hf_models / f"run-{tag}"
    layout = dict(layout)
    config = imported_config(ckpt, recipe, tp=layout.pop("tp", 1), pp=layout.pop("pp", 1), steps=3,
                             **{"optim.warmup_steps": 1, "optim.lr": 1e-2}, **layout)
    state = setup(config, hf_models, ckpt)
    losses = loop.train(state, save=str(save))
    trained = loop.evaluate(state, local_micro(state))
    loop.teardown()
    start = torch.load(hf_models / f"{kind}-ref.pt")["loss"]
    assert trained < start - 0.05, (losses, trained, start)  # the weights did change
    assert json.loads((save / "hf" / "config.json").read_text())["architectures"]
    hf_loss = _export_and_hf_loss(save, hf_models, tag)
    assert abs(hf_loss - trained) < LOSS_ATOL, (kind, recipe, hf_loss, trained)


def test_model_trained_from_scratch_exports_as_llama(hf_models):
    """A tiny recipe run (no import) exports with a fresh Llama config and the given tokenizer."""
    config = apply_overrides(get_recipe("tiny"), {"parallel.tp": 2, "model.seq_len": SEQ, "model.vocab_size": VOCAB,
                                                  "data.micro_batch_size": 1, "data.accumulation_steps": ROWS // 2,
                                                  "steps": 2, "log_interval": 100})
    batch = torch.load(hf_models / "batch.pt")
    state = loop.setup(config, None, reader_factory=lambda r, n: TokenBatchReader(batch, {}, r, n, 1))
    save = hf_models / "run-scratch"
    loop.train(state, save=str(save))
    trained = loop.evaluate(state, local_micro(state))
    loop.teardown()
    hf_loss = _export_and_hf_loss(save, hf_models, "scratch", tokenizer=str(hf_models / "tokenizer"))
    assert abs(hf_loss - trained) < LOSS_ATOL, (hf_loss, trained)


def test_shards_of_another_tokenizer_are_refused(hf_models, shard_dir):
    ckpt = hf_models / "llama-ckpt"
    config = imported_config(ckpt)
    with pytest.raises(ValueError, match=r"were tokenised with vocab_size=\d+ eos_id=0 but pretrained .* "
                                         r"expects vocab_size=\d+ eos_id=0"):
        loop.setup(config, str(shard_dir))
    loop.teardown()
