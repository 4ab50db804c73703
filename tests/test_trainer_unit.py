"""Trainer unit tests (single process, no torchrun): config, recipes, masks, metrics, shims, CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from etl.core.metrics import read_metrics
from trainer.config import apply_overrides, parse_override
from trainer.data import SyntheticReader, attention_mask_from_segments, to_torch_batch
from trainer.metrics import StepMetrics, gpu_peak_tflops, throughput, training_flops_per_token
from trainer.recipes import RECIPES, get_recipe


def test_every_recipe_is_valid_and_has_llama_options():
    for name in RECIPES:
        config = get_recipe(name)
        assert config.name == name
    big = get_recipe("llama_7b").model
    assert (big.normalization, big.activation, big.position_embedding) == ("RMSNorm", "swiglu", "rope")
    assert big.query_groups == 8 < big.num_attention_heads  # grouped-query attention


def test_finetune_recipes_use_the_seed_defaults():
    sft = get_recipe("sft_1b3")
    assert (sft.optim.lr, sft.optim.warmup_steps, sft.data.accumulation_steps) == (3e-5, 500, 8)
    lora = get_recipe("lora_1b3")
    assert (lora.lora.rank, lora.lora.alpha, lora.lora.targets) == (16, 32.0, ("linear_qkv", "linear_proj"))
    assert get_recipe("tiny").optim.weight_decay == 0.01


def test_overrides_are_validated_with_the_dotted_name():
    config = apply_overrides(get_recipe("tiny"), {"optim.lr": 1e-2, "parallel.tp": 2})
    assert config.optim.lr == 1e-2 and config.parallel.tp == 2
    with pytest.raises(ValueError, match="parallel.tp"):
        apply_overrides(get_recipe("tiny"), {"parallel.tp": 3})  # 4 heads not divisible by 3
    with pytest.raises(ValueError, match="model.num_layers"):
        apply_overrides(get_recipe("tiny"), {"parallel.pp": 3})
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(get_recipe("tiny"), {"optim.learning_rate": 1.0})
    with pytest.raises(ValueError, match="lora.targets"):
        apply_overrides(get_recipe("tiny_lora"), {"lora.targets": ["embedding"]})
    assert parse_override("data.accumulation_steps=8") == ("data.accumulation_steps", 8)
    with pytest.raises(ValueError, match="key=value"):
        parse_override("optim.lr")


def test_attention_mask_is_block_diagonal_causal():
    segments = torch.tensor([[0, 0, 0, 1, 1, -1]])
    allowed = ~attention_mask_from_segments(segments)[0, 0]
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],   # padding attends only to itself (no empty softmax row)
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_synthetic_reader_contract_and_resume():
    reader = SyntheticReader(dp_rank=1, dp_size=2, seq_len=32, micro_batch_size=2, seed=3)
    stream = iter(reader)
    first = [next(stream) for _ in range(3)]
    state = json.loads(json.dumps(reader.state_dict()))
    expected = [next(stream) for _ in range(2)]
    resumed = SyntheticReader(dp_rank=1, dp_size=2, seq_len=32, micro_batch_size=2, seed=3)
    resumed.load_state_dict(state)
    again = iter(resumed)
    for want in expected:
        got = next(again)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    batch = first[0]
    # no label crosses a document boundary: where the mask is 1, the label is in the same segment
    seg = batch["segment_ids"]
    crossing = np.zeros_like(seg, dtype=bool)
    crossing[:, :-1] = seg[:, :-1] != seg[:, 1:]
    assert not (batch["loss_mask"][crossing] > 0).any()
    torch_batch = to_torch_batch(batch, torch.device("cpu"))
    assert torch_batch["attention_mask"].shape == (2, 1, 32, 32)


def test_flops_per_token_matches_the_hand_count():
    model = get_recipe("llama_1b3").model  # 24 x 2048, 16 heads, 8 KV groups, ffn 5504, s 2048
    h, s, f, v = 2048, 2048, 5504, 32000
    h_kv = 8 * 128
    per_layer = 2 * h * (h + 2 * h_kv) + 4 * s * h + 2 * h * h + 2 * 3 * h * f
    assert training_flops_per_token(model, v) == 3 * (24 * per_layer + 2 * h * v)
    # sanity: ~6 x parameters + attention term, i.e. about 1e10 FLOPs per token for 1.3B
    assert 8e9 < training_flops_per_token(model, v) < 1.3e10


def test_gpu_peaks_and_mfu():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA H200") == 989.4
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_peak_tflops(None) is None and gpu_peak_tflops("Some CPU") is None
    tokens_per_s, tflops, mfu = throughput(1_000_000, 2.0, 6e9, 8, 989.4)
    assert tokens_per_s == 500_000
    assert tflops == pytest.approx(500_000 * 6e9 / 8 / 1e12)
    assert mfu == pytest.approx(tflops / 989.4)
    assert throughput(10, 1.0, 1.0, 1, None)[2] is None


def test_metrics_line_jsonl_and_report(tmp_path):
    from trainer.metrics import MetricsWriter
    from trainer.report import write_report

    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    for step, loss in ((1, 5.0), (2, 4.0), (2, 3.9), (3, 3.5)):  # step 2 repeated (a resume)
        writer.write(StepMetrics(step=step, loss=loss, grad_norm=1.0, lr=1e-3, tokens_per_s=100.0,
                                 tflops_per_gpu=0.1, mfu=None, data_wait_pct=2.0, memory_gib=0.5,
                                 step_time_s=1.0, loss_by_domain={"general": loss},
                                 tokens_by_domain={"general": 64}, consumed_tokens=64 * step))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[1]["loss"] == 3.9
    line = StepMetrics(**{**rows[0], "mfu": 0.41}).line(10)
    for field in ("step 1/10", "loss 5.0000", "grad_norm", "lr", "tokens/s", "TFLOP/s/GPU", "MFU 41.0%",
                  "data_wait 2.0%", "mem 0.50 GiB", "general=5.000"):
        assert field in line
    html_path = write_report(tmp_path / "metrics.jsonl", tmp_path)
    assert (tmp_path / "report.png").stat().st_size > 0 and "last_loss" in html_path.read_text()


SHIM_CHECK = r"""
import torch
from trainer.cpu_shims import maybe_apply_cpu_shims
assert maybe_apply_cpu_shims() is True
assert torch.cuda.current_device() == torch.device("cpu")
assert torch.zeros(2, device="cuda").device.type == "cpu"
assert torch.ones(1).to("cuda").device.type == "cpu"
assert torch.ones(1).cuda().device.type == "cpu"
assert torch.ones(1).type() == "torch.cuda.FloatTensor"
assert torch.ones(1).type(torch.float64).dtype == torch.float64
torch.cuda.synchronize()
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
tracker = get_cuda_rng_tracker()
tracker.add("model-parallel-rng", 5)
torch.manual_seed(0)
outside_before = torch.get_rng_state()
with tracker.fork():
    a = torch.rand(3)
assert torch.equal(torch.get_rng_state(), outside_before)  # fork leaves the default stream alone
with tracker.fork():
    b = torch.rand(3)
assert not torch.equal(a, b)                                # the tracked stream advanced
tracker.reset(); tracker.add("model-parallel-rng", 5)
with tracker.fork():
    assert torch.equal(torch.rand(3), a)                    # same seed, same numbers
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shims apply only without CUDA")
def test_cpu_shims_redirect_cuda_calls():
    # a subprocess: the shims patch torch globally and must not leak into other tests
    result = subprocess.run([sys.executable, "-c", SHIM_CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_cli_help_and_resolved_config():
    from trainer.train import build_arg_parser, main

    help_text = build_arg_parser().format_help()
    for flag in ("--recipe", "--shards", "--save", "--load", "--tp", "--pp", "--steps", "--set",
                 "--pretrained", "--exit-at-step", "--report"):
        assert flag in help_text
    assert main(["--recipe", "tiny", "--shards", "synthetic", "--tp", "2", "--set", "optim.lr=1e-3",
                 "--print-config"]) == 0
