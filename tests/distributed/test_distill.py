"""Distributed tier: distillation, EWC, FGM, fp16 loss scaling and LoRA options over 4 gloo ranks.

Run with the rest of the tier: ``torchrun --standalone --nproc_per_node 4 -m pytest -q -p
no:cacheprovider -m distributed tests/distributed``. Layout tests start every layout from one
saved checkpoint and feed one fixed global batch split by data-parallel rank (as
test_trainer.py), so they must agree to fp32 round-off.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.distributed

from test_trainer import LAYOUT_ATOL, fixed_reader, global_batches, local_batches, tiny_config  # noqa: E402

from trainer import checkpoint as ckpt  # noqa: E402
from trainer import ewc as ewc_lib  # noqa: E402
from trainer import loop  # noqa: E402 (applies the CPU shims before megatron is used)
from trainer import lora as lora_lib  # noqa: E402
from trainer.config import apply_overrides  # noqa: E402
from trainer.distill import vocab_parallel_kl  # noqa: E402

SMALL_STUDENT = {"model.hidden_size": 32, "model.ffn_hidden_size": 64, "seed": 99}


@pytest.fixture(scope="module", autouse=True)
def distributed():
    loop.init_distributed()
    yield
    loop.teardown()


@pytest.fixture(scope="module")
def shared_dir():
    box = [tempfile.mkdtemp(prefix="jl-distill-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    yield Path(box[0])
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(box[0], ignore_errors=True)


@pytest.fixture(scope="module")
def teacher(shared_dir, shard_dir):
    """A tiny model that has learned the test corpus (30 steps streamed from the shards), and two
    fixed batches of it (the students' training data)."""
    config = tiny_config(steps=30, **{"optim.warmup_steps": 2, "optim.decay_style": "constant"})
    state = loop.setup(config, str(shard_dir))
    losses = loop.train(state, save=str(shared_dir / "teacher"))
    assert losses[-1] < losses[0] - 0.5, losses
    return shared_dir / "teacher", global_batches(shard_dir, 2, seed=11)


def corpus_loss(state, batches) -> float:
    return float(np.mean([loop.evaluate(state, local_batches(state, b)) for b in batches]))


def test_vocab_parallel_kl_tp2_equals_direct():
    """KL and its gradient from vocabulary halves on 2 TP ranks equal the full computation."""
    config = tiny_config(tp=2)
    loop.init_parallel(config)
    from megatron.core import parallel_state

    gen = torch.Generator().manual_seed(5)
    student = torch.randn(3, 5, 16, generator=gen) * 3
    teacher = torch.randn(3, 5, 16, generator=gen) * 3
    student[..., 14:] = teacher[..., 14:] = float("-inf")  # padded vocabulary on rank 1's half
    weights = torch.rand(3, 5, generator=gen)
    temperature = 2.0
    full = student.clone().requires_grad_(True)
    log_p_s = torch.log_softmax(full / temperature, -1)
    p_t = torch.softmax(teacher / temperature, -1)
    direct = torch.where(p_t > 0, p_t * (torch.log(p_t) - log_p_s), torch.zeros(())).sum(-1)
    (direct * weights).sum().backward()
    rank = parallel_state.get_tensor_model_parallel_rank()
    local = student[..., rank * 8:(rank + 1) * 8].clone().requires_grad_(True)
    kl = vocab_parallel_kl(local, teacher[..., rank * 8:(rank + 1) * 8], temperature,
                           parallel_state.get_tensor_model_parallel_group())
    (kl * weights).sum().backward()
    torch.testing.assert_close(kl, direct.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(local.grad, full.grad[..., rank * 8:(rank + 1) * 8], atol=1e-6, rtol=1e-5)
    loop.teardown()


def distill_config(teacher_path, tp=1, **overrides):
    values = {"mode": "distill", "distill.teacher": str(teacher_path), "steps": 3, **SMALL_STUDENT}
    values.update(overrides)
    return tiny_config(tp=tp, **values)


def test_distillation_tp2_equals_one_process_and_projection_is_saved(shared_dir, teacher):
    """A 32-wide student distilled from the 64-wide teacher with layer-2 -> layer-3 MSE through
    the learned projection: TP=2 (sequence parallel) gives the TP=1 losses; the projection is
    trained, checkpointed and restored."""
    teacher_path, batches = teacher
    extra = {"distill.student_layer": 2, "distill.teacher_layer": 3, "distill.temperature": 2.0}
    results = {}
    for tp in (1, 2):
        config = distill_config(teacher_path, tp=tp, **extra)
        state = loop.setup(config, None, reader_factory=fixed_reader(batches, config, repeat=True))
        proj = state.models[0].module.distill_projection
        assert proj.weight.shape == (64, 32)
        before = proj.weight.detach().clone()
        results[tp] = loop.train(state, save=str(shared_dir / f"student-tp{tp}"))
        assert not torch.equal(before, proj.weight), "projection not trained"
    np.testing.assert_allclose(results[2], results[1], atol=LAYOUT_ATOL, rtol=0)
    resumed = loop.setup(distill_config(teacher_path, tp=2, **extra), None, load=str(shared_dir / "student-tp2"),
                         reader_factory=fixed_reader(batches, config, repeat=True))
    assert torch.equal(resumed.models[0].module.distill_projection.weight, proj.weight)


def test_distilled_student_beats_plain_student(teacher, shard_dir):
    """Same small student, same two training batches, same 10 steps: with the teacher it reaches
    a lower cross-entropy on the teacher's corpus (batches it did not train on) than without.
    (On its own two batches the plain student is lower: it fits them, the teacher generalises.)"""
    teacher_path, batches = teacher
    corpus = global_batches(shard_dir, 4, seed=99)
    losses = {}
    for name, values in (("plain", {}), ("distilled", {"mode": "distill", "distill.teacher": str(teacher_path),
                                                       "distill.temperature": 2.0})):
        config = tiny_config(steps=10, **SMALL_STUDENT, **values,
                             **{"optim.warmup_steps": 1, "optim.decay_style": "constant"})
        state = loop.setup(config, None, reader_factory=fixed_reader(batches, config, repeat=True))
        loop.train(state)
        losses[name] = corpus_loss(state, corpus)
    assert losses["distilled"] < losses["plain"] - 0.02, losses


def test_ewc_penalty_zero_at_theta_old_and_equal_across_layouts(shared_dir, shard_dir):
    """The Fisher of one global batch is the same from TP=1 x DP=4 and TP=2 x PP=2; the penalty is
    0 at theta_old, equals the full-model sum in every TP/PP/DP layout, and EWC training steps
    agree across layouts."""
    batches = global_batches(shard_dir, 2, seed=3)
    init_config = tiny_config(steps=2)
    state = loop.setup(init_config, None, reader_factory=fixed_reader(batches, init_config))
    loop.save_state(state, str(shared_dir / "task_a"))  # theta_old (step 0)
    loop.train(state, save=str(shared_dir / "task_b"))  # moved weights
    for name, layout in (("f1", {}), ("f2", {"tp": 2, "pp": 2})):
        config = tiny_config(pretrained=str(shared_dir / "task_a"), **layout)
        fstate = loop.setup(config, None, reader_factory=fixed_reader(batches, config))
        fisher = ewc_lib.compute_fisher(fstate, 2)
        assert sum(float(f.sum()) for f in fisher.values()) > 0
        ewc_lib.save_fisher(fstate.models, fisher, shared_dir / name, {"batches": 2})
    # reference: DP=4, every rank holds the whole model; the direct full sum over all tensors
    ref_state = loop.setup(tiny_config(pretrained=str(shared_dir / "task_b")), None,
                           reader_factory=fixed_reader(batches, init_config))
    one = ewc_lib.load_fisher(ref_state.models, shared_dir / "f1")
    two = ewc_lib.load_fisher(ref_state.models, shared_dir / "f2")
    assert len(one) == len(two) == len(list(ref_state.models[0].parameters()))
    for (_, f1, t1), (_, f2, t2) in zip(one, two):
        torch.testing.assert_close(f1, f2, atol=1e-9, rtol=1e-4)
        assert torch.equal(t1, t2)
    direct = float(ewc_lib.ewc_penalty([f for _, f, _ in one], [p for p, _, _ in one], [t for _, _, t in one], 1e3))
    assert direct > 0
    ewc = {"ewc.fisher": str(shared_dir / "f2"), "ewc.lambda": 1e3, "optim.warmup_steps": 0}
    reference = None
    at_old = loop.setup(tiny_config(pretrained=str(shared_dir / "task_a"), tp=2, pp=2, **ewc), None,
                        reader_factory=fixed_reader(batches, init_config))
    assert at_old.extras.ewc.value() == 0.0
    for layout in ({}, {"tp": 2}, {"tp": 2, "pp": 2}):
        config = tiny_config(pretrained=str(shared_dir / "task_b"), steps=2, **layout, **ewc)
        state = loop.setup(config, None, reader_factory=fixed_reader(batches, config))
        assert state.extras.ewc.value() == pytest.approx(direct, rel=1e-5), layout
        penalties = [loop.train_step(state, local_batches(state, b))["extra"]["ewc_penalty"] for b in batches]
        reference = reference or penalties
        np.testing.assert_allclose(penalties, reference, rtol=1e-4, err_msg=str(layout))


def test_fgm_adversarial_loss_higher_and_tp2_equals_one_process(shard_dir):
    """FGM: the perturbed pass's loss exceeds the clean loss; TP=2 gives the TP=1 losses (the
    initialisation is the same for any TP size: full weights are drawn on CPU, then split)."""
    batches = global_batches(shard_dir, 2, seed=4)
    results = {}
    for tp in (1, 2):
        config = tiny_config(tp=tp, **{"fgm.epsilon": 1.0, "optim.warmup_steps": 0})
        state = loop.setup(config, None, reader_factory=fixed_reader(batches, config))
        steps = [loop.train_step(state, local_batches(state, b)) for b in batches]
        results[tp] = [(r["loss"], r["extra"]["adv_loss"]) for r in steps]
        for clean, adversarial in results[tp]:
            assert adversarial > clean + 1e-3, results[tp]
    np.testing.assert_allclose(results[2], results[1], atol=LAYOUT_ATOL, rtol=0)


def _weights(state):
    return [p.detach().clone() for m in state.models for p in m.parameters()]


def test_fp16_overflow_skips_step_and_halves_scale(shared_dir, shard_dir):
    """fp16 under TP=2: an overflowing scale skips the step (weights unchanged, LR schedule
    waits) and halves the scale (after `hysteresis` overflows); the metrics file counts the
    skipped steps; a sane scale (the guide's 256) steps normally."""
    batches = global_batches(shard_dir, 1, seq_len=16, seed=6)  # fp16 matmuls are slow on CPU
    for hysteresis, scales in ((1, [2.0 ** 39, 2.0 ** 38]), (2, [2.0 ** 40, 2.0 ** 39])):
        config = tiny_config(tp=2, steps=2, log_interval=1, **{"model.seq_len": 16,
            "precision": "fp16", "fp16.initial_loss_scale": 2.0 ** 40, "fp16.hysteresis": hysteresis})
        state = loop.setup(config, None, reader_factory=fixed_reader(batches, config, repeat=True))
        before = _weights(state)
        metrics = shared_dir / f"fp16-{hysteresis}.jsonl"
        loop.train(state, metrics_path=str(metrics) if dist.get_rank() == 0 else None)
        assert all(torch.equal(a, b) for a, b in zip(before, _weights(state)))
        assert state.scheduler.num_steps == 0
        if dist.get_rank() == 0:
            rows = [json.loads(line) for line in metrics.read_text().splitlines()]
            assert [r["loss_scale"] for r in rows] == scales
            assert [r["skipped_steps"] for r in rows] == [1, 2]
    config = tiny_config(tp=2, steps=2, **{"precision": "fp16", "fp16.initial_loss_scale": 256.0, "model.seq_len": 16,
                                           "optim.warmup_steps": 0})
    state = loop.setup(config, None, reader_factory=fixed_reader(batches, config, repeat=True))
    before = _weights(state)
    result = loop.train_step(state, local_batches(state, batches[0]))
    assert result["extra"] == {"loss_scale": 256.0, "skipped_steps": 0, "skipped": 0}
    assert not all(torch.equal(a, b) for a, b in zip(before, _weights(state)))


def test_lora_dropout_and_short_target_names(shard_dir):
    """lora.targets=[fc1, fc2] adapts the MLP layers; dropout 0.1 makes training forwards random
    and eval forwards deterministic."""
    config = tiny_config(tp=2, recipe="tiny_lora", **{"lora.targets": ["fc1", "fc2"]})
    assert config.lora.targets == ("linear_fc1", "linear_fc2") and config.lora.dropout == 0.1
    batch = global_batches(shard_dir, 1)
    state = loop.setup(config, None, reader_factory=fixed_reader(batch, config))
    names = [name for name, _ in lora_lib.lora_modules(state.models)]
    assert len(names) == 2 * config.model.num_layers and all(".mlp.linear_fc" in n for n in names)
    for _, module in lora_lib.lora_modules(state.models):  # non-zero B so the adapters matter
        torch.nn.init.normal_(module.lora_b, std=0.5)
    micro = local_batches(state, batch[0])[0]
    model = state.models[0]
    inputs = (micro["tokens"], micro["position_ids"], micro["attention_mask"])
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(*inputs), model(*inputs))
        model.eval()
        assert torch.equal(model(*inputs), model(*inputs))
    model.train()


def test_distill_config_errors(teacher):
    teacher_path, _ = teacher
    with pytest.raises(ValueError, match="parallel.pp"):
        distill_config(teacher_path, pp=2)
    other_vocab = distill_config(teacher_path, **{"model.vocab_size": 900})
    with pytest.raises(ValueError, match="teacher vocabulary"):
        loop.setup(other_vocab, None, reader_factory=fixed_reader(teacher[1], other_vocab))
    loop.teardown()
    assert ckpt.latest_checkpoint(teacher_path) is not None
    with pytest.raises(ValueError, match="distill.teacher"):
        apply_overrides(tiny_config(), {"mode": "distill"})
