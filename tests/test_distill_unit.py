"""Unit tier: the pure parts of distillation, EWC, FGM, fp16/LoRA config (no megatron, one process).

The multi-process checks (TP=2 equals one process, layouts, fp16 overflow) are in
tests/distributed/test_distill.py.
"""
from __future__ import annotations

import json

import pytest
import torch

from trainer.config import apply_overrides
from trainer.distill import distillation_loss, vocab_parallel_kl, vocab_parallel_log_softmax
from trainer.ewc import ewc_penalty
from trainer.fgm import fgm_perturbation
from trainer.metrics import StepMetrics
from trainer.recipes import get_recipe


def _direct_kl(student, teacher, temperature):
    log_p_s = torch.log_softmax(student / temperature, -1)
    p_t = torch.softmax(teacher / temperature, -1)
    return torch.where(p_t > 0, p_t * (torch.log(p_t) - log_p_s), torch.zeros(())).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_and_gradient_equal_direct_computation(temperature):
    gen = torch.Generator().manual_seed(0)
    student = (torch.randn(2, 3, 11, generator=gen) * 4).requires_grad_(True)
    teacher = torch.randn(2, 3, 11, generator=gen) * 4
    weights = torch.rand(2, 3, generator=gen)
    kl = vocab_parallel_kl(student, teacher, temperature)
    (kl * weights).sum().backward()
    ours = student.grad.clone()
    student.grad = None
    direct = _direct_kl(student, teacher, temperature)
    (direct * weights).sum().backward()
    torch.testing.assert_close(kl, direct.detach())
    torch.testing.assert_close(ours, student.grad)
    assert (kl >= -1e-6).all()


def test_kl_zero_for_equal_logits_and_padded_vocab_ignored():
    logits = torch.randn(4, 10)
    logits[:, 8:] = float("-inf")  # Megatron's padded vocabulary rows
    kl = vocab_parallel_kl(logits.clone().requires_grad_(True), logits, 1.0)
    torch.testing.assert_close(kl, torch.zeros(4), atol=1e-6, rtol=0)
    assert torch.isfinite(kl).all()
    softmax = vocab_parallel_log_softmax(logits).exp()
    assert softmax[:, 8:].eq(0).all() and softmax.sum(-1).sub(1).abs().max() < 1e-6


def test_distillation_loss_weights():
    kl, ce, mse = torch.tensor([2.0]), torch.tensor([3.0]), torch.tensor([5.0])
    # alpha * T^2 * KL + (1 - alpha) * CE + w * MSE with the guide's alpha = 0.7
    assert distillation_loss(kl, ce, None, 0.7, 2.0, 1.0).item() == pytest.approx(0.7 * 4 * 2 + 0.3 * 3)
    assert distillation_loss(kl, ce, mse, 0.7, 1.0, 0.5).item() == pytest.approx(1.4 + 0.9 + 2.5)


def test_ewc_penalty_formula_and_zero_at_theta_old():
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    fisher = [torch.rand(3, 4, generator=gen), torch.rand(5, generator=gen)]
    old = [p.clone() for p in params]
    assert ewc_penalty(fisher, params, old, 10.0).item() == 0.0
    moved = [p + 0.1 for p in params]
    expected = 0.5 * 10.0 * sum((f * 0.01).sum() for f in fisher)
    assert ewc_penalty(fisher, moved, old, 10.0).item() == pytest.approx(float(expected), rel=1e-5)


def test_fgm_perturbation_has_norm_epsilon_over_all_shards():
    gen = torch.Generator().manual_seed(2)
    full = torch.randn(10, 4, generator=gen)
    shards = list(full.chunk(2, dim=0))  # vocabulary halves: one vector, one norm
    moves = fgm_perturbation(shards, 0.5)
    torch.testing.assert_close(torch.cat(moves), full * (0.5 / full.norm()))
    assert torch.cat(moves).norm().item() == pytest.approx(0.5, rel=1e-5)
    assert all(m.abs().sum() == 0 for m in fgm_perturbation([torch.zeros(3), torch.zeros(2)], 1.0))
    assert all(m.abs().sum() == 0 for m in fgm_perturbation([torch.tensor([1.0, float("inf")])], 1.0))


def test_lora_defaults_and_short_target_names():
    config = get_recipe("tiny_lora")
    assert config.lora.dropout == 0.1
    changed = apply_overrides(config, {"lora.targets": ["linear_qkv", "fc1", "fc2", "proj"], "lora.dropout": 0.05})
    assert changed.lora.targets == ("linear_qkv", "linear_fc1", "linear_fc2", "linear_proj")
    with pytest.raises(ValueError, match="lora.dropout"):
        apply_overrides(config, {"lora.dropout": 1.0})
    with pytest.raises(ValueError, match="lora.targets"):
        apply_overrides(config, {"lora.targets": ["fc3"]})


def test_distill_ewc_fp16_fgm_config_validation():
    tiny = get_recipe("tiny")
    config = apply_overrides(tiny, {"mode": "distill", "distill.teacher": "/t", "distill.student_layer": 2})
    assert (config.distill.alpha, config.distill.temperature) == (0.7, 1.0)
    for bad, match in (({"mode": "distill"}, "distill.teacher"),
                       ({"distill.teacher": "/t"}, "distill.teacher"),
                       ({"mode": "distill", "distill.teacher": "/t", "parallel.pp": 2}, "parallel.pp"),
                       ({"distill.alpha": 1.5}, "distill.alpha"),
                       ({"fgm.epsilon": 1.0, "parallel.distributed_optimizer": True}, "fgm.epsilon"),
                       ({"fp16.hysteresis": 0}, "fp16.hysteresis"),
                       ({"ewc.lambda": -1}, "ewc.lambda")):
        with pytest.raises(ValueError, match=match):
            apply_overrides(tiny, bad)
    ewc = apply_overrides(tiny, {"ewc.fisher": "/f", "ewc.lambda": 5000, "precision": "fp16",
                                 "fp16.initial_loss_scale": 256})
    assert (ewc.ewc.lambda_, ewc.precision, ewc.fp16.initial_loss_scale) == (5000.0, "fp16", 256.0)


def test_train_cli_flags_reach_the_config():
    from trainer.train import build_arg_parser, resolve_config

    args = build_arg_parser().parse_args(["--shards", "synthetic", "--mode", "distill", "--teacher", "/t",
                                          "--ewc", "/f", "--set", "ewc.lambda=10"])
    config = resolve_config(args, {})
    assert (config.mode, config.distill.teacher, config.ewc.fisher, config.ewc.lambda_) == ("distill", "/t", "/f", 10.0)


def test_fisher_cli_help():
    from trainer.fisher import build_arg_parser

    text = build_arg_parser().format_help()
    for flag in ("--load", "--shards", "--out", "--batches", "--tp", "--pp", "--set"):
        assert flag in text


def test_metrics_extra_in_line_and_json():
    row = StepMetrics(step=3, loss=1.0, grad_norm=None, lr=1e-3, tokens_per_s=1.0, tflops_per_gpu=0.0, mfu=None,
                      data_wait_pct=0.0, memory_gib=0.1, step_time_s=1.0, loss_by_domain={}, tokens_by_domain={},
                      consumed_tokens=10, extra={"loss_scale": 128.0, "skipped_steps": 2})
    assert "loss_scale 128 | skipped_steps 2" in row.line(10)
    data = json.loads(json.dumps(row.to_json()))
    assert data["loss_scale"] == 128.0 and data["skipped_steps"] == 2 and "extra" not in data
